"""Small configs and comparisons shared by the tests."""

import importlib
import os
import shutil
import subprocess

import chex
import flax
import jax
import ml_collections
import numpy as np
import pytest

from configs import common
from mae_jax import optim

# Set by .ci/run: a test whose optional dependency is missing fails instead of
# skipping, so that CI cannot pass without running the parity tests.
REQUIRE_TEST_EXTRAS = "MAE_JAX_REQUIRE_TEST_EXTRAS"


def require_modules(*names: str) -> None:
  """Imports `names` (test-only extras such as torch), or skips the running
  test, saying which are missing; fails instead when REQUIRE_TEST_EXTRAS=1.

  Tests declare what they need with `@pytest.mark.needs_modules(*names)`;
  conftest.py calls this before the test and its fixtures run.
  """
  missing = []
  for name in names:
    try:
      importlib.import_module(name)
    except ImportError as e:
      missing.append(f"{name} ({e})")
  if not missing:
    return
  message = (f"needs {', '.join(missing)}: "
             "pip install -r requirements-test.txt")
  if os.environ.get(REQUIRE_TEST_EXTRAS) == "1":
    pytest.fail(f"{message} ({REQUIRE_TEST_EXTRAS}=1 forbids skipping)",
                pytrace=False)
  pytest.skip(message)


def xla_flags(device_count: int) -> str:
  """XLA_FLAGS for a subprocess with `device_count` emulated CPU devices: the
  test session's flags (conftest.py), with the device count replaced."""
  device_flag = "--xla_force_host_platform_device_count="
  kept = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
          if not flag.startswith(device_flag)]
  return " ".join(kept + [f"{device_flag}{device_count}"])


def tiny_model(**overrides) -> ml_collections.ConfigDict:
  """A 16x16-image MAE with 16 patches: compiles in seconds on a CPU."""
  fields = dict(image_size=16, width=32, depth=2, num_heads=2, mlp_dim=64,
                decoder_width=32, decoder_depth=1, decoder_num_heads=2,
                decoder_mlp_dim=64, dtype="float32")
  fields.update(overrides)
  return common.mae_model("tiny/4", **fields)


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """A pretraining run on digits that takes a few seconds."""
  config = common.pretrain_config("tiny/4")
  config.model = tiny_model()
  config.data.update(source="digits", split="train", eval_split="test",
                     crop_scale=(0.5, 1.0), num_workers=0, num_threads=2)
  config.knn.batch_size = 64
  config.batch_size = 16
  common.in_steps(config, total=6, warmup=2)
  config.optimizer.base_lr = 1e-3
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  config.figure_every_steps = 3
  config.figure_images = 2
  config.update(overrides)
  return config


def tiny_cae_config(**overrides) -> ml_collections.ConfigDict:
  """A CAE pretraining run on digits that takes a few seconds: 24x24
  images, the 6x6 patches that block masking needs (18 of 36 masked)."""
  config = tiny_config()
  config.model = common.cae_model(
      "tiny/4", image_size=24, width=32, depth=2, num_heads=2, mlp_dim=64,
      regressor_depth=1, decoder_depth=1, decoder_num_heads=2,
      target="pixels", dtype="float32")
  config.optimizer.update(lr_scaling="none", grad_clip_norm=3.0)
  config.update(overrides)
  return config


def tiny_classifier_config(mode: str = "finetune", **overrides
                           ) -> ml_collections.ConfigDict:
  """A linear or attentive probe or a fine-tuning on digits with the tiny
  encoder."""
  if mode == "linear_probe":
    config = common.linear_probe_config("tiny/4")
  elif mode == "attentive_probe":
    config = common.attentive_probe_config("tiny/4")
  else:
    config = common.finetune_config("tiny/4", epochs=1, base_lr=1e-3,
                                    layer_decay=0.75, drop_path_rate=0.1)
  encoder = {k: v for k, v in tiny_model().items()
             if k in config.model and k != "patch_size"}
  config.model.update(encoder, num_classes=10)
  config.data.update(source="digits", split="train", eval_split="test",
                     crop_scale=(0.5, 1.0), num_workers=0, num_threads=2,
                     rand_augment_num_ops=0)
  config.augment.mix_group_size = 2  # 2 examples per device on 8 devices
  config.batch_size = 16
  common.in_steps(config, total=4, warmup=1)
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.eval_every_epochs, config.eval_every_steps = 0.0, 4
  config.update(overrides)
  return config


