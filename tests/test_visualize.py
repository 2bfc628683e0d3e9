import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from mae_jax import checkpointing
from mae_jax import convert
from mae_jax import losses
from mae_jax import models
from mae_jax import patches
from mae_jax import tasks
from mae_jax import train
from mae_jax import visualize
from mae_jax.data import transforms
from testing_utils import tiny_cae_config


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


def test_upscale_makes_every_panel_at_least_min_panel_wide():
  figure = np.zeros((18, 38, 3), np.uint8)  # 2 rows of 8x8 panels
  assert visualize.upscale(figure, image_size=8,
                           min_panel=100).shape == (18 * 13, 38 * 13, 3)
  assert visualize.upscale(figure, image_size=224).shape == (18, 38, 3)


def test_save_png_writes_the_figure(tmp_path):
  figure = np.random.RandomState(0).randint(0, 256, (18, 38, 3)).astype(
      np.uint8)
  path = str(tmp_path / "fig.png")
  visualize.save_png(figure, path)
  with Image.open(path) as image:
    np.testing.assert_array_equal(np.asarray(image), figure)


def test_column_titles_are_drawn_above_their_columns():
  figure = np.full((40, 4 * 42 - 2, 3), 100, np.uint8)
  titled = visualize.annotate(figure, columns=("a", "b", "c", "d"))
  top = titled.shape[0] - figure.shape[0]
  np.testing.assert_array_equal(titled[top:], figure)
  header = titled[:top] < 128  # dark text on white
  quarter = figure.shape[1] // 4
  for column in range(4):  # every column has its own title
    assert header[:, column * quarter:(column + 1) * quarter].any(), column
  assert visualize.COLUMNS == ("masked input", "reconstruction",
                               "with visible patches", "original")


def test_figure_matches_model_output_shapes():
  images = _images(b=3, size=16)
  mask = jax.random.bernoulli(jax.random.key(0), 0.75, (3, 16))
  figure = visualize.reconstruction_figure(
      images, np.zeros((3, 16, 48)), mask, 4, norm_pix=True)
  assert figure.shape == (3 * 18 - 2, 4 * 18 - 2, 3)


def test_title_is_drawn_above_the_panels():
  figure = visualize.upscale(np.full((18, 38, 3), 100, np.uint8), 8, 100)
  plain = visualize.annotate(figure)
  titled = visualize.annotate(
      figure, title="a title long enough to be wrapped " * 8)
  top = titled.shape[0] - plain.shape[0]
  assert top > 30  # several lines
  np.testing.assert_array_equal(titled[top:], plain)
  assert (titled[:top] < 128).any()  # dark text on white


def _photo(path, height=40, width=56):
  pixels = np.random.RandomState(0).randint(0, 256, (height, width, 3))
  Image.fromarray(pixels.astype(np.uint8)).save(path)
  return str(path)


def _small_mae(norm_pix_loss):
  config = convert.mae_config(
      image_size=16, patch_size=4, width=32, depth=1, num_heads=2, mlp_dim=64,
      decoder_width=32, decoder_depth=1, decoder_num_heads=2,
      decoder_mlp_dim=64, norm_pix_loss=norm_pix_loss)
  params = jax.jit(models.build(config).init)(
      jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32),
      np.zeros((1, 16), np.float32))["params"]
  return config, params


def test_cli_reconstructs_a_users_image_from_hf_and_our_checkpoints(tmp_path):
  config, params = _small_mae(norm_pix_loss=True)
  convert.save_hf_vitmae(config, params, str(tmp_path / "hf"))
  checkpointing.save_params(str(tmp_path / "ours"), ml_collections.ConfigDict(
      dict(model=config, mode="pretrain")), params)
  image = _photo(tmp_path / "photo.jpg")
  figures = []
  for source in ("hf", "ours"):
    out = tmp_path / f"{source}.png"
    visualize.main([f"--checkpoint={tmp_path / source}", f"--image={image}",
                    "--mask_ratio=0.5", f"--out={out}"])
    with Image.open(out) as figure:
      figures.append(np.asarray(figure))
  np.testing.assert_array_equal(figures[0][-128:], figures[1][-128:])
  # One row of four 16-pixel panels, upscaled 8x, under a title.
  assert figures[0].shape[1] == (4 * 16 + 3 * visualize.GAP) * 8
  assert figures[0].shape[0] > 16 * 8


def test_cli_refuses_a_checkpoint_without_decoder(tmp_path):
  config, params = _small_mae(norm_pix_loss=False)
  checkpointing.save_params(str(tmp_path / "ours"), ml_collections.ConfigDict(
      dict(model=config, mode="pretrain")), {"encoder": params["encoder"]})
  with pytest.raises(ValueError, match="has no decoder"):
    visualize.main([f"--checkpoint={tmp_path / 'ours'}",
                    f"--image={_photo(tmp_path / 'photo.png')}",
                    f"--out={tmp_path / 'fig.png'}"])


def test_a_decoder_of_the_masked_patches_leaves_the_visible_ones_blank():
  images = _images()
  pred = np.ones((2, 4, 48), np.float32)
  mask = np.asarray([[1, 0, 0, 0], [0, 0, 0, 1]], np.float32)
  figure = visualize.reconstruction_figure(images, pred, mask, 4,
                                           norm_pix=False,
                                           visible_predicted=False)
  masked, recon, pasted, _ = _panels(figure, 2, 8)[0]
  np.testing.assert_array_equal(recon[4:, 4:], masked[:4, :4])  # blank
  np.testing.assert_array_equal(recon[:4, :4], pasted[:4, :4])  # predicted


def test_panels_figure_puts_a_column_per_panel():
  images = _images()
  figure = visualize.panels_figure([images, -images])
  assert figure.shape == (2 * 8 + 2, 2 * 8 + 2, 3)
  np.testing.assert_array_equal(figure[:8, :8], _as_uint8(images)[0])


def test_cli_refuses_a_cae_checkpoint(tmp_path):
  config = tiny_cae_config()
  params = tasks.make_task(config, train.AXIS).init_variables(
      jax.random.key(0), False)[0]
  checkpointing.save_params(str(tmp_path / "cae"), config,
                            jax.device_get(params))
  with pytest.raises(ValueError, match="is a CAE checkpoint.*its workdir"):
    visualize.main([f"--checkpoint={tmp_path / 'cae'}",
                    f"--image={_photo(tmp_path / 'photo.png')}",
                    f"--out={tmp_path / 'fig.png'}"])
