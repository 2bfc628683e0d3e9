"""Several processes on localhost, as the hosts of a pod: `jax.distributed`
over CPU (gloo collectives), 2 processes with 4 emulated devices each."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mae_jax import checkpointing
from mae_jax import train
from testing_utils import (assert_same_trajectory, read_only, tiny_config,
                           tiny_knn_config, xla_flags)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")

# A run of the tiny config whose logging, figures and checkpoints cost little.
RUN = dict(log_every_steps=1, figure_every_steps=1000,
           checkpoint_every_steps=1000)

# Runs mae_jax.main; process 1 sends itself SIGTERM while it logs step
# {step}, as a preempted host would receive it; step -1: before the loop's
# first step (when the writer is made, after the restore).
PREEMPTED_MAIN = """
import os, signal, sys
from absl import app
from mae_jax import main, writers

create_writer = writers.create_writer

def preempting_writer(workdir, **kwargs):
  writer = create_writer(workdir, **kwargs)
  if {step} == -1 and "--process_id=1" in sys.argv:
    os.kill(os.getpid(), signal.SIGTERM)
  write_scalars = writer.write_scalars

  def write(step, scalars):
    write_scalars(step, scalars)
    if step == {step} and "--process_id=1" in sys.argv:
      os.kill(os.getpid(), signal.SIGTERM)

  writer.write_scalars = write
  return writer

writers.create_writer = preempting_writer
app.run(main.main)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _write_config(tmp_path, **overrides) -> str:
  """A config file for the child processes: tiny_config(**overrides)."""
  path = tmp_path / "config.py"
  path.write_text("from testing_utils import tiny_config\n\n"
                  f"def get_config():\n  return tiny_config(**{overrides!r})\n")
  return str(path)


def _run_processes(entry: list[str], flags: list[str], count: int = 2,
                   devices_each: int = 4, prefix: list[str] = (),
                   expected_returncode: int = 0) -> list[str]:
  """Runs `count` processes of `entry` that form one JAX run; their logs.

  Fails with the logs if a process ends with another code than
  `expected_returncode`, or the run takes over 5 minutes.
  """
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]),
             JAX_PLATFORMS="cpu",
             XLA_FLAGS=xla_flags(devices_each))
  address = f"--coordinator_address=localhost:{_free_port()}"
  processes = [
      subprocess.Popen(
          [*prefix, sys.executable, *entry, *flags, address,
           f"--num_processes={count}", f"--process_id={i}"], cwd=ROOT, env=env,
          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(count)]
  logs = []
  try:
    for process in processes:
      logs.append(process.communicate(timeout=300)[0])
  finally:
    for process in processes:
      process.kill()
  for i, (process, log) in enumerate(zip(processes, logs)):
    assert process.returncode == expected_returncode, (
        f"process {i} ended with {process.returncode}:\n{log[-5000:]}")
  return logs


def _logged_losses(log: str) -> dict[int, float]:
  """{step: loss} from the log lines of the metric writer."""
  return {int(step): float(loss) for step, loss in re.findall(
      r"\] \[(\d+)\] .*train/loss=([-+.\deE]+)", log)}


def _read_metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _final_params(workdir):
  return checkpointing.load_params(str(workdir))[1]


def test_two_processes_train_like_one_process_with_eight_devices(tmp_path):
  config = tiny_config(total_steps=4, **RUN)
  workdir = tmp_path / "two"
  logs = _run_processes(
      ["-m", "mae_jax.main"],
      [f"--config={_write_config(tmp_path, total_steps=4, **RUN)}",
       f"--workdir={workdir}"])
  assert all("JAX process %d/2" % i in log for i, log in enumerate(logs))

  # Both processes computed the same losses, and process 0 wrote them.
  losses = [_logged_losses(log) for log in logs]
  assert sorted(losses[0]) == [1, 2, 3, 4]
  assert losses[0] == losses[1]
  assert [m["train/loss"] for m in _read_metrics(workdir)] == [
      losses[0][s] for s in (1, 2, 3, 4)]

  # The global batch of 16 over 2 x 4 devices is the batch of 16 over the 8
  # devices of one process: the same trajectory, up to summation order.
  one = train.train_and_evaluate(config, str(tmp_path / "one"))
  np.testing.assert_allclose(
      [m["train/loss"] for m in _read_metrics(tmp_path / "one")],
      [losses[0][s] for s in (1, 2, 3, 4)], rtol=1e-5)
  assert_same_trajectory(_final_params(workdir), one.params, config)


def test_sigterm_to_one_process_stops_all_at_one_step_and_resumes(tmp_path):
  # Needs the train loop to poll preemption.PreemptionNotice at every step.
  total = 10
  config = tiny_config(total_steps=total, **RUN)
  workdir = tmp_path / "preempted"
  flags = [f"--config={_write_config(tmp_path, total_steps=total, **RUN)}",
           f"--workdir={workdir}"]
  script = tmp_path / "preempted_main.py"
  script.write_text(PREEMPTED_MAIN.format(step=2))
  logs = _run_processes([str(script)], flags)

  # Both stopped cleanly after the notice, at the same step, which is saved.
  saved = checkpointing.Checkpointer(str(workdir), 3).all_steps()
  assert len(saved) == 1 and 2 < saved[0] < total, (saved, logs[1][-3000:])
  for log in logs:
    assert f"Preempted (SIGTERM or Ctrl-C): saved step {saved[0]} in" in log
    assert max(_logged_losses(log)) == saved[0]

  # Preempted again before the resumed run's first step: it saves that step.
  script.write_text(PREEMPTED_MAIN.format(step=-1))
  logs = _run_processes([str(script)], flags)
  resumed_at, saved = saved[0], checkpointing.Checkpointer(
      str(workdir), 3).all_steps()
  assert saved[-1] == resumed_at + 1, (saved, logs[1][-3000:])
  assert all(f"Preempted (SIGTERM or Ctrl-C): saved step {resumed_at + 1} "
             "in" in log for log in logs)

  logs = _run_processes(["-m", "mae_jax.main"], flags)
  assert all(f"Resuming from step {saved[-1]}" in log for log in logs)
  losses = _logged_losses(logs[0])
  assert sorted(losses) == list(range(saved[-1] + 1, total + 1))
  assert losses == _logged_losses(logs[1])

  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  np.testing.assert_allclose(
      [m["train/loss"] for m in _read_metrics(workdir)],
      [m["train/loss"] for m in _read_metrics(tmp_path / "straight")],
      rtol=1e-5)
  assert_same_trajectory(_final_params(workdir), straight.params, config)


@pytest.mark.parametrize("flags, message", [
    (["--coordinator_address=localhost:1234"],
     "--num_processes, --process_id missing"),
    (["--coordinator_address=localhost:1234", "--num_processes=2",
      "--process_id=2"], "--process_id=2 must be in 0..1"),
])
def test_incomplete_distributed_flags_fail_with_the_fix(tmp_path, flags,
                                                        message):
  # A subprocess: mae_jax.main's flags would clash with other tests' in
  # this one.
  result = subprocess.run(
      [sys.executable, "-m", "mae_jax.main", f"--workdir={tmp_path}",
       f"--config={_write_config(tmp_path)}", *flags], cwd=ROOT,
      env=dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS])),
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  assert message in result.stderr, result.stderr[-3000:]
  assert not (tmp_path / "checkpoints").exists()


