import functools
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from mae_jax import devices as devices_lib
from mae_jax import optim
from mae_jax import tasks
from mae_jax import tpu_estimate
from mae_jax import train
import testing_utils
from testing_utils import mae_training_matmul_flops
from testing_utils import tiny_config
from testing_utils import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where CI installs libtpu: apart from .venv, since with libtpu installed every
# JAX process looks for a TPU at start (scripts/in_venv.sh --tpu_estimate).
TPU_VENV_PYTHON = os.path.join(ROOT, ".venv-tpu", "bin", "python")
# The files whose `needs_libtpu` tests run in .venv-tpu.
LIBTPU_TEST_FILES = ("tests/test_tpu_estimate.py",
                     "tests/test_tpu_op_breakdown.py")


def needs_libtpu(test):
  """Marks a test that compiles for a TPU topology: it skips without libtpu,
  and `test_the_libtpu_tests_pass_in_the_tpu_estimate_venv` runs it where
  libtpu is."""
  missing = tpu_estimate.libtpu_missing()
  if missing and os.path.exists(TPU_VENV_PYTHON):
    missing = ("libtpu is not installed here; it runs in .venv-tpu instead "
               "(test_the_libtpu_tests_pass_in_the_tpu_estimate_venv)")
  return pytest.mark.needs_libtpu(pytest.mark.skipif(
      missing is not None, reason=str(missing))(test))


def test_the_libtpu_tests_pass_in_the_tpu_estimate_venv():
  if tpu_estimate.libtpu_missing() is None:
    pytest.skip("libtpu is installed here: the needs_libtpu tests run in "
                "this session")
  if not os.path.exists(TPU_VENV_PYTHON):
    message = (".venv-tpu is missing: build it with `scripts/in_venv.sh "
               "--tpu_estimate true` to run the tests that compile for a TPU "
               "topology")
    if os.environ.get(testing_utils.REQUIRE_TEST_EXTRAS) == "1":
      pytest.fail(message, pytrace=False)
    pytest.skip(message)
  # A session of its own: its own 8 emulated devices and no shared cache of
  # compiled programs (a compile-only TPU executable is not one to share).
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("PYTEST_", "JAX_COMPILATION_CACHE", "XLA_"))}
  env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  done = subprocess.run(
      [TPU_VENV_PYTHON, "-m", "pytest", "-q", "-m", "needs_libtpu",
       *LIBTPU_TEST_FILES], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=900, check=False)
  summary = done.stdout.strip().splitlines()[-1:]
  assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
  assert summary and summary[0].startswith("4 passed"), done.stdout[-2000:]


def test_pmap_equivalent_is_the_pmapped_step():
  # What makes the TPU estimates those of the trainer's step: the same new
  # state and metrics as jax.pmap on the 8 emulated devices (with
  # shard_map's default check the gradients would come out summed).
  config = tiny_config(batch_size=16)
  task = tasks.make_task(config, train.AXIS)
  schedule = optim.warmup_cosine_schedule(1e-2, 1, 6)
  devices = jax.local_devices()
  state = devices_lib.replicate(train.create_train_state(
      task, config, jax.random.key(0), schedule, load_init_from=False),
                                devices)
  rng = np.random.default_rng(0)
  batch = devices_lib.shard({
      "image": rng.integers(0, 256, (8, 2, 16, 16, 3), dtype=np.uint8),
      "label": np.zeros((8, 2), np.int32),
      "example_id": np.arange(16, dtype=np.int32).reshape(8, 2)}, devices)
  step_rng = devices_lib.replicate(jax.random.key(1), devices)
  step = functools.partial(train.train_step, task=task, schedule=schedule,
                           grad_accum_steps=1)

  axes = dict(in_axes=train.STEP_IN_AXES, out_axes=train.STEP_OUT_AXES)
  expected = jax.pmap(step, axis_name=train.AXIS, **axes)(state, batch,
                                                         step_rng)
  got = tpu_estimate.pmap_equivalent(step, devices, train.AXIS, **axes)(
      state, batch, step_rng)
  chex.assert_trees_all_close(jax.device_get(got), jax.device_get(expected),
                              rtol=1e-5, atol=1e-7)


