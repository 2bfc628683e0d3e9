"""The context autoencoder (CAE; Chen et al., "Context Autoencoder for
Self-Supervised Representation Learning", Sec. 3), read top to bottom:
`mask` -> `encode` -> `regress` -> `decode` -> `loss`.

- The encoder (the shared ViT, BEiT-style: layer scale, q and v biases, CAE's
  sin-cos order) sees the visible patches and the cls token, as in MAE.
- The latent context regressor predicts the encoder's representation of the
  masked patches: cross-attention blocks whose queries start as a learned
  mask token at the masked positions; keys and values are the visible
  latents (never updated) and the current queries.
- The decoder maps the predicted latents of the masked patches, and only
  those, to the target: per-patch pixels or DALL-E token logits.
- Alignment: the same encoder, with the current weights and no gradient,
  encodes the masked patches; the regressor's output must match it (MSE).
  JAX needs no second copy of the weights for that: `stop_gradient`.

Details follow Atten4Vis/CAE `models/modeling_cae.py` and
`models/modeling_cae_helper.py`: the regressor and decoder have the
encoder's width and MLP ratio, their own layer scale, a final LayerNorm;
the regressor normalises q, k and v separately and applies its second
LayerNorm to the residual stream itself; the alignment compares the
regressor's final-LayerNorm output with the encoder's final-LayerNorm output;
drop path runs in every stack, the alignment target's too (the official
target encoder runs in training mode).
"""

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mae_jax import losses
from mae_jax import masking
from mae_jax import patches
from mae_jax.models import dalle
from mae_jax.models import vit

Dtype = Any
TARGETS = ("pixels", "dalle")
# The released DALL-E dVAE's codebook: the decoder's classes for 'dalle'.
DALLE_VOCAB_SIZE = dalle.DalleEncoder.vocab_size
# 'xavier': the official default (xavier-uniform linear layers, truncated
# normal patch embedding and tokens); 'beit': BEiT's init, the official
# `--fix_init_weight` (truncated normal everywhere, each block's output
# projections divided by sqrt(2 x its 1-based index)).
WEIGHT_INITS = ("xavier", "beit")
INIT_STD = 0.02
# torch's trunc_normal_(std=0.02, a=-0.02, b=0.02) in the official code: cut
# at one standard deviation.
trunc_normal = nn.initializers.truncated_normal(INIT_STD, lower=-1.0,
                                                upper=1.0)


@flax.struct.dataclass
class CAEOutput:
  loss: jnp.ndarray  # () loss_recon + align_weight * loss_align
  loss_recon: jnp.ndarray  # () mean over the masked patches
  loss_align: jnp.ndarray  # () MSE of predicted vs encoded latents
  pred: jnp.ndarray  # (B, M, p*p*3 or vocab) float32, masked patches only
  ids_masked: jnp.ndarray  # (B, M) which patch each row of `pred` is
  mask: jnp.ndarray  # (B, L) 1 = masked


class CrossAttention(nn.Module):
  """Multi-head attention of `queries` over separate `keys` and `values`
  (the official `CrossAttention`: q, k and v projections of their own)."""
  num_heads: int
  dtype: Dtype = jnp.float32
  key_bias: bool = True

  @nn.compact
  def __call__(self, queries: jnp.ndarray, keys: jnp.ndarray,
               values: jnp.ndarray) -> jnp.ndarray:
    d = queries.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads "
                       f"{self.num_heads}")

    project = functools.partial(vit.project_to_heads,
                                num_heads=self.num_heads, dtype=self.dtype)
    q = project(queries, *vit.DenseParams(d, d, name="q")())
    k_kernel, k_bias = vit.DenseParams(d, d, name="k")()
    if not self.key_bias:  # kept at zero, with a zero gradient
      k_bias = k_bias * 0
    k = project(keys, k_kernel, k_bias)
    v = project(values, *vit.DenseParams(d, d, name="v")())
    return vit.project_from_heads(vit.attention(q, k, v),
                                  *vit.DenseParams(d, d, name="proj")(),
                                  dtype=self.dtype)


