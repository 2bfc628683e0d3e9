"""Reconstruction figures: masked input | reconstruction | reconstruction
with the visible patches pasted | original, one row per image."""

import jax.numpy as jnp
import numpy as np
from etils import epath
from PIL import Image

from mae_jax import losses
from mae_jax import patches
from mae_jax.data import transforms

GAP = 2  # white pixels between panels


def prediction_to_pixels(pred: np.ndarray, images: np.ndarray, patch_size: int,
                         norm_pix: bool) -> np.ndarray:
  """Decoder output -> normalised-image patches.

  A norm-pix model predicts standardised patches; they are shown with each
  patch's own mean and std taken from the original image (the usual way to
  display them: the figure borrows those two numbers per patch).
  """
  if not norm_pix:
    return pred
  target = np.asarray(patches.patchify(jnp.asarray(images), patch_size))
  mean = target.mean(axis=-1, keepdims=True)
  std = np.sqrt(target.var(axis=-1, keepdims=True, ddof=1) +
                losses.NORM_PIX_EPS)
  return pred * std + mean


def reconstruction_figure(images: np.ndarray, pred: np.ndarray,
                          mask: np.ndarray, patch_size: int,
                          norm_pix: bool) -> np.ndarray:
  """(B, H, W, 3) normalised images + model output -> one uint8 figure."""
  images = np.asarray(images, np.float32)
  b, h, w, _ = images.shape
  grid_hw = (h // patch_size, w // patch_size)
  pixels = prediction_to_pixels(np.asarray(pred, np.float32), images,
                                patch_size, norm_pix)
  recon = np.asarray(patches.unpatchify(jnp.asarray(pixels), patch_size,
                                        grid_hw))
  mask_pixels = np.asarray(patches.unpatchify(
      jnp.repeat(jnp.asarray(mask, jnp.float32)[..., None],
                 patch_size ** 2 * 3, axis=-1), patch_size, grid_hw))
  masked = images * (1 - mask_pixels)
  pasted = masked + recon * mask_pixels
  panels = [masked, recon, pasted, images]
  figure = np.ones((b * (h + GAP) - GAP, 4 * (w + GAP) - GAP, 3), np.float32)
  for col, panel in enumerate(panels):
    # A diverging model predicts inf/nan: show it as black, not as an error.
    shown = np.nan_to_num(transforms.denormalize(panel), nan=0.0)
    for row in range(b):
      top, left = row * (h + GAP), col * (w + GAP)
      figure[top:top + h, left:left + w] = shown[row]
  return np.round(figure * 255).astype(np.uint8)


def save_png(figure: np.ndarray, path: str, image_size: int,
             min_panel: int = 128):
  """Writes the figure, upscaled (nearest) so each panel is >= min_panel px."""
  scale = max(1, -(-min_panel // image_size))
  image = Image.fromarray(figure)
  if scale > 1:
    image = image.resize((figure.shape[1] * scale, figure.shape[0] * scale),
                         Image.NEAREST)
  with epath.Path(path).open("wb") as f:
    image.save(f, format="PNG")
