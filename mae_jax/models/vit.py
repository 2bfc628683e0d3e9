"""Vision Transformer pieces shared by the MAE and CAE models and the
classifier.

Pre-LayerNorm blocks with exact GELU, a fused qkv projection with bias, and
xavier-uniform init everywhere, as in the official MAE release. Parameters are
float32; `dtype` is the compute dtype (bfloat16 on accelerators).

The BEiT-style encoder of CAE (Atten4Vis/CAE `models/modeling_cae_helper.py`)
differs in three options, all off by default so that MAE is unchanged: layer
scale (a learned per-channel gain on each residual branch), no key bias (q
and v biases only) and the other order of the sin-cos table's halves.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mae_jax import patches
from mae_jax import platforms

Dtype = Any

xavier_uniform = nn.initializers.xavier_uniform()
token_init = nn.initializers.normal(stddev=0.02)


# Which coordinate's embedding comes first in the sin-cos table: MAE's
# `util/pos_embed.py` puts the column (w) first, CAE's
# `build_2d_sincos_position_embedding` the row (h).
SINCOS_ORDERS = ("w_first", "h_first")


@functools.lru_cache(maxsize=None)
def sincos_pos_embed_2d(width: int, grid_h: int, grid_w: int,
                        order: str = "w_first") -> np.ndarray:
  """Fixed 2-D sin-cos position embedding, (grid_h * grid_w, width) float32.

  MAE's layout ('w_first'): [sin(w) | cos(w) | sin(h) | cos(h)], each width/4
  wide, frequencies 1 / 10000^(2i / (width/2)); tokens in row-major (h, w)
  order. CAE's ('h_first') swaps the halves: [sin(h) | cos(h) | sin(w) |
  cos(w)] (its meshgrid names the row 'w'; for the square grids it is used
  with, that is the row first). Pretrained weights depend on the exact layout.
  """
  if order not in SINCOS_ORDERS:
    raise ValueError(f"sincos_order={order!r}; use one of {SINCOS_ORDERS}")
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

  halves = [embed_1d(w), embed_1d(h)]
  if order == "h_first":
    halves.reverse()
  return np.concatenate(halves, axis=1).astype(np.float32)


def conv_bias_init(fan_in: int) -> nn.initializers.Initializer:
  """PyTorch's default init of a conv bias, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  The reference re-initialises the patch embedding's conv weight (xavier) but
  keeps this default for its bias (models_mae.initialize_weights).
  """
  bound = 1 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def gelu(x: jnp.ndarray) -> jnp.ndarray:
  """Exact GELU written as PyTorch writes it, x/2 (1 + erf(x/sqrt 2)).

  Same values as `jax.nn.gelu(approximate=False)` to ~1e-7, but XLA lowers
  erf to a short polynomial where jax's erfc form costs exp and selects: the
  MLP's activation was ~7x slower on CPU that way.
  """
  return 0.5 * x * (1 + jax.lax.erf(x * np.float32(1 / np.sqrt(2))).astype(
      x.dtype))


def _dense_on_flat_tokens(x, kernel, bias):
  flat = x.reshape(-1, x.shape[-1])
  return (flat @ kernel + bias).reshape(x.shape[:-1] + (kernel.shape[-1],))


def _dense_on_last_axis(x, kernel, bias):
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ()))
                             ) + bias


def dense_params(module: nn.Module, in_features: int, features: int,
                 bias_init: nn.initializers.Initializer = nn.initializers.zeros
                 ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(kernel (in, out) xavier-uniform, bias): `nn.Dense`'s parameters,
  declared in `module`'s scope."""
  return (module.param("kernel", xavier_uniform, (in_features, features)),
          module.param("bias", bias_init, (features,)))


class DenseParams(nn.Module):
  """A Dense layer's parameters alone, for a layer that applies them in its
  own layout (the attention's projections, head by head)."""
  in_features: int
  features: int

  @nn.compact
  def __call__(self) -> tuple[jnp.ndarray, jnp.ndarray]:
    return dense_params(self, self.in_features, self.features)


