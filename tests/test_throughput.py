"""The input pipeline's img/s, as `mae_jax.benchmark --input_only` prints it."""

import pytest

from configs import common
from mae_jax.data import throughput


def test_images_per_second_times_the_configs_training_pipeline():
  config = common.data_config(source="digits", split="train", num_workers=-1,
                              num_threads=2)
  result = throughput.images_per_second(config, batch_size=8, image_size=16,
                                        steps=3, warmup=1)
  assert result["data"] == "digits"
  assert result["workers"] == 0  # in-memory digits need no worker processes
  assert result["threads"] == 2
  assert (result["batch"], result["image_size"]) == (8, 16)
  assert result["img_per_s"] > 0 and result["warmup_s"] > 0


@pytest.mark.parametrize("steps, warmup", [(0, 1), (-3, 1), (3, -1)])
def test_no_batches_to_time_is_an_error_not_a_rate(steps, warmup):
  config = common.data_config(source="digits", split="train")
  with pytest.raises(ValueError, match="steps >= 1"):
    throughput.images_per_second(config, batch_size=8, image_size=16,
                                 steps=steps, warmup=warmup)


def test_the_input_benchmark_without_its_data_says_how_to_make_it(tmp_path):
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run(
      [sys.executable, "benchmarks/input_pipeline.py",
       f"--data_dir={tmp_path}/nothing_here"], cwd=root, capture_output=True,
      text=True, timeout=300, check=False)
  assert done.returncode == 1
  assert "input_pipeline.py: error:" in done.stderr
  assert "add --make_data" in done.stderr and "Traceback" not in done.stderr