def tiny_knn_config(**overrides) -> ml_collections.ConfigDict:
  """k-NN of the tiny encoder on digits: 1497 bank images, 300 queries."""
  config = common.knn_config("tiny/4")
  config.model.update({k: v for k, v in tiny_model().items()
                       if k in config.model})
  config.data.update(source="digits", split="train", eval_split="test",
                     num_workers=0, num_threads=2)
  config.knn.batch_size = 64
  config.update(overrides)
  return config


def _split_key_bias(params):
  """(params without the key biases, the key biases).

  Softmax ignores a shift of the logits, so a key bias has a true gradient
  of exactly zero; its computed gradient is float noise that depends on the
  reduction order, and Adam scales that noise up to ~lr per step. Key biases
  are the k third of a fused qkv bias and, in CAE's regressor, the bias of
  the keys' own LayerNorm and projection.
  """
  flat = flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, params),
                                         sep="/")
  key_biases = {}
  for name in list(flat):
    if name.endswith("qkv/bias"):
      q, k, v = np.split(flat[name], 3)
      key_biases[name] = k
      flat[name] = np.concatenate([q, v])
    elif name.endswith(("norm_k/bias", "cross_attn/k/bias")):
      key_biases[name] = flat.pop(name)
  return flat, key_biases


def assert_same_trajectory(a, b, config):
  """Parameters of two runs that should have followed the same trajectory."""
  (a, a_keys), (b, b_keys) = _split_key_bias(a), _split_key_bias(b)
  chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)
  lr = optim.peak_learning_rate(config)
  chex.assert_trees_all_close(a_keys, b_keys, atol=config.total_steps * lr)


def read_only(directory: str, command: list[str]) -> list[str]:
  """`command` made to run with `directory` read-only: by its permissions,
  or, for root (whom permissions do not stop), through a read-only bind
  mount in a mount namespace of its own."""
  if os.geteuid() != 0:
    os.chmod(directory, 0o555)
    return command
  if shutil.which("unshare") is None or subprocess.run(
      ["unshare", "-m", "true"], capture_output=True, check=False).returncode:
    pytest.skip("running as root without `unshare -m`: no way to make a "
                "directory read-only")
  remount = ('mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" '
             '&& exec "$@"')
  return ["unshare", "-m", "sh", "-c", remount, directory, *command]


def mae_training_matmul_flops(model: ml_collections.ConfigDict) -> float:
  """Matmul FLOPs per image of an MAE training step: 3 x the forward's
  2*m*n*k (the backward computes two products per forward product)."""
  patches = (model.image_size // model.patch_size) ** 2
  patch_dim = model.patch_size ** 2 * 3
  encoder_tokens = 1 + int(patches * (1 - model.mask_ratio))
  decoder_tokens = 1 + patches

  def blocks(tokens, width, depth, mlp_dim):
    qkv, proj = 2 * tokens * width * 3 * width, 2 * tokens * width * width
    attention = 2 * 2 * tokens * tokens * width  # logits and weighted sum
    return depth * (qkv + attention + proj + 2 * 2 * tokens * width * mlp_dim)

  forward = (2 * patches * patch_dim * model.width +
             blocks(encoder_tokens, model.width, model.depth, model.mlp_dim) +
             2 * encoder_tokens * model.width * model.decoder_width +
             blocks(decoder_tokens, model.decoder_width, model.decoder_depth,
                    model.decoder_mlp_dim) +
             2 * decoder_tokens * model.decoder_width * patch_dim)
  return 3 * forward
