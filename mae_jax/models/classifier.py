"""ViT classifier for the evaluation protocols (MAE §4 and A.1-A.2; CAE §4.1).

The encoder is the MAE or CAE encoder without masking, under the same
parameter names ('encoder/...') and with the same options (layer scale, key
bias, sin-cos order: models/vit.py), so a pretraining checkpoint's encoder
drops in. Three heads, as in the references:
- linear probe: the cls token after the final norm -> BatchNorm without
  affine parameters (eps 1e-6) -> Linear (init std 0.01);
- attentive probe (CAE): the tokens after the final norm -> one learned
  query's cross-attention over them (`AttentivePooling`) -> BatchNorm
  without affine parameters -> Linear (init std 0.01);
- fine-tuning: global average of the patch tokens (no final norm) ->
  LayerNorm 'fc_norm' -> Linear (init std 2e-5).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mae_jax import patches
from mae_jax.models import vit

Dtype = Any
POOLINGS = ("cls", "gap", "attentive")


class AttentivePooling(nn.Module):
  """CAE's attentive probe block: (B, N, D) tokens -> (B, D).

  A learned query, zero-initialised and the same for every image, attends
  over all N tokens; LayerNorm on the query, the keys and the values
  separately; no residual, no MLP (CAE paper §4.1, Atten4Vis/CAE
  models/modeling_finetune.py `AttentiveBlock` with `CrossAttention`). As
  there: the encoder's cls token is among the keys and values, no position
  embedding is added, the heads are the encoder's, linear layers start
  normal(0.02) with zero biases, and q and v have a bias but k has none (a k
  bias would shift every logit of a query alike, which the softmax ignores).
  """
  num_heads: int
  layer_norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
    b, n, d = tokens.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads "
                       f"{self.num_heads}")
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps,
                             dtype=self.dtype)
    dense = functools.partial(nn.Dense, d, dtype=self.dtype,
                              kernel_init=nn.initializers.normal(0.02))
    query = self.param("query", nn.initializers.zeros, (1, 1, d))
    q = dense(name="q")(norm(name="norm_q")(query.astype(self.dtype)))
    k = dense(use_bias=False, name="k")(norm(name="norm_k")(tokens))
    v = dense(name="v")(norm(name="norm_v")(tokens))

    def heads(x):  # (B, N, D) -> (B, heads, N, D / heads)
      return x.reshape(x.shape[0], x.shape[1], self.num_heads, -1).transpose(
          0, 2, 1, 3)

    q = jnp.broadcast_to(q, (b, 1, d))
    pooled = vit.attention(heads(q), heads(k), heads(v)).reshape(b, d)
    return dense(name="proj")(pooled)


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
                     final_norm=self.pooling != "gap")
    if self.pooling == "cls":
      features = tokens[:, 0]
    elif self.pooling == "attentive":
      features = AttentivePooling(self.num_heads, self.layer_norm_eps,
                                  self.dtype, name="attentive_pool")(tokens)
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