class RegressorBlock(nn.Module):
  """One block of the latent context regressor (the official
  `RegressorBlock`):

    x = q + gain1 * attn(LN_q(q + pos_q), LN_k(c + pos_c), LN_v(c))
    x = LN_mlp(x); x = x + gain2 * mlp(x)

  with c = [visible latents, q]: the keys and values carry positions only
  in the keys, and the visible latents enter unchanged in every block.
  """
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-6
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  layer_scale_init: float = 0.0
  key_bias: bool = True

  @nn.compact
  def __call__(self, queries: jnp.ndarray, visible: jnp.ndarray,
               pos_queries: jnp.ndarray, pos_visible: jnp.ndarray,
               drop_keys: jax.Array | None = None) -> jnp.ndarray:
    norm = lambda name: nn.LayerNorm(epsilon=self.layer_norm_eps,
                                     dtype=self.dtype, name=name)
    branch_keys = (None, None) if drop_keys is None else jax.vmap(
        lambda k: jax.random.split(k))(drop_keys).swapaxes(0, 1)
    context = jnp.concatenate([visible, queries], axis=1)
    pos_context = jnp.concatenate([pos_visible, pos_queries], axis=1)
    attn = CrossAttention(self.num_heads, self.dtype, self.key_bias,
                          name="cross_attn")(
                              norm("norm_q")(queries + pos_queries),
                              norm("norm_k")(context + pos_context),
                              norm("norm_v")(context))
    x = queries + vit.drop_path(
        vit.layer_scale(self, "layer_scale_attn", self.layer_scale_init,
                        attn), branch_keys[0], self.drop_path_rate)
    x = norm("norm_mlp")(x)
    mlp = vit.Mlp(self.mlp_dim, self.dtype, name="mlp")(x)
    return x + vit.drop_path(
        vit.layer_scale(self, "layer_scale_mlp", self.layer_scale_init, mlp),
        branch_keys[1], self.drop_path_rate)


class LatentContextRegressor(nn.Module):
  """`depth` regressor blocks, then a LayerNorm: the masked patches'
  predicted latents (B, M, D). Drop-path rates grow linearly to
  `drop_path_rate` as in the encoder."""
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
  def __call__(self, queries: jnp.ndarray, visible: jnp.ndarray,
               pos_queries: jnp.ndarray, pos_visible: jnp.ndarray,
               drop_keys: jax.Array | None = None) -> jnp.ndarray:
    block_cls = nn.remat(RegressorBlock) if self.remat else RegressorBlock
    rates = np.linspace(0.0, self.drop_path_rate, self.depth)
    for i in range(self.depth):
      block_keys = None if drop_keys is None else jax.vmap(
          lambda k, i=i: jax.random.fold_in(k, i))(drop_keys)
      queries = block_cls(
          self.num_heads, self.mlp_dim, self.layer_norm_eps, float(rates[i]),
          self.dtype, self.layer_scale_init, self.key_bias,
          name=f"blocks_{i}")(queries, visible, pos_queries, pos_visible,
                              block_keys)
    return nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype,
                        name="norm")(queries)


class CAEDecoder(nn.Module):
  """Self-attention blocks over latents + their positions, a LayerNorm and a
  linear head: (B, N, D) -> (B, N, output_dim) float32."""
  output_dim: int
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
  def __call__(self, latents: jnp.ndarray, positions: jnp.ndarray,
               drop_keys: jax.Array | None = None) -> jnp.ndarray:
    x = vit.Transformer(self.depth, self.num_heads, self.mlp_dim,
                        self.layer_norm_eps, self.remat, self.drop_path_rate,
                        self.dtype, self.layer_scale_init, self.key_bias,
                        name="transformer")(latents + positions, drop_keys)
    return vit.Dense(self.output_dim, self.dtype, name="head")(x).astype(
        jnp.float32)


