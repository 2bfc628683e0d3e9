import json
import os
import re
import signal
import socket
import subprocess
import sys

import chex
import pytest

from mae_jax import checkpointing
from mae_jax import preemption
from mae_jax import train
from mae_jax import writers
from testing_utils import tiny_config, xla_flags

# Two processes joined by jax.distributed step in lockstep (an all-gather per
# step); process 1 sends itself the signal named by argv[3] at step 5. Each
# prints the step at which its notice says to stop.
LOCKSTEP = """
import os, signal, sys
import jax
from jax.experimental import multihost_utils
from mae_jax import preemption

process_id = int(sys.argv[2])
jax.distributed.initialize(sys.argv[1], 2, process_id)
with preemption.PreemptionNotice() as notice:
  for step in range(1, 100_000):
    multihost_utils.process_allgather(jax.numpy.int32(step))
    if process_id == 1 and step == 5:
      os.kill(os.getpid(), getattr(signal, sys.argv[3]))
    if notice.reached(step):
      print("stopped at", step)
      break
"""


def test_sigterm_is_noticed_and_the_handler_given_back():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.PreemptionNotice() as notice:
    assert not notice.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert notice.reached(2)
    assert notice.reached(3)  # it stays noticed
  assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_is_noticed_and_a_second_one_stops_at_once():
  before = signal.getsignal(signal.SIGINT)
  with preemption.PreemptionNotice() as notice:
    assert not notice.reached(1)
    os.kill(os.getpid(), signal.SIGINT)
    assert notice.reached(2)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      notice.reached(3)  # the handler has run by now
  assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_to_one_process_stops_every_process_at_the_same_step(
    signal_name):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    address = f"localhost:{s.getsockname()[1]}"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu",
             XLA_FLAGS=xla_flags(1))
  processes = [subprocess.Popen(
      [sys.executable, "-c", LOCKSTEP, address, str(i), signal_name], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
  try:
    outputs = [p.communicate(timeout=120) for p in processes]
  finally:
    for p in processes:
      p.kill()
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  # gloo prints to stdout too.
  stops = [re.findall(r"^stopped at (\d+)$", out, re.M) for out, _ in outputs]
  # Both stop, after the signal, at one step: a checkpoint there is whole.
  assert stops[0] == stops[1] and len(stops[0]) == 1, outputs
  assert int(stops[0][0]) > 5


class _Preempt:
  """Sends this process `signum` while the run logs `at_step`, as a
  preempted VM receives SIGTERM mid-run, or a person presses Ctrl-C."""

  def __init__(self, at_step: int, signum: int):
    self.at_step = at_step
    self.signum = signum

  def __call__(self, workdir, **kwargs):
    writer = self.create_writer(workdir, **kwargs)
    write_scalars = writer.write_scalars

    def write(step, scalars):
      write_scalars(step, scalars)
      if step == self.at_step:
        # Without a handler the signal would kill (or interrupt) the test.
        if signal.getsignal(self.signum) in (signal.SIG_DFL, None,
                                             signal.default_int_handler):
          raise AssertionError(f"train_and_evaluate does not catch "
                               f"{signal.Signals(self.signum).name}")
        os.kill(os.getpid(), self.signum)

    writer.write_scalars = write
    return writer


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_stops_and_resumes_bit_identically(tmp_path,
                                                          monkeypatch, signum):
  # Needs the train loop to poll preemption.PreemptionNotice at every step.
  config = tiny_config(total_steps=6, log_every_steps=1,
                       checkpoint_every_steps=100)
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))

  workdir = str(tmp_path / "preempted")
  handler = signal.getsignal(signum)
  preempt = _Preempt(at_step=3, signum=signum)
  preempt.create_writer = writers.create_writer
  with monkeypatch.context() as patch:
    patch.setattr(writers, "create_writer", preempt)
    train.train_and_evaluate(config, workdir)  # returns: a clean stop
  assert signal.getsignal(signum) is handler
  # The signal came during step 3's logging; step 4 noticed it and saved.
  assert checkpointing.Checkpointer(workdir, 3).all_steps() == [4]

  resumed = train.train_and_evaluate(config, workdir)
  chex.assert_trees_all_equal(resumed.params, straight.params)
  chex.assert_trees_all_equal(resumed.opt_state, straight.opt_state)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  with open(os.path.join(tmp_path, "straight", "metrics.jsonl")) as f:
    expected = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
  assert ([r["train/loss"] for r in records]
          == [r["train/loss"] for r in expected])
