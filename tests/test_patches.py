import chex
import jax
import numpy as np

from mae_jax import patches


def reference_patchify(images_nchw, p):
  """The official MAE patchify, in numpy (einsum 'nchpwq->nhwpqc')."""
  n, c, h, w = images_nchw.shape
  x = images_nchw.reshape(n, c, h // p, p, w // p, p)
  x = np.einsum("nchpwq->nhwpqc", x)
  return x.reshape(n, (h // p) * (w // p), p * p * c)


def test_patchify_matches_official_layout():
  images = np.random.RandomState(0).rand(2, 12, 8, 3).astype(np.float32)
  ours = patches.patchify(images, 4)
  theirs = reference_patchify(images.transpose(0, 3, 1, 2), 4)
  np.testing.assert_array_equal(ours, theirs)


def test_unpatchify_inverts_patchify_on_non_square_images():
  images = np.random.RandomState(1).rand(3, 8, 12, 3).astype(np.float32)
  tokens = patches.patchify(images, 4)
  chex.assert_shape(tokens, (3, 6, 48))
  np.testing.assert_array_equal(
      patches.unpatchify(tokens, 4, (2, 3)), images)


def test_patchify_under_jit():
  images = np.ones((1, 8, 8, 3), np.float32)
  chex.assert_shape(jax.jit(patches.patchify, static_argnums=1)(images, 2),
                    (1, 16, 12))


def test_grid_size_rejects_indivisible_image():
  with np.testing.assert_raises_regex(ValueError, "multiple of 16"):
    patches.grid_size(225, 16)
