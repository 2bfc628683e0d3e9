"""Vision Transformer pieces shared by the MAE encoder and decoder (SPEC §1).

Pre-LayerNorm blocks with exact GELU, a fused qkv projection with bias, and
xavier-uniform init everywhere, as in the official MAE release. Parameters are
float32; `dtype` is the compute dtype (bfloat16 on accelerators).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mae_jax import patches

Dtype = Any

xavier_uniform = nn.initializers.xavier_uniform()
token_init = nn.initializers.normal(stddev=0.02)


@functools.lru_cache(maxsize=None)
def sincos_pos_embed_2d(width: int, grid_h: int, grid_w: int) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding, (grid_h * grid_w, width) float32.

  Official layout: [sin(w) | cos(w) | sin(h) | cos(h)], each width/4 wide,
  frequencies 1 / 10000^(2i / (width/2)); tokens in row-major (h, w) order.
  Pretrained weights depend on this exact layout.
  """
  if width % 4:
    raise ValueError(f"width={width} must be divisible by 4 for the 2-D "
                     "sin-cos position embedding")
  quarter = width // 4
  omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
  h, w = np.meshgrid(np.arange(grid_h, dtype=np.float64),
                     np.arange(grid_w, dtype=np.float64), indexing="ij")

  def embed_1d(positions):
    angles = np.outer(positions.reshape(-1), omega)  # (L, width/4)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  return np.concatenate([embed_1d(w), embed_1d(h)], axis=1).astype(np.float32)


class Attention(nn.Module):
  """Multi-head self-attention with one fused qkv projection."""
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads "
                       f"{self.num_heads}")
    qkv = nn.Dense(3 * d, dtype=self.dtype, kernel_init=xavier_uniform,
                   name="qkv")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, self.num_heads, -1), 2, 0)
    # Logits and softmax are computed in float32 even for bfloat16 inputs.
    out = jax.nn.dot_product_attention(q, k, v).reshape(b, n, d)
    return nn.Dense(d, dtype=self.dtype, kernel_init=xavier_uniform,
                    name="proj")(out)


class Mlp(nn.Module):
  """Two-layer MLP with exact (erf) GELU."""
  hidden_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    d = x.shape[-1]
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, kernel_init=xavier_uniform,
                 name="fc1")(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(d, dtype=self.dtype, kernel_init=xavier_uniform,
                    name="fc2")(x)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps,
                             dtype=self.dtype)
    x = x + Attention(self.num_heads, self.dtype, name="attn")(
        norm(name="norm1")(x))
    return x + Mlp(self.mlp_dim, self.dtype, name="mlp")(norm(name="norm2")(x))


class Transformer(nn.Module):
  """`depth` blocks followed by a final LayerNorm.

  `remat` recomputes each block's activations in the backward pass, trading
  ~1/3 more compute for memory that no longer grows with depth.
  """
  depth: int
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-6
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    block_cls = nn.remat(Block) if self.remat else Block
    for i in range(self.depth):
      x = block_cls(self.num_heads, self.mlp_dim, self.layer_norm_eps,
                    self.dtype, name=f"blocks_{i}")(x)
    return nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                        name="norm")(x)


class VisionEncoder(nn.Module):
  """ViT encoder, split in two so that MAE can mask between the halves.

  `embed` turns images into position-embedded patch tokens; `transform`
  prepends the cls token and runs the blocks. The position table is generated
  from the input's grid, so another resolution just works.
  """
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-6
  remat: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    # A Dense layer on flattened patches is the reference's conv patch
    # embedding, with xavier fans of (p*p*3, width) as in the reference.
    self.patch_embed = nn.Dense(self.width, dtype=self.dtype,
                                kernel_init=xavier_uniform)
    self.cls_token = self.param("cls_token", token_init, (1, 1, self.width))
    self.transformer = Transformer(self.depth, self.num_heads, self.mlp_dim,
                                   self.layer_norm_eps, self.remat, self.dtype)

  def embed(self, images: jnp.ndarray) -> jnp.ndarray:
    """(B, H, W, 3) -> (B, L, D) patch tokens plus position embedding."""
    gh = patches.grid_size(images.shape[1], self.patch_size)
    gw = patches.grid_size(images.shape[2], self.patch_size)
    x = self.patch_embed(patches.patchify(images, self.patch_size))
    return x + sincos_pos_embed_2d(self.width, gh, gw).astype(x.dtype)

  def transform(self, tokens: jnp.ndarray) -> jnp.ndarray:
    """(B, N, D) -> (B, 1 + N, D); the cls token's position embedding is 0."""
    cls = jnp.broadcast_to(self.cls_token.astype(tokens.dtype),
                           (tokens.shape[0], 1, self.width))
    return self.transformer(jnp.concatenate([cls, tokens], axis=1))

  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
    """Unmasked encoding of every patch: (B, 1 + L, D)."""
    return self.transform(self.embed(images))