def test_a_failed_save_stops_every_process_promptly_with_the_cause(tmp_path):
  # Process 0 cannot create the step's directory; process 1's save waits
  # for it. Both must stop, naming the cause, instead of waiting minutes.
  workdir = tmp_path / "read_only"
  (workdir / "checkpoints").mkdir(parents=True)
  config = _write_config(tmp_path, total_steps=4, log_every_steps=1,
                         checkpoint_every_steps=2, figure_every_steps=1000)
  logs = _run_processes(
      ["-m", "mae_jax.main"], [f"--config={config}", f"--workdir={workdir}"],
      prefix=read_only(str(workdir / "checkpoints"), []),
      expected_returncode=1)
  for log in logs:
    error = log.split("mae_jax.main: error:")[-1]
    assert re.search(r"Read-only file system|Permission denied", error), log[
        -3000:]


# Two processes share decisions through mae_jax.multihost; process 0 skips
# the last one, as a process that failed would.
DECISIONS = """
import sys
import jax
from mae_jax import multihost

process_id = int(sys.argv[2])
jax.distributed.initialize(sys.argv[1], 2, process_id)
error = ValueError("bad input on 1") if process_id == 1 else None
print("errors:", multihost.gather_errors("checking", error), flush=True)

def decide():
  raise FileNotFoundError("no such checkpoint")

try:
  multihost.on_process_0("deciding", decide)
except FileNotFoundError as e:
  print("decision failed:", e, flush=True)
if process_id == 1:
  try:
    multihost.on_process_0("waiting", lambda: "", timeout_s=3)
  except TimeoutError as e:
    print("timed out:", e, flush=True)
"""


