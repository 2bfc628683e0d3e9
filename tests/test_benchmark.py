import types

import jax.numpy as jnp
import pytest

from configs import common
from mae_jax import benchmark
from testing_utils import mae_training_matmul_flops
from testing_utils import tiny_cae_config
from testing_utils import tiny_config
from testing_utils import tiny_model


def test_run_reports_speed_flops_and_utilisation():
  # Wide enough that matmuls dominate XLA's count, as in real models (exact
  # GELU's erf polynomial adds ~10% of the matmuls at width 64, ~5% here).
  config = tiny_config(batch_size=64)
  config.model = tiny_model(width=128, mlp_dim=512, decoder_width=128,
                            decoder_mlp_dim=512)
  result = benchmark.run(config, steps=2, warmup=1, peak_flag=1.0)
  assert result["impl"] == "mae_jax" and result["mode"] == "pretrain"
  assert result["batch"] == 64 and result["dtype"] == "float32"
  assert result["step_s_median"] > 0 and result["compile_s"] > 0
  assert result["img_per_s"] == pytest.approx(64 / result["step_s_median"])
  assert result["train_gflop_per_img"] * 1e9 == pytest.approx(
      mae_training_matmul_flops(config.model), rel=0.1)
  assert result["peak_source"] == "--peak_tflops"
  assert result["mfu"] == pytest.approx(
      result["train_gflop_per_img"] * 64 / result["step_s_median"] / 1e3 / 8)
  # The timed steps' own page faults and kernel time (the malloc's cost).
  assert result["minor_page_faults_per_step"] >= 0
  assert 0 <= result["kernel_s_per_step"] < 10 * result["step_s_median"]


def test_run_times_a_classification_config_too():
  from testing_utils import tiny_classifier_config
  result = benchmark.run(tiny_classifier_config(), steps=1, warmup=0,
                         peak_flag=1.0)
  assert result["mode"] == "finetune" and result["step_s_median"] > 0


def test_peak_comes_from_the_table_for_known_devices():
  v4 = types.SimpleNamespace(device_kind="TPU v4", platform="tpu")
  assert benchmark.peak_tflops(v4, jnp.bfloat16, 0.0) == (
      275.0, "table: TPU v4, bfloat16")
  h100 = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3",
                               platform="gpu")
  # JAX runs float32 matmuls as TF32 on this GPU: TF32's peak, named so.
  assert benchmark.peak_tflops(h100, jnp.float32, 0.0) == (
      494.5, "table: NVIDIA H100 80GB HBM3, tf32")
  assert benchmark.peak_tflops(h100, jnp.float32, 5.0) == (5.0,
                                                          "--peak_tflops")


def test_unknown_devices_measure_a_matmul_peak():
  device = types.SimpleNamespace(device_kind="cpu", platform="cpu")
  peak, source = benchmark.peak_tflops(device, jnp.float32, 0.0)
  assert source == "measured matmul" and peak > 0


def test_model_names_come_from_the_size_table():
  from mae_jax import models
  assert models.size_name(tiny_model()) == "vit-w32-d2/4"
  assert models.size_name(common.mae_model("large/16")) == "large/16"


def test_cae_configs_run_too():
  result = benchmark.run(tiny_cae_config(batch_size=8), steps=1, warmup=1,
                         peak_flag=1.0)
  assert result["decoder"] == "regressor 1x32 + decoder 1x32"
  assert result["img_per_s"] > 0


def test_a_config_without_a_train_step_is_refused_before_compiling():
  from testing_utils import tiny_knn_config
  with pytest.raises(ValueError, match="trains nothing"):
    benchmark.compiled_step(tiny_knn_config())


@pytest.mark.parametrize("flags, message", [
    (["--steps=0"], "--steps=0"),
    (["--warmup=-1"], "--warmup=-1"),
    (["--peak_tflops=-1"], "--peak_tflops=-1"),
    (["--input_only", "--topology=v3-8"], "--input_only times this host"),
    (["--input_only", "--pod=v3-8"], "--input_only times this host"),
])
def test_bad_flags_fail_at_once_with_a_clear_message(flags, message):
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, "-m", "mae_jax.benchmark",
       "--config=configs/demo.py", *flags], cwd=root, capture_output=True,
      text=True, timeout=300, check=False,
      env=dict(os.environ, PYTHONPATH=root, MAE_JAX_NO_REEXEC="1"))
  assert result.returncode == 1
  assert "mae_jax.benchmark: error:" in result.stderr
  assert message in result.stderr and "Traceback" not in result.stderr
