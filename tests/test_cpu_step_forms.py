import os
import subprocess
import sys

import jax

from testing_utils import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import cpu_step_forms  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_the_trainers_step_is_the_earlier_forms_without_their_copies():
  # One device, as the benchmark runs by default: the only case in which
  # the trainer's step leaves out the all-reduce.
  result = cpu_step_forms.measure(tiny_config(batch_size=2), steps=1,
                                  rounds=1, devices=jax.local_devices()[:1])
  forms = cpu_step_forms
  assert result["devices"] == 1
  assert result["max_param_difference_after_one_step"] == 0.0
  # Mapped, XLA:CPU copies every donated leaf of the state: the parameters,
  # both AdamW moments, the step and the optimizer's counters.
  copies = result["state_copies"]
  assert copies[forms.MAPPED] > 3 * 40, copies
  assert copies[forms.TRAINER] < copies[forms.MAPPED] / 2, copies
  assert result["all_reduces"][forms.MAPPED] >= 1
  assert result["all_reduces"][forms.ALL_REDUCE] >= 1
  assert result["all_reduces"][forms.TRAINER] == 0
  assert set(result["step_s_median"]) == set(forms.FORMS)
  assert len(result["step_s_by_round"][forms.TRAINER]) == 1
  assert result["trainer_speedup"][forms.TRAINER] == 1.0
  assert result["trainer_speedup_median_of_rounds"][forms.MAPPED] > 0


def test_no_rounds_is_refused_in_one_line():
  done = subprocess.run(
      [sys.executable, "benchmarks/cpu_step_forms.py",
       "--config=configs/demo.py", "--rounds=0"], cwd=ROOT,
      capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode != 0
  assert "cpu_step_forms.py: error: flag --rounds=0" in done.stderr
  assert "Traceback" not in done.stderr, done.stderr[-2000:]
