"""One run per workdir: a lock file that process 0 holds while it trains.

Two runs in one workdir would mix their checkpoints and metrics (orbax then
fails deep inside, or skips saves). Process 0 writes `<workdir>/lock.json`
with its host, pid, start time and a heartbeat, which a thread renews every
HEARTBEAT_S. A run that finds the lock held refuses to start and names the
holder. A lock whose holder is gone is taken over with a warning: on the same
host, when its pid no longer runs; anywhere (pids of other hosts mean
nothing), when its heartbeat is older than STALE_AFTER_S.

What is guaranteed:
- local disks: the lock is created exclusively (O_EXCL) and a stale one is
  renamed away before it is replaced, so of two runs started at once exactly
  one gets it;
- gs:// (no exclusive create through the file API): a run refuses a lock
  with a fresh heartbeat, but two runs started within the same second or so
  can both write it. The heartbeat reads the lock back before renewing it:
  the run whose lock was overwritten stops at its next check, so the two
  overlap for at most HEARTBEAT_S plus one log interval.
"""

import dataclasses
import json
import os
import socket
import threading
import time
import uuid

from absl import logging
from etils import epath

HEARTBEAT_S = 60
STALE_AFTER_S = 300
LOCK_NAME = "lock.json"


def _exclusive_create_works(path: str) -> bool:
  """Local files (and NFS) support O_EXCL; objects in a bucket do not."""
  return "://" not in path


def _pid_runs(pid: int) -> bool:
  if pid <= 0:  # kill(0 or -1) would mean a whole process group
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # it runs, as another user
  return True


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who holds a lock, as its file says."""
  token: str
  host: str
  pid: int
  started: str
  heartbeat: float

  def describe(self, now: float) -> str:
    return (f"host {self.host}, pid {self.pid}, started {self.started}, "
            f"heartbeat {now - self.heartbeat:.0f} s ago")

  def is_gone(self, now: float) -> bool:
    """Whether the run that wrote this lock has stopped."""
    if now - self.heartbeat > STALE_AFTER_S:
      return True
    return self.host == socket.gethostname() and not _pid_runs(self.pid)


class WorkdirLock:
  """The lock of one workdir; `acquire` first, `release` at the end.

  `error()` is set, and the heartbeat stops, once another run has taken the
  lock over (possible on gs:// only, see the module's docstring).
  """

  def __init__(self, workdir: str):
    self.path = epath.Path(workdir) / LOCK_NAME
    self._exclusive = _exclusive_create_works(str(self.path))
    now = time.time()
    self._holder = Holder(
        token=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(),
        started=time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)),
        heartbeat=now)
    self._error: RuntimeError | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _contents(self) -> str:
    holder = dataclasses.replace(self._holder, heartbeat=time.time())
    return json.dumps(dataclasses.asdict(holder))

  def _renew_file(self):
    """Rewrites the lock with a new heartbeat, whole: locally through a
    rename, so that a run reading it meanwhile never sees half a file (an
    object in a bucket is replaced whole anyway)."""
    if not self._exclusive:
      self.path.write_text(self._contents())
      return
    partial = self.path.parent / f"{LOCK_NAME}.{self._holder.token}"
    partial.write_text(self._contents())
    os.replace(partial, self.path)

  def _read(self) -> Holder | None:
    """The holder the lock file names; None if there is none. A file that
    cannot be parsed is one being written (created, still empty) or cut
    short by a crash: its holder is unknown, with its age as heartbeat."""
    try:
      text = self.path.read_text()
      return Holder(**json.loads(text))
    except FileNotFoundError:
      return None
    except (ValueError, TypeError):
      return Holder(token="", host="unknown", pid=-1, started="unknown",
                    heartbeat=float(self.path.stat().mtime))

  def _create(self) -> bool:
    """Writes the lock if there is none; False if there is one."""
    if not self._exclusive:
      if self.path.exists():
        return False
      self.path.write_text(self._contents())
      return True
    try:
      fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                   0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(self._contents())
    return True

  def acquire(self) -> str:
    """Takes the lock or raises RuntimeError naming its holder. Returns ''
    (for `multihost.on_process_0`)."""
    for _ in range(3):  # another run may take over a stale lock meanwhile
      try:
        created = self._create()
      except OSError as e:
        raise PermissionError(
            f"cannot write {self.path} ({e}); use a --workdir this process "
            "can write to") from e
      if created:
        break
      holder = self._read()
      if holder is None:
        continue
      now = time.time()
      if not holder.is_gone(now):
        wait = max(0, STALE_AFTER_S - (now - holder.heartbeat))
        raise RuntimeError(
            f"{self.path.parent} is in use by another run "
            f"({holder.describe(now)}); use another --workdir, or stop that "
            f"run. If it is gone, its lock is taken over once its heartbeat "
            f"is {STALE_AFTER_S} s old (in {wait:.0f} s), or delete "
            f"{self.path}.")
      logging.warning("Taking over the lock of a run that is gone (%s).",
                      holder.describe(now))
      self._remove_stale(holder)
    else:
      raise RuntimeError(f"could not take the lock {self.path}: other runs "
                         "keep taking it; is another run starting here?")
    if not self._exclusive and self._read_token() != self._holder.token:
      raise RuntimeError(f"another run took {self.path} at the same moment; "
                         "use another --workdir for one of them")
    self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                    name="workdir-lock-heartbeat")
    self._thread.start()
    return ""

  def _remove_stale(self, holder: Holder):
    """Moves a stale lock away; a rename succeeds for one run only, so two
    runs taking over the same stale lock cannot both go on."""
    if not self._exclusive:
      self.path.unlink(missing_ok=True)
      return
    try:
      self.path.rename(self.path.parent / f"{LOCK_NAME}.stale.{holder.token}")
    except FileNotFoundError:
      return  # another run moved it first; `_create` decides between us
    (self.path.parent / f"{LOCK_NAME}.stale.{holder.token}").unlink(
        missing_ok=True)

  def _read_token(self) -> str | None:
    holder = self._read()
    return None if holder is None else holder.token

  def _heartbeat(self):
    while not self._stop.wait(HEARTBEAT_S) and self.renew():
      pass

  def renew(self) -> bool:
    """One heartbeat: renews the lock if it is still ours; else sets
    `error()` and returns False."""
    try:
      holder = self._read()
      if holder is None or holder.token != self._holder.token:
        self._error = RuntimeError(
            f"another run took over {self.path} "
            f"({holder.describe(time.time()) if holder else 'it was removed'}"
            "); stopping, so that the two runs do not mix their checkpoints. "
            "Give each run its own --workdir.")
        return False
      self._renew_file()
    except OSError as e:  # a passing storage error: try at the next beat
      logging.warning("Could not renew the lock %s: %s", self.path, e)
    return True

  def error(self) -> RuntimeError | None:
    """Set once another run has taken this lock over."""
    return self._error

  def release(self):
    """Stops the heartbeat and removes the lock if it is still ours."""
    self._stop.set()
    if self._thread is None:
      return
    self._thread.join()
    self._thread = None
    try:
      if self._read_token() == self._holder.token:
        self.path.unlink(missing_ok=True)
    except OSError as e:
      logging.warning("Could not remove the lock %s: %s", self.path, e)