class CAE(nn.Module):
  """Context autoencoder: encoder -> latent context regressor -> decoder,
  plus the alignment of predicted and encoded latents.

  `__call__(images, noise, drop_keys, token_targets)`: `noise` (B, L)
  decides the masking (masking.py); `drop_keys` (B,) turns drop path on;
  `token_targets` (B, L) are the DALL-E codes of every patch, for
  target='dalle'.
  """
  patch_size: int
  image_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  regressor_depth: int
  decoder_depth: int
  decoder_num_heads: int
  mask_ratio: float = 0.5
  target: str = "pixels"
  norm_pix_loss: bool = True
  align_weight: float = 2.0
  layer_scale_init: float = 0.1
  decoder_layer_scale_init: float = 0.1
  key_bias: bool = False
  sincos_order: str = "h_first"
  drop_path_rate: float = 0.0
  layer_norm_eps: float = 1e-6
  remat: bool = False
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.target not in TARGETS:
      raise ValueError(f"target={self.target!r}; use one of {TARGETS}")
    self.encoder = vit.VisionEncoder(
        self.patch_size, self.width, self.depth, self.num_heads, self.mlp_dim,
        self.layer_norm_eps, self.remat, self.dtype, self.drop_path_rate,
        layer_scale_init=self.layer_scale_init, key_bias=self.key_bias,
        sincos_order=self.sincos_order)
    self.mask_token = self.param("mask_token", trunc_normal,
                                 (1, 1, self.width))
    stack = dict(num_heads=self.decoder_num_heads, mlp_dim=self.mlp_dim,
                 layer_norm_eps=self.layer_norm_eps, remat=self.remat,
                 drop_path_rate=self.drop_path_rate, dtype=self.dtype,
                 layer_scale_init=self.decoder_layer_scale_init,
                 key_bias=self.key_bias)
    self.regressor = LatentContextRegressor(self.regressor_depth, **stack)
    self.decoder = CAEDecoder(self.output_dim, self.decoder_depth, **stack)

  @property
  def grid(self) -> int:
    return patches.grid_size(self.image_size, self.patch_size)

  @property
  def num_patches(self) -> int:
    return self.grid ** 2

  @property
  def output_dim(self) -> int:
    return (self.patch_size ** 2 * 3 if self.target == "pixels"
            else DALLE_VOCAB_SIZE)

  def positions(self, ids: jnp.ndarray) -> jnp.ndarray:
    """(B, N) patch indices -> (B, N, D) their sin-cos position embedding
    (the official `rd_pos_embed`, in the encoder's order)."""
    table = jnp.asarray(self.encoder.sincos_table(self.grid, self.grid),
                        self.dtype)
    return table[ids]

  def mask(self, images: jnp.ndarray, noise: jnp.ndarray):
    """Embeds all patches and splits them by `noise`.

    Returns visible (B, K, D) and masked (B, M, D) position-embedded tokens,
    their patch indices ids_keep (B, K) and ids_masked (B, M), and the mask
    (B, L), 1 = masked.
    """
    tokens = self.encoder.embed(images.astype(self.dtype))  # (B, L, D)
    len_keep = masking.num_kept(tokens.shape[1], self.mask_ratio)
    ids_shuffle, mask, _ = masking.shuffle(noise, len_keep)
    ids_keep, ids_masked = ids_shuffle[:, :len_keep], ids_shuffle[:, len_keep:]
    return (masking.gather(tokens, ids_keep),
            masking.gather(tokens, ids_masked), ids_keep, ids_masked, mask)

  def encode(self, tokens: jnp.ndarray, drop_keys: jax.Array | None = None
             ) -> jnp.ndarray:
    """(B, N, D) tokens -> (B, 1 + N, D) latents, cls first."""
    return self.encoder.transform(tokens, drop_keys)

  def regress(self, visible_latents: jnp.ndarray, ids_keep: jnp.ndarray,
              ids_masked: jnp.ndarray, drop_keys: jax.Array | None = None
              ) -> jnp.ndarray:
    """Visible latents (B, K, D), without cls -> predicted latents of the
    masked patches (B, M, D), queried by mask token + position."""
    b, m = ids_masked.shape
    queries = jnp.broadcast_to(self.mask_token.astype(self.dtype),
                               (b, m, self.width))
    return self.regressor(queries, visible_latents, self.positions(ids_masked),
                          self.positions(ids_keep), drop_keys)

  def decode(self, latents: jnp.ndarray, ids: jnp.ndarray,
             drop_keys: jax.Array | None = None) -> jnp.ndarray:
    """Latents (B, N, D) of the patches `ids` (B, N) -> their predicted
    targets (B, N, output_dim)."""
    return self.decoder(latents, self.positions(ids), drop_keys)

  def alignment_target(self, masked_tokens: jnp.ndarray,
                       drop_keys: jax.Array | None = None) -> jnp.ndarray:
    """The encoder's own latents of the masked patches (B, M, D), cls
    dropped: a target, so no gradient flows back through it."""
    return jax.lax.stop_gradient(self.encode(masked_tokens, drop_keys)[:, 1:])

  def loss(self, pred: jnp.ndarray, targets: jnp.ndarray,
           predicted_latents: jnp.ndarray, target_latents: jnp.ndarray):
    """(loss, reconstruction loss, alignment MSE); `targets` (B, M, p*p*3)
    pixels or (B, M) token ids of the masked patches."""
    if self.target == "pixels":
      recon = losses.reconstruction_loss(
          pred, targets, jnp.ones(pred.shape[:2]), norm_pix=self.norm_pix_loss)
    else:
      recon = optax.softmax_cross_entropy_with_integer_labels(
          pred, targets).mean()
    align = jnp.mean((predicted_latents.astype(jnp.float32)
                      - target_latents.astype(jnp.float32)) ** 2)
    return recon + self.align_weight * align, recon, align

  def __call__(self, images: jnp.ndarray, noise: jnp.ndarray,
               drop_keys: jax.Array | None = None,
               token_targets: jnp.ndarray | None = None) -> CAEOutput:
    keys = [None] * 4 if drop_keys is None else list(jax.vmap(
        lambda k: jax.random.split(k, 4))(drop_keys).swapaxes(0, 1))
    visible, masked, ids_keep, ids_masked, mask = self.mask(images, noise)
    latents = self.encode(visible, keys[0])
    predicted = self.regress(latents[:, 1:], ids_keep, ids_masked, keys[1])
    pred = self.decode(predicted, ids_masked, keys[2])
    target_latents = self.alignment_target(masked, keys[3])
    if self.target == "pixels":
      targets = masking.gather(patches.patchify(
          images.astype(jnp.float32), self.patch_size), ids_masked)
    else:
      if token_targets is None:
        raise ValueError("target='dalle' needs the DALL-E codes of every "
                         "patch: token_targets (B, L)")
      targets = masking.gather(token_targets, ids_masked)
    loss, recon, align = self.loss(pred, targets, predicted, target_latents)
    return CAEOutput(loss=loss, loss_recon=recon, loss_align=align, pred=pred,
                     ids_masked=ids_masked, mask=mask)

  def decode_all_patches(self, images: jnp.ndarray) -> jnp.ndarray:
    """The paper's Fig. 4 check: every patch through the encoder, then
    straight to the decoder, skipping the regressor: (B, L, output_dim).

    The decoder was trained on the regressor's outputs; with alignment these
    lie in the encoder's space, and the reconstruction is recognisable.
    """
    latents = self.encode(self.encoder.embed(images.astype(self.dtype)))
    ids = jnp.broadcast_to(jnp.arange(self.num_patches),
                           (images.shape[0], self.num_patches))
    return self.decode(latents[:, 1:], ids)


