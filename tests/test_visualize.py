import jax
import numpy as np
from PIL import Image

from mae_jax import losses
from mae_jax import patches
from mae_jax import visualize
from mae_jax.data import transforms


def _images(b=2, size=8, seed=0):
  pixels = np.random.RandomState(seed).randint(0, 256, (b, size, size, 3))
  return transforms.normalize(pixels.astype(np.uint8))


def _panels(figure, b, size):
  step = size + visualize.GAP
  return [[figure[r * step:r * step + size, c * step:c * step + size]
           for c in range(4)] for r in range(b)]


def _as_uint8(images):
  return np.round(transforms.denormalize(images) * 255).astype(np.uint8)


def test_perfect_norm_pix_prediction_reconstructs_the_original():
  images = _images()
  pred = np.asarray(losses.normalize_patches(patches.patchify(images, 4)))
  mask = np.asarray([[1, 0, 0, 1], [0, 1, 1, 0]], np.float32)
  figure = visualize.reconstruction_figure(images, pred, mask, 4,
                                           norm_pix=True)
  assert figure.dtype == np.uint8
  assert figure.shape == (2 * 8 + 2, 4 * 8 + 3 * 2, 3)
  original = _as_uint8(images)
  for row, (masked, recon, pasted, shown) in enumerate(_panels(figure, 2, 8)):
    np.testing.assert_array_equal(shown, original[row])
    np.testing.assert_allclose(recon, original[row], atol=1)
    np.testing.assert_allclose(pasted, original[row], atol=1)
    del masked


def test_masked_panel_hides_removed_patches_and_pasted_keeps_visible_ones():
  images = _images()
  pred = np.zeros((2, 4, 48), np.float32)  # predicts the mean colour
  mask = np.asarray([[1, 0, 0, 0], [0, 0, 0, 1]], np.float32)
  figure = visualize.reconstruction_figure(images, pred, mask, 4,
                                           norm_pix=False)
  original = _as_uint8(images)
  mean_colour = _as_uint8(np.zeros((1, 1, 1, 3), np.float32))[0, 0, 0]
  masked, _, pasted, _ = _panels(figure, 2, 8)[0]
  np.testing.assert_array_equal(masked[:4, :4], np.broadcast_to(
      mean_colour, (4, 4, 3)))  # patch 0 removed
  np.testing.assert_array_equal(masked[4:, 4:], original[0][4:, 4:])
  np.testing.assert_array_equal(pasted[4:, 4:], original[0][4:, 4:])


def test_save_png_upscales_small_images(tmp_path):
  figure = np.zeros((18, 38, 3), np.uint8)  # 2 rows of 8x8 panels
  path = str(tmp_path / "fig.png")
  visualize.save_png(figure, path, image_size=8, min_panel=100)
  with Image.open(path) as image:
    assert image.size == (38 * 13, 18 * 13)
  visualize.save_png(figure, path, image_size=224)
  with Image.open(path) as image:
    assert image.size == (38, 18)


def test_figure_matches_model_output_shapes():
  images = _images(b=3, size=16)
  mask = jax.random.bernoulli(jax.random.key(0), 0.75, (3, 16))
  figure = visualize.reconstruction_figure(
      images, np.zeros((3, 16, 48)), mask, 4, norm_pix=True)
  assert figure.shape == (3 * 18 - 2, 4 * 18 - 2, 3)