class Dense(nn.Module):
  """A linear layer over the last axis, with `nn.Dense`'s parameters
  ('kernel' (in, out) xavier-uniform, 'bias' zeros unless `bias_init` says
  otherwise).

  On CPU the tokens are flattened to 2-D first: XLA:CPU then emits the
  weight gradient in the kernel's own layout; with (B, N, D) inputs it came
  out transposed and the optimizer worked in transposed copies of every
  weight (the MLP's forward, backward and AdamW update were 30% slower).
  On TPU the reshape is what costs: XLA:TPU picks the (B, N, D) operand's
  layout itself, and the flattened layer made the ViT-B step ~25% slower by
  XLA's estimate.
  """
  features: int
  dtype: Dtype = jnp.float32
  bias_init: nn.initializers.Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jnp.ndarray,
               bias_mask: np.ndarray | None = None) -> jnp.ndarray:
    """`bias_mask` (features,) of 0/1 leaves out the bias where it is 0; the
    gradient of those bias entries is then exactly zero."""
    kernel, bias = dense_params(self, x.shape[-1], self.features,
                                self.bias_init)
    if bias_mask is not None:
      bias = bias * bias_mask
    return platforms.per_platform(
        x.astype(self.dtype), kernel.astype(self.dtype),
        bias.astype(self.dtype), cpu=_dense_on_flat_tokens,
        accelerator=_dense_on_last_axis)


@jax.custom_vjp
def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
  """Softmax attention over (B, heads, N, head_dim) inputs.

  Head-major layout keeps every product a plain batched matmul with no
  transposed operand, and so does the hand-written backward below (autodiff
  contracts over the query axis, which XLA:CPU runs off its fast matmul path):
  together 2.6x faster than `jax.nn.dot_product_attention` at the decoder's
  shapes on CPU; by XLA:TPU's estimate the decoder's blocks are ~10% faster
  than with autodiff too. Logits and probabilities are stored in the
  compute dtype and the softmax is computed in float32: the decoder's
  (B, 16, 197, 197) logits are what its attention costs on TPU (it is
  memory-bound), and storing them in float32 made its blocks ~15% slower.
  """
  return _attention_forward(q, k, v)[0]


def _attention_forward(q, k, v):
  scale = np.float32(q.shape[-1] ** -0.5)
  logits = jnp.einsum("bhqd,bhkd->bhqk", q * scale.astype(q.dtype), k)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  out = jnp.einsum("bhqk,bhkd->bhqd", probs, v)
  return out, (q, k, v, probs, out)


def _attention_backward(residuals, d_out):
  q, k, v, probs, out = residuals
  scale = np.float32(q.shape[-1] ** -0.5)
  d_v = jnp.einsum("bhkq,bhqd->bhkd", jnp.swapaxes(probs, -1, -2), d_out)
  d_probs = jnp.einsum("bhqd,bhkd->bhqk", d_out, v)
  # The softmax backward's row term sum_k P * dP equals dO . O (as in
  # FlashAttention): a reduction over head_dim, not over all N keys.
  row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1,
                keepdims=True)
  d_logits = probs.astype(jnp.float32) * (d_probs.astype(jnp.float32) - row)
  d_logits = (d_logits * scale).astype(q.dtype)
  d_q = jnp.einsum("bhqk,bhkd->bhqd", d_logits, k)
  d_k = jnp.einsum("bhkq,bhqd->bhkd", jnp.swapaxes(d_logits, -1, -2), q)
  return d_q, d_k, d_v


attention.defvjp(_attention_forward, _attention_backward)


def _attention_on_flat_tokens(x, qkv_kernel, qkv_bias, proj_kernel,
                              proj_bias, *, num_heads, dtype):
  """One fused qkv matmul on flattened tokens, then head-major transposes
  (the fastest form on CPU, see `Dense`)."""
  b, n, d = x.shape
  cast = lambda *arrays: [a.astype(dtype) for a in arrays]
  qkv = _dense_on_flat_tokens(*cast(x, qkv_kernel, qkv_bias))
  # The reference's qkv layout: [q | k | v], each head-major inside.
  q, k, v = qkv.reshape(b, n, 3, num_heads, -1).transpose(2, 0, 3, 1, 4)
  out = attention(q, k, v).transpose(0, 2, 1, 3).reshape(b, n, d)
  return _dense_on_flat_tokens(out, *cast(proj_kernel, proj_bias))