def _names(path) -> list[str]:
  return [str(getattr(k, "key", k)) for k in path]


def _block_index(names: list[str]) -> int | None:
  """i for a parameter of the i-th block (0-based) of any stack."""
  for name in names:
    if name.startswith("blocks_"):
      return int(name[len("blocks_"):])
  return None


def official_init(params, rng: jax.Array, weight_init: str):
  """`params` of a freshly initialised CAE, re-drawn where the official code
  initialises differently from our defaults (modeling_cae.py's
  `_init_weights` and the modules' `fix_init_weight`).

  'xavier' (the official default): the patch embedding (a convolution
  there) and the cls token truncated normal (std 0.02, cut at one std); the
  linear layers keep xavier-uniform. 'beit' (`--fix_init_weight`): every
  linear layer truncated normal too, and the output projections of block i
  (attention 'proj', MLP 'fc2') divided by sqrt(2 (i + 1)) in each stack.
  Biases, LayerNorms and layer scales keep their init either way.
  """
  if weight_init not in WEIGHT_INITS:
    raise ValueError(f"weight_init={weight_init!r}; use one of "
                     f"{WEIGHT_INITS}")
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  new = []
  for index, (path, value) in enumerate(leaves):
    names = _names(path)
    key = jax.random.fold_in(rng, index)
    if names[:2] in (["encoder", "patch_embed"], ["encoder", "cls_token"]):
      if names[-1] != "bias":
        value = trunc_normal(key, value.shape, value.dtype)
    elif weight_init == "beit" and names[-1] == "kernel":
      value = trunc_normal(key, value.shape, value.dtype)
      block = _block_index(names)
      if block is not None and names[-2] in ("proj", "fc2"):
        value = value / np.sqrt(2.0 * (block + 1))
    new.append(value)
  return jax.tree_util.tree_unflatten(treedef, new)