def _run_two(script: str, *args: str, timeout_s: float
             ) -> list[tuple[int | None, str]]:
  """`script` run as processes 0 and 1 of one JAX run (argv: the
  coordinator's address, the process id, `args`): each one's exit code
  (None: killed, still running after `timeout_s`) and output."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS=xla_flags(1))
  address = f"localhost:{_free_port()}"
  processes = [subprocess.Popen(
      [sys.executable, "-c", script, address, str(i), *args], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
  deadline = time.monotonic() + timeout_s
  results = []
  try:
    for process in processes:
      try:
        output = process.communicate(
            timeout=max(deadline - time.monotonic(), 0.1))[0]
      except subprocess.TimeoutExpired:
        process.kill()
        results.append((None, process.communicate()[0]))
      else:
        results.append((process.returncode, output))
  finally:
    for process in processes:
      process.kill()
  return results


def test_decisions_are_shared_and_waits_end():
  results = _run_two(DECISIONS, timeout_s=240)
  for returncode, output in results:
    assert returncode is not None, f"still running after 240 s:\n{output}"
  outputs = [output for _, output in results]
  for output in outputs:
    assert "errors: ['process 1: ValueError: bad input on 1']" in output, output
    assert "decision failed: no such checkpoint" in output, output
  assert re.search(r"timed out: waiting: process 0 did not report within 3 s",
                   outputs[1]), outputs[1]


# Process 0 fails a decision and ends as the command lines do. Process 1
# reads the decision late ("late"), or never ("hung").
FAILED_DECISION = """
import sys
import time
import jax
from mae_jax import cli
from mae_jax import multihost

process_id, behaviour = int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(sys.argv[1], 2, process_id)
jax.devices()
if behaviour == "hung":
  cli.LEAVE_TIMEOUT_S = 5
if process_id == 1:
  time.sleep(5 if behaviour == "late" else 600)

def decide():
  raise PermissionError("checkpoints/4: read-only file system")

cli.run(lambda: multihost.on_process_0("saving", decide))
"""


def test_process_0_failing_ends_after_the_others_heard_of_it():
  # Process 0 hosts the coordination service: had it ended at once, the
  # runtime would abort process 1 (SIGABRT) before it read the cause.
  for returncode, output in _run_two(FAILED_DECISION, "late", timeout_s=120):
    assert returncode == 1, output[-3000:]
    assert "error: checkpoints/4: read-only file system" in output, (
        output[-3000:])


def test_process_0_failing_does_not_wait_long_for_a_hung_process():
  (returncode, output), _ = _run_two(FAILED_DECISION, "hung", timeout_s=90)
  assert returncode == 1, output[-3000:]
  assert "error: checkpoints/4: read-only file system" in output, (
      output[-3000:])


# One device in each of two processes: the step's mean over devices must
# still average over both processes (train.mean_over_devices skips it only
# when the whole axis has one device).
MEAN_OVER_ONE_DEVICE_EACH = """
import sys
import jax
import numpy as np
from mae_jax import train

process_id = int(sys.argv[2])
jax.distributed.initialize(sys.argv[1], 2, process_id)
mean = jax.pmap(train.mean_over_devices, axis_name=train.AXIS)
print("mean:", float(mean(np.full((1,), process_id, np.float32))[0]),
      flush=True)
"""


def test_one_device_per_process_still_averages_over_the_processes():
  for returncode, output in _run_two(MEAN_OVER_ONE_DEVICE_EACH,
                                     timeout_s=120):
    assert returncode == 0, output[-3000:]
    assert "mean: 0.5" in output, output[-3000:]


ALONE = """
import sys
from mae_jax import cli
from mae_jax import cluster

cluster.JOIN_TIMEOUT_S = 3
cli.run(lambda: cluster.initialize(sys.argv[1], 2, int(sys.argv[2])))
"""


@pytest.mark.parametrize("process_id", [0, 1])
def test_a_process_whose_peers_never_come_ends_with_the_fix(process_id):
  # Process 0 waits for process 1, process 1 for a coordinator that is not
  # there; jax itself would abort each with a C++ stack trace.
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  address = f"localhost:{_free_port()}"
  result = subprocess.run(
      [sys.executable, "-c", ALONE, address, str(process_id)], env=env,
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 1, result.stderr[-3000:]
  assert (f"the 2 processes of the run (--num_processes=2, "
          f"--coordinator_address={address}) did not all connect within 3 s"
          in result.stderr), result.stderr[-3000:]
  assert "Check failure" not in result.stderr, result.stderr[-3000:]


def test_knn_over_two_processes_is_the_knn_of_one(tmp_path):
  # The bank sharded over 2 processes x 4 devices, the candidates merged
  # across processes inside the step.
  config_file = tmp_path / "knn_config.py"
  config_file.write_text("from testing_utils import tiny_knn_config\n\n"
                         "def get_config():\n  return tiny_knn_config()\n")
  _run_processes(["-m", "mae_jax.main"], [f"--config={config_file}",
                                          f"--workdir={tmp_path / 'two'}"])
  train.train_and_evaluate(tiny_knn_config(), str(tmp_path / "one"))
  two, one = _read_metrics(tmp_path / "two"), _read_metrics(tmp_path / "one")
  assert two == one and "eval/knn_top1" in one[0]