def _heads_by_einsum(x, kernel, bias, *, num_heads, dtype):
  kernel = kernel.astype(dtype).reshape(kernel.shape[0], num_heads, -1)
  bias = bias.astype(dtype).reshape(num_heads, 1, -1)
  return jnp.einsum("bnd,dhe->bhne", x.astype(dtype), kernel) + bias


def _heads_by_transpose(x, kernel, bias, *, num_heads, dtype):
  y = _dense_on_flat_tokens(x.astype(dtype), kernel.astype(dtype),
                            bias.astype(dtype))
  return y.reshape(y.shape[:2] + (num_heads, -1)).transpose(0, 2, 1, 3)


def _merge_heads_by_einsum(out, kernel, bias, *, dtype):
  kernel = kernel.astype(dtype).reshape(out.shape[1], out.shape[-1], -1)
  return jnp.einsum("bhne,hed->bnd", out, kernel) + bias.astype(dtype)


def _merge_heads_by_transpose(out, kernel, bias, *, dtype):
  b, _, n, _ = out.shape
  out = out.transpose(0, 2, 1, 3).reshape(b, n, -1)
  return _dense_on_flat_tokens(out, kernel.astype(dtype), bias.astype(dtype))


def project_to_heads(x: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray,
                     *, num_heads: int, dtype: Dtype) -> jnp.ndarray:
  """(B, N, D_in) @ kernel (D_in, D) + bias -> (B, heads, N, D / heads).

  On CPU a matmul on flattened tokens (see `Dense`), then a transpose; on
  accelerators one einsum straight into the head-major layout, with no
  reshape or transpose of activations, which on TPU cost more than the
  products.
  """
  return platforms.per_platform(
      x, kernel, bias,
      cpu=functools.partial(_heads_by_transpose, num_heads=num_heads,
                            dtype=dtype),
      accelerator=functools.partial(_heads_by_einsum, num_heads=num_heads,
                                    dtype=dtype))


def project_from_heads(out: jnp.ndarray, kernel: jnp.ndarray,
                       bias: jnp.ndarray, *, dtype: Dtype) -> jnp.ndarray:
  """(B, heads, N, D / heads) -> (B, N, D) @ kernel + bias; the two forms
  of `project_to_heads`, backwards."""
  return platforms.per_platform(
      out, kernel, bias,
      cpu=functools.partial(_merge_heads_by_transpose, dtype=dtype),
      accelerator=functools.partial(_merge_heads_by_einsum, dtype=dtype))


def _attention_per_head(x, qkv_kernel, qkv_bias, proj_kernel, proj_bias, *,
                        num_heads, dtype):
  """q, k and v each from its own column block of the kernel straight into
  (B, heads, N, head_dim), and the output projection contracting heads and
  head_dim at once (the blocks 12-20% faster on TPU than with one fused qkv
  product, by XLA's estimate). Slicing the float32 kernel before the cast,
  rather than after, makes the ViT-L step another 4% faster."""
  d = x.shape[-1]
  q, k, v = (_heads_by_einsum(x, qkv_kernel[:, i * d:(i + 1) * d],
                              qkv_bias[i * d:(i + 1) * d],
                              num_heads=num_heads, dtype=dtype)
             for i in range(3))
  return _merge_heads_by_einsum(attention(q, k, v), proj_kernel, proj_bias,
                                dtype=dtype)


def without_key_bias(width: int) -> np.ndarray:
  """The `bias_mask` of a fused [q | k | v] projection that has q and v
  biases but no k bias, as BEiT and CAE have.

  A key bias adds the same number to all of a query's logits, which softmax
  ignores: leaving it out changes no output. Keeping the parameter (always
  0) lets MAE and CAE encoders share one parameter layout.
  """
  return np.repeat(np.asarray([1, 0, 1], np.float32), width)


