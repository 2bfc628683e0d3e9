"""End to end: `python -m mae_jax.main` as a user runs it."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from testing_utils import read_only

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT_DEMO = [f"--config={ROOT}/configs/demo.py", "--config.batch_size=16",
              "--config.log_every_steps=2", "--config.checkpoint_every_steps=2",
              "--config.figure_every_steps=2", "--config.warmup_steps=1"]


def run_main(*args, cwd=ROOT, prefix=(), timeout=600):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([*prefix, sys.executable, "-m", "mae_jax.main", *args],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)


def test_demo_writes_outputs_and_resumes(tmp_path):
  # A relative --workdir, as in the README's quick start.
  workdir = str(tmp_path / "demo")
  first = run_main(*SHORT_DEMO, "--workdir=demo", "--config.total_steps=4",
                   cwd=tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  train_rows = [r for r in records if "train/loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 4]
  assert {"train/loss", "train/lr", "train/grad_norm",
          "train/img_per_s"} <= set(train_rows[-1])
  # The demo's k-NN runs at the last step too.
  assert [r["step"] for r in records if "eval/knn_top1" in r] == [4]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert os.path.exists(os.path.join(workdir, "reconstruction_0000004.png"))

  again = run_main(*SHORT_DEMO, "--workdir=demo", "--config.total_steps=6",
                   cwd=tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resuming from step 4" in again.stderr
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert json.loads(f.readlines()[-1])["step"] == 6


@pytest.mark.parametrize("flag, message", [
    ("--config.batch_size=12", "batch_size=12 is not divisible by the 8"),
    ("--config.model.mask_raito=0.5",
     "unknown config field 'mask_raito'. Did you mean \"mask_ratio\""),
    ("--config.data.source=imagenet", "data.source='imagenet'"),
    ("--config=configs/no_such_config.py",
     "--config=configs/no_such_config.py: no such file"),
    ("--workdir=/proc/mae_jax_workdir", "cannot create "
     "--workdir=/proc/mae_jax_workdir"),
])
def test_bad_input_fails_before_training_with_a_clear_message(
    tmp_path, flag, message):
  demo = SHORT_DEMO[1:] if flag.startswith("--config=") else SHORT_DEMO
  result = run_main(*demo, f"--workdir={tmp_path}", flag)
  assert result.returncode == 1
  # One or two lines that say what to do, no traceback.
  assert f"mae_jax.main: error: {message}" in result.stderr, result.stderr[
      -3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert not glob.glob(os.path.join(str(tmp_path), "checkpoints", "*"))


def test_verbosity_shows_the_traceback(tmp_path):
  result = run_main(*SHORT_DEMO, f"--workdir={tmp_path}", "--verbosity=1",
                    "--config.batch_size=12")
  assert result.returncode == 1
  assert "Traceback" in result.stderr and "validate_config" in result.stderr


def test_a_failed_save_ends_the_run_promptly_with_the_cause(tmp_path):
  # orbax's threads used to wait minutes for the save that failed, and kept
  # the process from exiting.
  checkpoints = tmp_path / "checkpoints"
  checkpoints.mkdir()
  result = run_main(*SHORT_DEMO, f"--workdir={tmp_path}",
                    "--config.total_steps=4",
                    prefix=read_only(str(checkpoints), []), timeout=240)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "mae_jax.main: error:" in result.stderr
  assert re.search(r"Read-only file system|Permission denied",
                   result.stderr.split("mae_jax.main: error:")[-1])
