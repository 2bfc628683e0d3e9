import json
import os
import re
import signal
import socket
import subprocess
import sys

import chex

from mae_jax import checkpointing
from mae_jax import preemption
from mae_jax import train
from mae_jax import writers
from testing_utils import tiny_config

# Two processes joined by jax.distributed step in lockstep (an all-gather per
# step); process 1 sends itself SIGTERM at step 5. Each prints the step at
# which its notice says to stop.
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
      os.kill(os.getpid(), signal.SIGTERM)
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


def test_a_sigterm_to_one_process_stops_every_process_at_the_same_step():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    address = f"localhost:{s.getsockname()[1]}"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  processes = [subprocess.Popen(
      [sys.executable, "-c", LOCKSTEP, address, str(i)], env=env,
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
  """Sends this process SIGTERM while the run logs `at_step`, as a
  preempted VM receives it mid-run."""

  def __init__(self, at_step: int):
    self.at_step = at_step

  def __call__(self, workdir):
    writer = self.create_writer(workdir)
    write_scalars = writer.write_scalars

    def write(step, scalars):
      write_scalars(step, scalars)
      if step == self.at_step:
        # Without a handler the signal would kill the test run.
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
          raise AssertionError("train_and_evaluate does not catch SIGTERM")
        os.kill(os.getpid(), signal.SIGTERM)

    writer.write_scalars = write
    return writer


def test_sigterm_saves_stops_and_resumes_bit_identically(tmp_path,
                                                         monkeypatch):
  # Needs the train loop to poll preemption.PreemptionNotice at every step.
  config = tiny_config(total_steps=6, log_every_steps=1,
                       checkpoint_every_steps=100)
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))

  workdir = str(tmp_path / "preempted")
  handler = signal.getsignal(signal.SIGTERM)
  preempt = _Preempt(at_step=3)
  preempt.create_writer = writers.create_writer
  with monkeypatch.context() as patch:
    patch.setattr(writers, "create_writer", preempt)
    train.train_and_evaluate(config, workdir)  # returns: a clean stop
  assert signal.getsignal(signal.SIGTERM) is handler
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