class Attention(nn.Module):
  """Multi-head self-attention with the reference's fused qkv parameter
  ([q | k | v]), applied in the form the platform wants (the two functions
  above).

  `key_bias=False`: q and v biases only (BEiT, CAE); see `without_key_bias`.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  key_bias: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads "
                       f"{self.num_heads}")
    qkv_kernel, qkv_bias = DenseParams(d, 3 * d, name="qkv")()
    if not self.key_bias:
      qkv_bias = qkv_bias * without_key_bias(d)
    options = dict(num_heads=self.num_heads, dtype=self.dtype)
    return platforms.per_platform(
        x, qkv_kernel, qkv_bias, *DenseParams(d, d, name="proj")(),
        cpu=functools.partial(_attention_on_flat_tokens, **options),
        accelerator=functools.partial(_attention_per_head, **options))


class Mlp(nn.Module):
  """Two-layer MLP with exact (erf) GELU."""
  hidden_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    d = x.shape[-1]
    x = Dense(self.hidden_dim, self.dtype, name="fc1")(x)
    x = gelu(x)
    return Dense(d, self.dtype, name="fc2")(x)


def drop_path(x: jnp.ndarray, keys: jax.Array | None, rate: float
              ) -> jnp.ndarray:
  """Stochastic depth: zeroes a residual branch per sample, rescales the rest.

  `keys` holds one PRNG key per sample (None = inference, the identity), so a
  sample's drop decisions do not depend on which device holds it.
  """
  if keys is None or rate == 0.0:
    return x
  keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - rate))(keys)
  scale = keep.astype(x.dtype) / np.asarray(1.0 - rate, x.dtype)
  return x * scale.reshape((-1,) + (1,) * (x.ndim - 1))


def layer_scale(module: nn.Module, name: str, init: float,
                branch: jnp.ndarray) -> jnp.ndarray:
  """`branch` times a learned per-channel gain initialised to `init` (CaiT's
  layer scale, as BEiT and CAE use it); `init` 0 means no gain."""
  if init == 0.0:
    return branch
  gain = module.param(name, nn.initializers.constant(init),
                      (branch.shape[-1],))
  return branch * gain.astype(branch.dtype)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x)).

  With `layer_scale_init` > 0 each branch is scaled by a learned gain
  ('layer_scale_attn', 'layer_scale_mlp'), as in BEiT and CAE.
  """
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-6
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  layer_scale_init: float = 0.0
  key_bias: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, drop_keys: jax.Array | None = None
               ) -> jnp.ndarray:
    norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps,
                             dtype=self.dtype)
    branch_keys = (None, None) if drop_keys is None else jax.vmap(
        lambda k: jax.random.split(k))(drop_keys).swapaxes(0, 1)
    attn = Attention(self.num_heads, self.dtype, self.key_bias, name="attn")(
        norm(name="norm1")(x))
    x = x + drop_path(
        layer_scale(self, "layer_scale_attn", self.layer_scale_init, attn),
        branch_keys[0], self.drop_path_rate)
    mlp = Mlp(self.mlp_dim, self.dtype, name="mlp")(norm(name="norm2")(x))
    return x + drop_path(
        layer_scale(self, "layer_scale_mlp", self.layer_scale_init, mlp),
        branch_keys[1], self.drop_path_rate)


class Transformer(nn.Module):
  """`depth` blocks followed by a final LayerNorm.

  `remat` recomputes each block's activations in the backward pass, trading
  ~1/3 more compute for memory that no longer grows with depth. The drop-path
  rate grows linearly from 0 at the first block to `drop_path_rate` at the
  last, as in the reference's fine-tuning.
  """
  depth: int
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-6
  remat: bool = False
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  layer_scale_init: float = 0.0
  key_bias: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray, drop_keys: jax.Array | None = None,
               final_norm: bool = True) -> jnp.ndarray:
    """`drop_keys` (B,) enables drop path; `final_norm=False` returns the
    last block's output (global-pool fine-tuning normalises after pooling)."""
    block_cls = nn.remat(Block) if self.remat else Block
    rates = np.linspace(0.0, self.drop_path_rate, self.depth)
    for i in range(self.depth):
      block_keys = None if drop_keys is None else jax.vmap(
          lambda k, i=i: jax.random.fold_in(k, i))(drop_keys)
      x = block_cls(self.num_heads, self.mlp_dim, self.layer_norm_eps,
                    float(rates[i]), self.dtype, self.layer_scale_init,
                    self.key_bias, name=f"blocks_{i}")(x, block_keys)
    if not final_norm:
      return x
    return nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                        name="norm")(x)


