"""How command lines end on a mistake (mae_jax/cli.py)."""

import os
import subprocess
import sys

import pytest

from mae_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(tmp_path, body: str) -> subprocess.CompletedProcess:
  """Runs `body` as the main() of an absl script outside the package."""
  script = tmp_path / "tool.py"
  script.write_text("from mae_jax import cli\n"
                    "def main(argv):\n"
                    f"  {body}\n"
                    "cli.run_absl(main)\n")
  return subprocess.run([sys.executable, str(script)], cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=ROOT),
                        capture_output=True, text=True, timeout=120,
                        check=False)


def test_a_system_exit_message_is_printed_not_swallowed(tmp_path):
  result = run_script(tmp_path, 'raise SystemExit("needs libtpu")')
  assert result.returncode == 1
  assert "tool.py: error: needs libtpu" in result.stderr


@pytest.mark.parametrize("body, code", [("raise SystemExit(3)", 3),
                                        ("raise SystemExit()", 0)])
def test_a_system_exit_code_is_kept(tmp_path, body, code):
  result = run_script(tmp_path, body)
  assert result.returncode == code and "error" not in result.stderr


def test_a_config_file_without_get_config_is_named_as_such(tmp_path):
  config = tmp_path / "settings.py"
  config.write_text("BATCH_SIZE = 8\n")
  script = tmp_path / "tool.py"
  script.write_text("from ml_collections import config_flags\n"
                    "from mae_jax import cli\n"
                    "config_flags.DEFINE_config_file('config')\n"
                    "cli.run_absl(lambda argv: None)\n")
  result = subprocess.run([sys.executable, str(script), f"--config={config}"],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=120,
                          check=False)
  assert result.returncode == 1
  assert "tool.py: error: the --config file defines no get_config()" in (
      result.stderr), result.stderr[-2000:]


def test_a_missing_config_file_is_found_in_either_flag_form():
  demo, missing = f"{ROOT}/configs/demo.py", "configs/nope.py"
  for argv in (["prog", f"--config={missing}"], ["prog", "--config", missing],
               # absl takes the last --config, in either form.
               ["prog", "--config", demo, f"--config={missing}"],
               ["prog", f"--config={demo}", "--config", missing]):
    assert "configs/nope.py: no such file" in cli._missing_config_file(argv)
  for argv in (["prog", "--config", demo],
               ["prog", "--config", missing, f"--config={demo}"]):
    assert not cli._missing_config_file(argv)
