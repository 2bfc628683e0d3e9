"""ViT classifier for the evaluation protocols (MAE §4 and A.1-A.2).

The encoder is the MAE or CAE encoder without masking, under the same
parameter names ('encoder/...') and with the same options (layer scale, key
bias, sin-cos order: models/vit.py), so a pretraining checkpoint's encoder
drops in. Two heads, as in the reference:
- linear probe: the cls token after the final norm -> BatchNorm without
  affine parameters (eps 1e-6) -> Linear (init std 0.01);
- fine-tuning: global average of the patch tokens (no final norm) ->
  LayerNorm 'fc_norm' -> Linear (init std 2e-5).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mae_jax import patches
from mae_jax.models import vit

Dtype = Any
POOLINGS = ("cls", "gap")


class ViTClassifier(nn.Module):
  """images (B, H, W, 3) normalised -> float32 logits (B, num_classes)."""
  patch_size: int
  image_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  num_classes: int
  pooling: str = "gap"
  head_batch_norm: bool = False
  head_init_std: float = 2e-5
  drop_path_rate: float = 0.0
  learned_pos_embed: bool = False
  layer_norm_eps: float = 1e-6
  remat: bool = False
  dtype: Dtype = jnp.float32
  layer_scale_init: float = 0.0
  key_bias: bool = True
  sincos_order: str = "w_first"
  # The pmap axis over which the head's BatchNorm averages its batch
  # statistics in training (all devices see one global batch's statistics).
  axis_name: str | None = None

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool = False,
               drop_keys: jax.Array | None = None) -> jnp.ndarray:
    """`train` uses batch statistics in the head's BatchNorm; `drop_keys`
    (one PRNG key per image) turns drop path on."""
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling={self.pooling!r}; use one of {POOLINGS}")
    grid = patches.grid_size(self.image_size, self.patch_size)
    encoder = vit.VisionEncoder(
        self.patch_size, self.width, self.depth, self.num_heads, self.mlp_dim,
        self.layer_norm_eps, self.remat, self.dtype, self.drop_path_rate,
        pos_embed_grid=(grid, grid) if self.learned_pos_embed else None,
        layer_scale_init=self.layer_scale_init, key_bias=self.key_bias,
        sincos_order=self.sincos_order, name="encoder")
    tokens = encoder(images.astype(self.dtype), drop_keys,
                     final_norm=self.pooling == "cls")
    if self.pooling == "cls":
      features = tokens[:, 0]
    else:
      features = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                              name="fc_norm")(tokens[:, 1:].mean(axis=1))
    features = features.astype(jnp.float32)
    if self.head_batch_norm:
      features = nn.BatchNorm(
          use_running_average=not train, use_bias=False, use_scale=False,
          epsilon=1e-6, momentum=0.9, axis_name=self.axis_name if train
          else None, name="head_norm")(features)
    return nn.Dense(self.num_classes,
                    kernel_init=nn.initializers.normal(self.head_init_std),
                    name="head")(features)
