"""Per-image transforms: crop samplers, the two-view crop, the evaluation
crop, normalisation."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mae_jax.data import transforms
from tests.image_files import BLUE, GREEN, RED, solid

SCALE, RATIO = (0.2, 1.0), (3 / 4, 4 / 3)


def _random_image(height, width, seed=0):
  return np.random.default_rng(seed).integers(
      0, 256, (height, width, 3), dtype=np.uint8)


def test_random_resized_crop_shape_and_determinism():
  image = _random_image(30, 45)
  crop = lambda seed: transforms.random_resized_crop(
      image, np.random.default_rng(seed), 12, SCALE, RATIO)
  out = crop(7)
  assert out.shape == (12, 12, 3)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, crop(7))
  assert not np.array_equal(out, crop(8))


def test_random_resized_crop_of_full_square_is_a_bicubic_resize():
  image = _random_image(20, 20)
  out = transforms.random_resized_crop(image, np.random.default_rng(1), 12,
                                       (1.0, 1.0), (1.0, 1.0))
  expected = np.asarray(Image.fromarray(image).resize((12, 12), Image.BICUBIC))
  np.testing.assert_array_equal(out, expected)


def test_resized_crop_cuts_the_box_out_before_resizing():
  # torchvision's resized_crop: pixels outside the box never reach the
  # crop, which PIL's resize(box=...) would let in through the filter.
  image = solid(40, 40, RED)
  image[10:30, 10:30] = BLUE
  out = transforms.resized_crop(image, (10, 10, 20, 20), 7)
  np.testing.assert_array_equal(out, solid(7, 7, BLUE))
  leaky = np.asarray(Image.fromarray(image).resize(
      (7, 7), Image.BICUBIC, box=(10, 10, 30, 30)))
  assert not np.array_equal(leaky, out)


@pytest.mark.parametrize("shape", [(4, 200), (200, 4)])
def test_torchvision_sampler_falls_back_to_the_centre(shape):
  # No crop of 20-100% area and aspect 3/4..4/3 fits: the centre is taken.
  image = solid(*shape, BLUE)
  if shape[0] < shape[1]:
    image[:, 90:110] = RED
  else:
    image[90:110, :] = RED
  for seed in range(3):
    out = transforms.random_resized_crop(image, np.random.default_rng(seed), 8,
                                         SCALE, RATIO)
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out, solid(8, 8, RED))


def test_clamped_sampler_clamps_one_draw_instead_of_retrying():
  # Area 100% at aspect 2 never fits a square image: torchvision retries and
  # then takes the central crop of aspect 4/3 at most; the reference's
  # util/crop.py clamps the one draw to the full width at a random height.
  ratio = (2.0, 2.0)
  tops = set()
  for seed in range(20):
    top, left, height, width = transforms.clamped_box(
        100, 100, np.random.default_rng(seed), (1.0, 1.0), ratio)
    assert (left, width, height) == (0, 100, round(100 / np.sqrt(2)))
    tops.add(top)
    assert 0 <= top <= 100 - height
    assert transforms.torchvision_box(
        100, 100, np.random.default_rng(seed), (1.0, 1.0), ratio) == (
            25, 0, 50, 100)
  assert len(tops) > 5  # placed at random, not centred


def test_clamped_sampler_boxes_lie_inside_the_image_with_the_drawn_area():
  areas = []
  for seed in range(200):
    top, left, height, width = transforms.clamped_box(
        60, 90, np.random.default_rng(seed), (0.08, 1.0), RATIO)
    assert 0 <= top and top + height <= 60
    assert 0 <= left and left + width <= 90
    areas.append(height * width / (60 * 90))
  assert 0.05 < min(areas) < 0.2 and max(areas) > 0.7


def test_unknown_crop_sampler_names_the_choices():
  with pytest.raises(ValueError, match="'torchvision', 'clamped'"):
    transforms.random_resized_crop(_random_image(9, 9), np.random.default_rng(),
                                   4, SCALE, RATIO, sampler="timm")


@pytest.mark.parametrize("flip", [True, False])
def test_two_view_crop_flips_first_then_resizes_one_box_twice(flip):
  image = _random_image(40, 60, seed=3)
  for seed in range(6):
    view, second = transforms.two_view_crop(
        image, np.random.default_rng(seed), 16, 8, (0.08, 1.0), RATIO, flip)
    # What CAE's DataAugmentationForCAE does, step by step, with the same
    # draws: the flip's draw first, then the box on the flipped image.
    rng = np.random.default_rng(seed)
    source = image[:, ::-1] if flip and rng.random() < 0.5 else image
    box = transforms.torchvision_box(40, 60, rng, (0.08, 1.0), RATIO)
    np.testing.assert_array_equal(
        view, transforms.resized_crop(source, box, 16, Image.BICUBIC))
    np.testing.assert_array_equal(
        second, transforms.resized_crop(source, box, 8, Image.LANCZOS))
    assert view.dtype == second.dtype == np.uint8
    assert second.shape == (8, 8, 3)


def test_two_view_crop_draws_its_box_with_the_given_sampler():
  image = _random_image(40, 60, seed=4)
  view, _ = transforms.two_view_crop(
      image, np.random.default_rng(1), 16, 8, (0.9, 1.0), RATIO, False,
      sampler=transforms.clamped_box)
  box = transforms.clamped_box(40, 60, np.random.default_rng(1), (0.9, 1.0),
                               RATIO)
  np.testing.assert_array_equal(view, transforms.resized_crop(image, box, 16))


def test_two_view_crop_views_show_the_same_pixels():
  # A smooth image: the small view is the large one, smaller.
  y, x = np.mgrid[0:50, 0:70]
  image = np.stack([x * 3, y * 4, (x + y) * 2], -1).astype(np.uint8)
  view, second = transforms.two_view_crop(
      image, np.random.default_rng(0), 16, 8, (0.08, 1.0), RATIO, True)
  halved = np.asarray(Image.fromarray(view).resize((8, 8), Image.LANCZOS))
  assert np.abs(halved.astype(int) - second).mean() < 4


def _eval_reference(image, size, resize_to, crop_at):
  """PIL resize to `resize_to` (w, h), then the size x size at `crop_at`."""
  resized = np.asarray(Image.fromarray(image).resize(resize_to, Image.BICUBIC))
  top, left = crop_at
  return resized[top:top + size, left:left + size]


def test_center_crop_up_to_224_resizes_by_256_over_224():
  image = _random_image(64, 129)
  # size 16: short side int(16 / 0.875) = 18; long int(18 * 129 / 64) = 36;
  # torchvision's CenterCrop offsets: round(2 / 2) = 1, round(20 / 2) = 10.
  np.testing.assert_array_equal(
      transforms.center_crop(image, 16),
      _eval_reference(image, 16, (36, 18), (1, 10)))
  # The recipe's 224: 256 on the short side.
  image = _random_image(300, 400)
  np.testing.assert_array_equal(
      transforms.center_crop(image, 224),
      _eval_reference(image, 224, (341, 256), (16, 58)))


def test_center_crop_above_224_resizes_to_the_size():
  # crop_pct 1.0: short side to 384, long int(384 * 500 / 375) = 512, then
  # the central 384 (offset round(128 / 2) = 64).
  image = _random_image(375, 500)
  np.testing.assert_array_equal(
      transforms.center_crop(image, 384),
      _eval_reference(image, 384, (512, 384), (0, 64)))
  tall = _random_image(301, 256)  # offset round(45 / 2) = 22 (half to even)
  np.testing.assert_array_equal(
      transforms.center_crop(tall, 256),
      _eval_reference(tall, 256, (256, 301), (22, 0)))


def test_center_crop_takes_the_centre():
  image = solid(64, 128, BLUE)
  image[:, 24:104] = RED
  image[:, 104:] = GREEN
  out = transforms.center_crop(image, 16)
  assert out.shape == (16, 16, 3)
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, solid(16, 16, RED))


def test_center_crop_of_small_image_upsamples():
  out = transforms.center_crop(_random_image(5, 9), 16)
  assert out.shape == (16, 16, 3)


def test_normalize_denormalize_round_trip():
  images = _random_image(6, 7)
  for xp in (np, jnp):
    normalized = transforms.normalize(xp.asarray(images), xp=xp)
    assert normalized.dtype == xp.float32
    back = np.asarray(transforms.denormalize(normalized, xp=xp))
    np.testing.assert_allclose(back * 255, images, atol=1e-3)
  # Mean/std normalisation: the ImageNet mean colour maps to zero.
  mean_colour = np.round(np.asarray(transforms.IMAGENET_MEAN) * 255)
  np.testing.assert_allclose(
      transforms.normalize(mean_colour.astype(np.uint8)), 0, atol=0.01)


def test_random_horizontal_flip_depends_on_the_rng():
  image = _random_image(4, 6)
  outcomes = []
  for seed in range(16):
    out = transforms.random_horizontal_flip(image, np.random.default_rng(seed))
    again = transforms.random_horizontal_flip(image,
                                              np.random.default_rng(seed))
    np.testing.assert_array_equal(out, again)
    flipped = np.array_equal(out, image[:, ::-1])
    assert flipped or np.array_equal(out, image)
    outcomes.append(flipped)
  assert any(outcomes) and not all(outcomes)
