import os
import subprocess
import sys

import pytest

from testing_utils import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import cpu_unmapped_state  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_the_trainers_unmapped_state_is_the_same_step_without_the_copies():
  # 8 emulated devices: the mapped state is 8 stacked copies of each leaf.
  result = cpu_unmapped_state.measure(tiny_config(), steps=1, rounds=1)
  mapped, unmapped = cpu_unmapped_state.FORMS
  assert "the trainer" in unmapped
  assert result["devices"] == 8
  assert result["max_param_difference_after_one_step"] == 0.0
  # Mapped, XLA:CPU copies every donated leaf of the state: the parameters,
  # both AdamW moments, the step and the optimizer's counters.
  copies = result["state_copies"]
  assert copies[mapped] > 3 * 40, copies
  assert copies[unmapped] < copies[mapped] / 2, copies
  assert set(result["step_s_median"]) == set(cpu_unmapped_state.FORMS)
  assert len(result["step_s_by_round"][unmapped]) == 1
  assert result["unmapped_speedup_median_of_rounds"] > 0


def test_no_rounds_is_refused_in_one_line():
  done = subprocess.run(
      [sys.executable, "benchmarks/cpu_unmapped_state.py",
       "--config=configs/demo.py", "--rounds=0"], cwd=ROOT,
      capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode != 0
  assert "--steps and --rounds must be at least 1" in done.stderr
  assert "Traceback" not in done.stderr, done.stderr[-2000:]
