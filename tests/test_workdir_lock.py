import json
import os
import socket
import subprocess
import sys
import time

import pytest

from mae_jax import train
from mae_jax import workdir_lock
from testing_utils import tiny_config


def _dead_pid() -> int:
  """The pid of a process that has exited."""
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def _write_lock(workdir, host: str, pid: int, age_s: float):
  (workdir / workdir_lock.LOCK_NAME).write_text(json.dumps(dict(
      token="theirs", host=host, pid=pid, started="earlier",
      heartbeat=time.time() - age_s)))


def test_a_second_run_in_the_same_workdir_is_refused(tmp_path):
  first = workdir_lock.WorkdirLock(str(tmp_path))
  first.acquire()
  try:
    with pytest.raises(RuntimeError, match=f"in use by another run .*host "
                       f"{socket.gethostname()}, pid {os.getpid()}"):
      workdir_lock.WorkdirLock(str(tmp_path)).acquire()
  finally:
    first.release()
  assert not (tmp_path / workdir_lock.LOCK_NAME).exists()
  second = workdir_lock.WorkdirLock(str(tmp_path))
  second.acquire()  # free again once released
  second.release()


def test_training_refuses_a_workdir_that_another_run_holds(tmp_path):
  holder = workdir_lock.WorkdirLock(str(tmp_path))
  holder.acquire()
  try:
    with pytest.raises(RuntimeError, match="in use by another run"):
      train.train_and_evaluate(tiny_config(), str(tmp_path))
  finally:
    holder.release()
  assert not (tmp_path / "checkpoints").exists()
  # Its own lock is released when the run ends, even when it fails.
  config = tiny_config()
  config.data.update(source="folder", data_dir=str(tmp_path / "no_images"))
  with pytest.raises(FileNotFoundError):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / workdir_lock.LOCK_NAME).exists()


@pytest.mark.parametrize("host, pid, age_s", [
    (socket.gethostname(), None, 1.0),  # this host, its pid has exited
    ("another-host", 12345, workdir_lock.STALE_AFTER_S + 60),  # silent
])
def test_the_lock_of_a_run_that_is_gone_is_taken_over(tmp_path, caplog, host,
                                                      pid, age_s):
  _write_lock(tmp_path, host, pid or _dead_pid(), age_s)
  lock = workdir_lock.WorkdirLock(str(tmp_path))
  lock.acquire()
  try:
    assert "Taking over the lock of a run that is gone" in caplog.text
    assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())[
        "pid"] == os.getpid()
  finally:
    lock.release()


def test_a_live_run_on_another_host_keeps_its_lock(tmp_path):
  # Its pid means nothing here; its heartbeat is fresh.
  _write_lock(tmp_path, "another-host", 12345, age_s=10)
  with pytest.raises(RuntimeError, match="another-host.*taken over once its "
                     "heartbeat is 300 s old"):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()


def test_a_lock_file_still_being_written_is_not_taken_over(tmp_path):
  # Created empty by another run an instant ago: its holder is unknown, but
  # young.
  (tmp_path / workdir_lock.LOCK_NAME).write_text("")
  with pytest.raises(RuntimeError, match="in use by another run .*host "
                     "unknown"):
    workdir_lock.WorkdirLock(str(tmp_path)).acquire()


@pytest.mark.parametrize("exclusive", [True, False])
def test_a_run_whose_lock_was_taken_over_is_told_to_stop(
    tmp_path, monkeypatch, exclusive):
  # Without exclusive creation (gs://), two runs starting together can both
  # write the lock; the one overwritten learns it at its next heartbeat.
  monkeypatch.setattr(workdir_lock, "_exclusive_create_works",
                      lambda path: exclusive)
  lock = workdir_lock.WorkdirLock(str(tmp_path))
  lock.acquire()
  try:
    assert lock.renew() and lock.error() is None
    _write_lock(tmp_path, "another-host", 12345, age_s=0)
    assert not lock.renew()
    assert "another run took over" in str(lock.error())
  finally:
    lock.release()
  # The other run's lock stays.
  assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())[
      "token"] == "theirs"


def test_an_unwritable_workdir_is_named(tmp_path):
  # A file where the workdir should be: no lock can be written under it.
  (tmp_path / "file").write_text("")
  with pytest.raises(PermissionError, match="cannot write .*file/lock.json"):
    workdir_lock.WorkdirLock(str(tmp_path / "file")).acquire()
