"""A plain MAE made of stock Flax modules, the yardstick for our TPU step.

The straightforward Flax way to write the method: `nn.MultiHeadDotProductAttention`,
`nn.Dense`, `nn.LayerNorm` and exact GELU, with no layout or backward tuned by
hand. It computes what `mae_jax.models.MAE` computes (same sizes, masking,
decoder and norm-pix loss; parameter names differ) and is trained by the same
`train.train_step`, so compiling both the same way (`mae_jax.tpu_estimate`)
tells whether our hand-tuned model is faster than the obvious code:

  python benchmarks/flax_reference_mae.py --config=configs/mae_vit_large_pretrain.py \
      --topology=v3-8 --pod=v3-128

prints the same JSON line as `python -m mae_jax.benchmark --topology=...`,
with "impl": "stock flax". Needs libtpu for TPU topologies (setup.py's
`tpu_estimate` extra).
"""

import functools
import json
import os
import sys

import flax.linen as nn
import jax.numpy as jnp
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mae_jax import cli  # pylint: disable=g-import-not-at-top
from mae_jax import losses
from mae_jax import masking
from mae_jax import models
from mae_jax import patches
from mae_jax import tasks
from mae_jax import tpu_estimate
from mae_jax.models import vit

FLAGS = flags.FLAGS

xavier = nn.initializers.xavier_uniform()


class Block(nn.Module):
  num_heads: int
  mlp_dim: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    norm = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=self.dtype)
    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=xavier)
    y = norm()(x)
    x = x + nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, kernel_init=xavier)(y, y)
    y = nn.gelu(dense(self.mlp_dim)(norm()(x)), approximate=False)
    return x + dense(x.shape[-1])(y)


class Transformer(nn.Module):
  depth: int
  num_heads: int
  mlp_dim: int
  remat: bool
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    block = nn.remat(Block) if self.remat else Block
    for _ in range(self.depth):
      x = block(self.num_heads, self.mlp_dim, self.dtype)(x)
    return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x)


class StockFlaxMAE(nn.Module):
  """The MAE of `models.MAE`'s fields, written with stock modules."""
  patch_size: int
  image_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  decoder_width: int
  decoder_depth: int
  decoder_num_heads: int
  decoder_mlp_dim: int
  mask_ratio: float
  norm_pix_loss: bool
  remat: bool
  dtype: jnp.dtype

  @property
  def num_patches(self) -> int:
    return patches.grid_size(self.image_size, self.patch_size) ** 2

  @nn.compact
  def __call__(self, images, noise, drop_keys=None):
    if drop_keys is not None:
      raise ValueError("the stock-Flax reference has no drop path; use "
                       "--config.model.drop_path_rate=0")
    grid = patches.grid_size(self.image_size, self.patch_size)
    target = patches.patchify(images, self.patch_size)
    x = nn.Dense(self.width, dtype=self.dtype, kernel_init=xavier)(
        target.astype(self.dtype))
    x = x + vit.sincos_pos_embed_2d(self.width, grid, grid).astype(x.dtype)
    x, mask, ids_restore = masking.random_masking(
        x, noise, masking.num_kept(x.shape[1], self.mask_ratio))
    cls = self.param("cls_token", vit.token_init, (1, 1, self.width))
    x = jnp.concatenate(
        [jnp.broadcast_to(cls, (x.shape[0], 1, self.width)).astype(x.dtype), x],
        axis=1)
    x = Transformer(self.depth, self.num_heads, self.mlp_dim, self.remat,
                    self.dtype)(x)

    x = nn.Dense(self.decoder_width, dtype=self.dtype, kernel_init=xavier)(x)
    mask_token = self.param("mask_token", vit.token_init,
                            (1, 1, self.decoder_width))
    removed = jnp.broadcast_to(
        mask_token, (x.shape[0], mask.shape[1] + 1 - x.shape[1],
                     self.decoder_width)).astype(x.dtype)
    tokens = masking.unshuffle(jnp.concatenate([x[:, 1:], removed], axis=1),
                               ids_restore)
    tokens = tokens + vit.sincos_pos_embed_2d(self.decoder_width, grid,
                                              grid).astype(x.dtype)
    x = Transformer(self.decoder_depth, self.decoder_num_heads,
                    self.decoder_mlp_dim, self.remat, self.dtype)(
                        jnp.concatenate([x[:, :1], tokens], axis=1))
    pred = nn.Dense(self.patch_size ** 2 * 3, dtype=self.dtype,
                    kernel_init=xavier)(x)[:, 1:].astype(jnp.float32)
    loss = losses.reconstruction_loss(pred, target, mask,
                                      norm_pix=self.norm_pix_loss)
    return models.MAEOutput(loss=loss, pred=pred, mask=mask)


class StockFlaxPretrainTask(tasks.PretrainTask):
  """MAE pretraining with the stock-Flax model in place of ours."""

  def __init__(self, config):
    super().__init__(config)
    model = config.model
    self.model = StockFlaxMAE(
        model.patch_size, model.image_size, model.width, model.depth,
        model.num_heads, model.mlp_dim, model.decoder_width,
        model.decoder_depth, model.decoder_num_heads, model.decoder_mlp_dim,
        model.mask_ratio, model.norm_pix_loss, model.remat,
        models.compute_dtype(model.dtype))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  if config.mode != "pretrain" or models.method_of(config.model) != "mae":
    raise app.UsageError("the stock-Flax reference is an MAE: give an MAE "
                         "pretraining config")
  result = tpu_estimate.estimate(config, FLAGS.topology, FLAGS.pod,
                                 task_factory=StockFlaxPretrainTask)
  print(json.dumps({**result, "impl": "stock flax"}))


if __name__ == "__main__":
  tpu_estimate.define_flags("A pretraining configs/*.py.")
  cli.run_absl(main)
