"""Small configs and comparisons shared by the tests."""

import chex
import jax
import ml_collections
import numpy as np

from configs import common
from mae_jax import optim


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
  config.data.update(source="digits", split="train", crop_scale=(0.5, 1.0),
                     num_workers=2)
  config.batch_size = 16
  config.total_steps = 6
  config.warmup_steps = 2
  config.optimizer.base_lr = 1e-3
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  config.figure_every_steps = 3
  config.figure_images = 2
  config.update(overrides)
  return config


def tiny_classifier_config(mode: str = "finetune", **overrides
                           ) -> ml_collections.ConfigDict:
  """A linear probe or fine-tuning on digits with the tiny encoder."""
  if mode == "linear_probe":
    config = common.linear_probe_config("tiny/4")
  else:
    config = common.finetune_config("tiny/4", epochs=1, base_lr=1e-3,
                                    layer_decay=0.75, drop_path_rate=0.1)
  encoder = {k: v for k, v in tiny_model().items()
             if k in config.model and k != "patch_size"}
  config.model.update(encoder, num_classes=10)
  config.data.update(source="digits", split="train", eval_split="test",
                     crop_scale=(0.5, 1.0), num_workers=2,
                     rand_augment_num_ops=0)
  config.augment.mix_group_size = 2  # 2 examples per device on 8 devices
  config.batch_size = 16
  config.total_steps = 4
  config.warmup_steps = 1
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.eval_every_steps = 4
  config.update(overrides)
  return config


def _split_key_bias(params):
  """(params without the key biases, the key biases).

  Softmax ignores a shift of the logits, so the key bias has a true gradient
  of exactly zero; its computed gradient is float noise that depends on the
  reduction order, and Adam scales that noise up to ~lr per step.
  """
  params = jax.tree.map(np.asarray, params)
  key_biases = []
  for part in ("encoder", "decoder"):
    blocks = params[part]["transformer"]
    for name in [n for n in blocks if n.startswith("blocks_")]:
      qkv = blocks[name]["attn"]["qkv"]
      q, k, v = np.split(qkv["bias"], 3)
      key_biases.append(k)
      qkv["bias"] = np.concatenate([q, v])
  return params, key_biases


def assert_same_trajectory(a, b, config):
  """Parameters of two runs that should have followed the same trajectory."""
  (a, a_keys), (b, b_keys) = _split_key_bias(a), _split_key_bias(b)
  chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)
  lr = optim.peak_learning_rate(config)
  chex.assert_trees_all_close(a_keys, b_keys, atol=config.total_steps * lr)


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