class VisionEncoder(nn.Module):
  """ViT encoder, split in two so that MAE can mask between the halves.

  `embed` turns images into position-embedded patch tokens; `transform`
  prepends the cls token and runs the blocks. The fixed sin-cos position
  table is generated from the input's grid, so another resolution just works.
  With `pos_embed_grid` set, the position embedding is instead a parameter
  'pos_embed' (1, 1 + gh*gw, D) for that grid, initialised to the sin-cos
  table with a zero cls row: the reference fine-tunes it.
  `layer_scale_init`, `key_bias` and `sincos_order` are the CAE/BEiT options
  (see the module docstring).
  """
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-6
  remat: bool = False
  dtype: Dtype = jnp.float32
  drop_path_rate: float = 0.0
  pos_embed_grid: tuple[int, int] | None = None
  layer_scale_init: float = 0.0
  key_bias: bool = True
  sincos_order: str = "w_first"

  def setup(self):
    # A Dense layer on flattened patches is the reference's conv patch
    # embedding, with xavier fans of (p*p*3, width) as in the reference.
    patch_dim = self.patch_size * self.patch_size * 3
    self.patch_embed = Dense(self.width, self.dtype,
                             bias_init=conv_bias_init(patch_dim))
    self.cls_token = self.param("cls_token", token_init, (1, 1, self.width))
    if self.pos_embed_grid is not None:
      self.pos_embed = self.param("pos_embed", lambda _: jnp.asarray(
          np.pad(self.sincos_table(*self.pos_embed_grid),
                 ((1, 0), (0, 0)))[None]))
    self.transformer = Transformer(self.depth, self.num_heads, self.mlp_dim,
                                   self.layer_norm_eps, self.remat,
                                   self.drop_path_rate, self.dtype,
                                   self.layer_scale_init, self.key_bias)

  @nn.nowrap
  def sincos_table(self, grid_h: int, grid_w: int) -> np.ndarray:
    """The fixed (grid_h * grid_w, width) position table of this encoder."""
    return sincos_pos_embed_2d(self.width, grid_h, grid_w, self.sincos_order)

  def embed(self, images: jnp.ndarray) -> jnp.ndarray:
    """(B, H, W, 3) -> (B, L, D) patch tokens plus position embedding."""
    gh = patches.grid_size(images.shape[1], self.patch_size)
    gw = patches.grid_size(images.shape[2], self.patch_size)
    x = self.patch_embed(patches.patchify(images, self.patch_size))
    if self.pos_embed_grid is None:
      return x + self.sincos_table(gh, gw).astype(x.dtype)
    if (gh, gw) != tuple(self.pos_embed_grid):
      raise ValueError(f"images of {gh}x{gw} patches do not fit the learned "
                       f"position embedding of {self.pos_embed_grid}")
    return x + self.pos_embed[:, 1:].astype(x.dtype)

  def transform(self, tokens: jnp.ndarray, drop_keys: jax.Array | None = None,
                final_norm: bool = True) -> jnp.ndarray:
    """(B, N, D) -> (B, 1 + N, D); see `Transformer` for the options."""
    cls = self.cls_token
    if self.pos_embed_grid is not None:
      cls = cls + self.pos_embed[:, :1]
    cls = jnp.broadcast_to(cls.astype(tokens.dtype),
                           (tokens.shape[0], 1, self.width))
    return self.transformer(jnp.concatenate([cls, tokens], axis=1), drop_keys,
                            final_norm)

  def __call__(self, images: jnp.ndarray, drop_keys: jax.Array | None = None,
               final_norm: bool = True) -> jnp.ndarray:
    """Unmasked encoding of every patch: (B, 1 + L, D)."""
    return self.transform(self.embed(images), drop_keys, final_norm)
