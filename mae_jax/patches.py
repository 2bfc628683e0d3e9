"""Images <-> sequences of flattened patches (models_mae.py `patchify`).

The patch vector is laid out (row, column, channel) inside the patch, which is
the official MAE layout (`einsum('nchpwq->nhwpqc')`), so predictions and
pretrained decoders line up with the PyTorch reference.
"""

import jax.numpy as jnp


def grid_size(image_size: int, patch_size: int) -> int:
  """Patches per side; refuses sizes that would silently drop pixels."""
  if image_size % patch_size:
    raise ValueError(
        f"image_size={image_size} is not divisible by patch_size={patch_size};"
        f" use an image size that is a multiple of {patch_size}")
  return image_size // patch_size


def patchify(images: jnp.ndarray, patch_size: int) -> jnp.ndarray:
  """(B, H, W, C) -> (B, L, p*p*C) with L = (H/p)(W/p), row-major patches."""
  b, h, w, c = images.shape
  p = patch_size
  gh, gw = grid_size(h, p), grid_size(w, p)
  x = images.reshape(b, gh, p, gw, p, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, gh, gw, p, p, C)
  return x.reshape(b, gh * gw, p * p * c)


def unpatchify(patches: jnp.ndarray, patch_size: int, grid_hw: tuple[int, int],
               channels: int = 3) -> jnp.ndarray:
  """(B, L, p*p*C) -> (B, H, W, C); the inverse of `patchify`."""
  b = patches.shape[0]
  p = patch_size
  gh, gw = grid_hw
  x = patches.reshape(b, gh, gw, p, p, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, gh, p, gw, p, C)
  return x.reshape(b, gh * p, gw * p, channels)
