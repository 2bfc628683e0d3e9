"""The masked autoencoder (MAE §3), read top to bottom:
`random_masking` -> `encode` -> `decode` -> `loss`."""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from mae_jax import losses
from mae_jax import masking
from mae_jax import patches
from mae_jax.models import vit

Dtype = Any


@flax.struct.dataclass
class MAEOutput:
  loss: jnp.ndarray  # () float32, mean over removed patches
  pred: jnp.ndarray  # (B, L, p*p*3) float32, in the loss's target space
  mask: jnp.ndarray  # (B, L) 1 = removed


class MAEDecoder(nn.Module):
  """Lightweight decoder over the full set of tokens (visible + mask)."""
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float = 1e-6
  remat: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, latent: jnp.ndarray, ids_restore: jnp.ndarray | None,
               grid_hw: tuple[int, int]) -> jnp.ndarray:
    """(B, 1 + L_keep, D_enc) -> (B, L, p*p*3) per-patch pixel predictions.

    `ids_restore=None`: the latent already holds all L patches in image
    order (an encoder that saw mask tokens), so none are added here.
    """
    x = vit.Dense(self.width, self.dtype, name="embed")(latent)
    if ids_restore is None:
      tokens = x[:, 1:]
    else:
      b, n_visible = x.shape[0], x.shape[1] - 1
      mask_token = self.param("mask_token", vit.token_init,
                              (1, 1, self.width))
      mask_tokens = jnp.broadcast_to(
          mask_token.astype(x.dtype),
          (b, ids_restore.shape[1] - n_visible, self.width))
      tokens = masking.unshuffle(
          jnp.concatenate([x[:, 1:], mask_tokens], axis=1), ids_restore)
    tokens = tokens + vit.sincos_pos_embed_2d(self.width, *grid_hw).astype(
        x.dtype)
    x = jnp.concatenate([x[:, :1], tokens], axis=1)  # cls pos-embed is 0
    x = vit.Transformer(self.depth, self.num_heads, self.mlp_dim,
                        self.layer_norm_eps, self.remat, dtype=self.dtype,
                        name="transformer")(x)
    pred = vit.Dense(self.patch_size ** 2 * 3, self.dtype, name="pred")(x)
    return pred[:, 1:].astype(jnp.float32)


class MAE(nn.Module):
  """Masked autoencoder: ViT encoder on visible patches + light decoder.

  `__call__(images, noise=None, drop_keys=None)` masks with `noise` (B, L)
  when given, so a masking can be reproduced exactly; otherwise it draws
  uniform noise from the 'masking' rng stream. `drop_keys` (B,) turns drop
  path on in the encoder. The encoder takes the CAE/BEiT options of
  models/vit.py (all off by default).

  `encoder_mask_tokens=True` is the paper's ablation "w/ [M]" (MAE Table 1c
  and Table 2): the encoder sees every patch, the removed ones replaced by a
  learned mask token (parameter 'mask_token', plus the position embedding),
  and the decoder gets all L tokens as they come. ~3.3x the training FLOPs
  of ViT-L and worse representations: it exists to measure that.
  """
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
  mask_ratio: float = 0.75
  norm_pix_loss: bool = True
  loss_on_all_patches: bool = False
  layer_norm_eps: float = 1e-6
  remat: bool = False
  encoder_mask_tokens: bool = False
  dtype: Dtype = jnp.float32
  drop_path_rate: float = 0.0
  layer_scale_init: float = 0.0
  key_bias: bool = True
  sincos_order: str = "w_first"

  def setup(self):
    if self.encoder_mask_tokens:
      # Outside 'encoder', so that the encoder fine-tunes like any other.
      self.mask_token = self.param("mask_token", vit.token_init,
                                   (1, 1, self.width))
    self.encoder = vit.VisionEncoder(
        self.patch_size, self.width, self.depth, self.num_heads, self.mlp_dim,
        self.layer_norm_eps, self.remat, self.dtype, self.drop_path_rate,
        layer_scale_init=self.layer_scale_init, key_bias=self.key_bias,
        sincos_order=self.sincos_order)
    self.decoder = MAEDecoder(
        self.patch_size, self.decoder_width, self.decoder_depth,
        self.decoder_num_heads, self.decoder_mlp_dim, self.layer_norm_eps,
        self.remat, self.dtype)

  @property
  def num_patches(self) -> int:
    return patches.grid_size(self.image_size, self.patch_size) ** 2

  def encode(self, images: jnp.ndarray, noise: jnp.ndarray,
             drop_keys: jax.Array | None = None):
    """Embeds all patches, drops the masked ones, encodes the visible rest.

    Returns latent (B, 1 + len_keep, D), mask (B, L), ids_restore (B, L);
    with `encoder_mask_tokens`, latent (B, 1 + L, D) and ids_restore None.
    """
    tokens = self.encoder.embed(images.astype(self.dtype))  # (B, L, D)
    len_keep = masking.num_kept(tokens.shape[1], self.mask_ratio)
    visible, mask, ids_restore = masking.random_masking(tokens, noise, len_keep)
    if not self.encoder_mask_tokens:
      return self.encoder.transform(visible, drop_keys), mask, ids_restore
    grid = (patches.grid_size(images.shape[1], self.patch_size),
            patches.grid_size(images.shape[2], self.patch_size))
    mask_tokens = self.mask_token + self.encoder.sincos_table(*grid)
    tokens = jnp.where(mask[..., None] > 0, mask_tokens.astype(tokens.dtype),
                       tokens)  # (B, L, D), image order
    return self.encoder.transform(tokens, drop_keys), mask, None

  def decode(self, latent: jnp.ndarray, ids_restore: jnp.ndarray | None,
             grid_hw: tuple[int, int]) -> jnp.ndarray:
    return self.decoder(latent, ids_restore, grid_hw)

  def loss(self, images: jnp.ndarray, pred: jnp.ndarray,
           mask: jnp.ndarray) -> jnp.ndarray:
    target = patches.patchify(images.astype(jnp.float32), self.patch_size)
    return losses.reconstruction_loss(
        pred, target, mask, norm_pix=self.norm_pix_loss,
        on_all_patches=self.loss_on_all_patches)

  def __call__(self, images: jnp.ndarray, noise: jnp.ndarray | None = None,
               drop_keys: jax.Array | None = None) -> MAEOutput:
    b, h, w, _ = images.shape
    grid_hw = (patches.grid_size(h, self.patch_size),
               patches.grid_size(w, self.patch_size))
    if noise is None:
      noise = jax.random.uniform(self.make_rng("masking"),
                                 (b, grid_hw[0] * grid_hw[1]))
    latent, mask, ids_restore = self.encode(images, noise, drop_keys)
    pred = self.decode(latent, ids_restore, grid_hw)
    return MAEOutput(loss=self.loss(images, pred, mask), pred=pred, mask=mask)
