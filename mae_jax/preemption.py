"""Preemption: a SIGTERM makes the run save at the current step and stop.

A preempted (spot) Cloud TPU VM receives SIGTERM about 30 s before it is
stopped. The train loop asks `PreemptionNotice.reached(step)` after every
step; once it answers True, the loop saves that step and returns, and running
the same command again resumes from it, exactly (train.py).

Ctrl-C (SIGINT) does the same: the first one saves and stops; a second one
stops at once without saving (KeyboardInterrupt).

With several processes, all must stop at the same step, since a checkpoint
is written by all of them together, while the notice may reach one host
only. With `jax.distributed` initialised, jax's preemption sync manager does
this: it catches SIGTERM itself (installed by `jax.distributed.initialize`),
tells the other processes through the coordination service, and names a step
(the largest step any process has reached, plus one) at which every process's
`reached` answers True. A single process catches SIGTERM with a Python
handler. A Ctrl-C reaches one process; with several, it is turned into a
SIGTERM to that process, which jax's manager then shares.
"""

import os
import signal
import threading
import types

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionNotice:
  """Whether to save and stop now. Use as a context manager, or `close()`.

  Every process must call `reached` at every step, with the same steps.
  """

  def __init__(self):
    self._received = threading.Event()
    self._interrupted = False
    self._previous_handlers = {}
    self._distributed = jax.distributed.is_initialized()
    if self._distributed and not jax.config.jax_enable_preemption_service:
      logging.warning(
          "jax_enable_preemption_service is off: a SIGTERM or Ctrl-C stops "
          "this run without a checkpoint")
      return
    if threading.current_thread() is not threading.main_thread():
      logging.warning("Training outside the main thread: a SIGTERM or Ctrl-C "
                      "stops the run without a checkpoint")
      return
    handlers = {signal.SIGINT: self._on_sigint}
    if not self._distributed:  # jax's manager catches it otherwise
      handlers[signal.SIGTERM] = self._on_sigterm
    for signum, handler in handlers.items():
      self._previous_handlers[signum] = signal.signal(signum, handler)

  def _on_sigterm(self, signum: int, frame: types.FrameType | None):
    del signum, frame
    # The main thread runs this between two bytecodes; the loop does the rest.
    self._received.set()

  def _on_sigint(self, signum: int, frame: types.FrameType | None):
    del signum, frame
    if self._interrupted:
      raise KeyboardInterrupt
    self._interrupted = True
    logging.warning("Ctrl-C: saving at the next step, then stopping. Press "
                    "Ctrl-C again to stop at once without saving.")
    if self._distributed:
      os.kill(os.getpid(), signal.SIGTERM)  # to jax's preemption manager
    else:
      self._received.set()

  def reached(self, step: int) -> bool:
    """True at the step where this run should save and stop."""
    if self._distributed:
      # False while the service is off or no process got a notice.
      return (jax.config.jax_enable_preemption_service
              and multihost_utils.reached_preemption_sync_point(step))
    return self._received.is_set()

  def close(self):
    """Gives the signals back to the handlers they had before."""
    for signum, previous in self._previous_handlers.items():
      # None: the previous handler was not set from Python; default then.
      signal.signal(signum, previous or signal.SIG_DFL)
    self._previous_handlers = {}

  def __enter__(self) -> "PreemptionNotice":
    return self

  def __exit__(self, *exc_info):
    self.close()
