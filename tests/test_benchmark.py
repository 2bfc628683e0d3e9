import types

import jax.numpy as jnp
import pytest

from mae_jax import benchmark
from testing_utils import tiny_cae_config, tiny_config


def test_run_reports_speed_flops_and_utilisation():
  config = tiny_config(batch_size=8)
  result = benchmark.run(config, steps=2, warmup=1, peak_flag=1.0)
  assert result["impl"] == "mae_jax"
  assert result["batch"] == 8 and result["dtype"] == "float32"
  assert result["step_s_median"] > 0 and result["compile_s"] > 0
  assert result["img_per_s"] == pytest.approx(8 / result["step_s_median"])
  # XLA counts at least the matmuls of 3 passes over encoder and decoder.
  assert result["train_gflop_per_img"] > 1e-4
  assert result["peak_source"] == "--peak_tflops"
  assert result["mfu"] == pytest.approx(
      result["train_gflop_per_img"] * 8 / result["step_s_median"] / 1e3 / 8)


def test_peak_comes_from_the_table_for_known_devices():
  device = types.SimpleNamespace(device_kind="TPU v4")
  assert benchmark.peak_tflops(device, jnp.bfloat16, 0.0) == (
      275.0, "table: TPU v4")
  h100 = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")
  assert benchmark.peak_tflops(h100, jnp.float32, 0.0)[0] == 67.0
  assert benchmark.peak_tflops(h100, jnp.float32, 5.0) == (5.0,
                                                          "--peak_tflops")


def test_unknown_devices_measure_a_matmul_peak():
  device = types.SimpleNamespace(device_kind="cpu")
  peak, source = benchmark.peak_tflops(device, jnp.float32, 0.0)
  assert source == "measured matmul" and peak > 0


def test_model_name_uses_the_size_table():
  assert benchmark.model_name(tiny_config().model) == "vit-w32-d2/4"
  from configs import common
  assert benchmark.model_name(common.mae_model("large/16")) == "large/16"


def test_cae_configs_run_too():
  result = benchmark.run(tiny_cae_config(batch_size=8), steps=1, warmup=1,
                         peak_flag=1.0)
  assert result["decoder"] == "regressor 1x32 + decoder 1x32"
  assert result["img_per_s"] > 0