def test_topologies_name_their_devices_and_peaks():
  v3 = tpu_estimate.topology("v3-128")
  assert (v3.devices, v3.devices_per_host, v3.hbm_gib,
          v3.peak_bf16_tflops) == (128, 8, 16.0, 61.5)
  assert tpu_estimate.topology("v4-8").devices == 4  # one device per chip
  with pytest.raises(ValueError, match="use one of"):
    tpu_estimate.topology("v3-7")


def test_auto_dtype_follows_the_target_platform():
  config = tiny_config()
  config.model.dtype = "auto"
  assert tpu_estimate.for_platform(config, "tpu").model.dtype == "bfloat16"
  assert tpu_estimate.for_platform(config, "cpu").model.dtype == "float32"


def test_a_pod_of_another_chip_is_refused():
  with pytest.raises(ValueError, match="same TPU generation"):
    tpu_estimate.estimate(tiny_config(), "v3-8", "v4-32")


def test_a_pod_smaller_than_the_topology_is_refused():
  # Swapped flags: --topology=v3-128 --pod=v3-8.
  with pytest.raises(ValueError, match="did you swap them"):
    tpu_estimate.estimate(tiny_config(), "v3-128", "v3-8")


def test_a_config_without_a_train_step_is_refused():
  from testing_utils import tiny_knn_config
  with pytest.raises(ValueError, match="trains nothing"):
    tpu_estimate.estimate(tiny_knn_config(), "v3-8")


@needs_libtpu
def test_tiny_step_on_a_v3_slice():
  config = tiny_config(batch_size=512)  # 64 per core: matmuls dominate
  result = tpu_estimate.estimate(config, "v3-8")
  assert result["device_kind"] == "TPU v3"
  assert result["batch_per_device"] == 64 and result["fits_hbm"]
  # The one-hot token gathers add ~3% of matmuls in a model this small.
  assert result["train_gflop_per_img"] * 1e9 == pytest.approx(
      mae_training_matmul_flops(config.model), rel=0.1)
  step_s = result["estimated_step_s"]
  assert result["estimated_img_per_s_per_device"] == pytest.approx(64 / step_s)
  assert 0 < result["estimated_mfu"] < 1
  assert result["estimated_recipe_hours"] == pytest.approx(
      config.total_steps * step_s / 3600)
  assert result["memory_total_gib"] == pytest.approx(
      result["memory_arguments_gib"] + result["memory_outputs_gib"] -
      result["memory_aliased_gib"] + result["memory_temporaries_gib"])


@needs_libtpu
def test_remat_counts_model_flops_apart_from_the_recomputation():
  config = tiny_config(batch_size=512)
  config.model.remat = True
  result = tpu_estimate.estimate(config, "v3-8", "v3-32")
  assert result["batch_per_device"] == 16 and result["remat"]
  assert result["executed_gflop_per_img"] > result["train_gflop_per_img"]


@needs_libtpu
def test_the_stock_flax_reference_compiles_the_same_way():
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "benchmarks"))
  import flax_reference_mae  # pylint: disable=g-import-not-at-top
  config = tiny_config(batch_size=512)
  config.model = tiny_model(width=64, mlp_dim=256, decoder_width=64,
                            decoder_mlp_dim=256)
  stock = tpu_estimate.estimate(
      config, "v3-8", task_factory=flax_reference_mae.StockFlaxPretrainTask)
  assert stock["fits_hbm"] and stock["estimated_step_s"] > 0
  # The same products; jax's exact GELU (an erfc polynomial) adds ~20% of
  # counted FLOPs at this width, ~0.5% at ViT-B's.
  assert stock["train_gflop_per_img"] * 1e9 == pytest.approx(
      mae_training_matmul_flops(config.model), rel=0.25)
