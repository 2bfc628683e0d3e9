"""RandAugment (timm's rand-m9-mstd0.5-inc1): ops, magnitudes, determinism."""

import random

import numpy as np
import pytest
from PIL import Image

from mae_jax.data import randaugment

# Ops whose magnitude 0 means "no change" (zero angle/shear/shift, factor 1,
# threshold 256, add 0). The others take no magnitude, or, like
# PosterizeIncreasing, still act at 0 (keeps 4 bits).
IDENTITY_AT_ZERO = ["Rotate", "ShearX", "ShearY", "TranslateXRel",
                    "TranslateYRel", "SolarizeIncreasing", "SolarizeAdd",
                    "ColorIncreasing", "ContrastIncreasing",
                    "BrightnessIncreasing", "SharpnessIncreasing"]


def _image(height=32, width=32, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3),
                                              dtype=np.uint8)


def _all_values():
  """A 16x16 image in which every channel holds each of 0..255 once."""
  values = np.arange(256, dtype=np.uint8).reshape(16, 16)
  return np.stack([values] * 3, axis=-1)


def test_op_set_is_timms_increasing_set():
  assert list(randaugment.OPS) == [
      "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
      "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing",
      "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
      "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]


def test_output_is_uint8_with_the_input_shape():
  image = _image(24, 40)
  for seed in range(10):
    out = randaugment.rand_augment(image, np.random.default_rng(seed),
                                   magnitude=10, prob=1.0)
    assert out.dtype == np.uint8 and out.shape == (24, 40, 3)


def test_same_rng_state_gives_same_output_whatever_the_global_state():
  image = _image()
  for seed in range(10):
    outputs = []
    for global_seed in (0, 1):
      random.seed(global_seed)
      np.random.seed(global_seed)
      outputs.append(randaugment.rand_augment(image,
                                              np.random.default_rng(seed)))
    first, second = outputs
    np.testing.assert_array_equal(first, second)


def test_different_seeds_give_different_outputs():
  image = _image()
  outputs = {randaugment.rand_augment(image, np.random.default_rng(s)).tobytes()
             for s in range(10)}
  assert len(outputs) >= 6


def test_prob_zero_leaves_the_image_unchanged():
  image = _image()
  for seed in range(10):
    out = randaugment.rand_augment(image, np.random.default_rng(seed),
                                   magnitude=10, prob=0.0)
    np.testing.assert_array_equal(out, image)


def test_each_op_is_applied_with_probability_prob():
  image = _image()
  unchanged = np.mean([np.array_equal(image, randaugment.rand_augment(
      image, np.random.default_rng(s), prob=0.2)) for s in range(200)])
  # Both of 2 ops skipped: 0.8**2 = 0.64 (AutoContrast is a no-op here too).
  assert 0.5 < unchanged < 0.8


@pytest.mark.parametrize("name", IDENTITY_AT_ZERO)
def test_magnitude_zero_is_the_identity(name):
  image = _image()
  for seed in range(4):  # both random signs
    out = randaugment.apply_op(image, name, 0.0, np.random.default_rng(seed))
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("name", IDENTITY_AT_ZERO)
def test_magnitude_nine_changes_the_image(name):
  image = _image()
  out = randaugment.apply_op(image, name, 9.0, np.random.default_rng(0))
  assert not np.array_equal(out, image)


def test_invert():
  image = _image()
  out = randaugment.apply_op(image, "Invert", 9.0, np.random.default_rng(0))
  np.testing.assert_array_equal(out, 255 - image)


@pytest.mark.parametrize("magnitude, threshold", [(5, 128), (9, 26), (10, 0)])
def test_solarize_inverts_pixels_at_or_above_256_minus_level(magnitude,
                                                             threshold):
  image = _all_values()
  out = randaugment.apply_op(image, "SolarizeIncreasing", magnitude,
                             np.random.default_rng(0))
  np.testing.assert_array_equal(
      out, np.where(image >= threshold, 255 - image, image))


@pytest.mark.parametrize("magnitude, bits", [(0, 4), (5, 2), (9, 1), (10, 0)])
def test_posterize_keeps_fewer_bits_as_magnitude_grows(magnitude, bits):
  image = _all_values()
  out = randaugment.apply_op(image, "PosterizeIncreasing", magnitude,
                             np.random.default_rng(0))
  np.testing.assert_array_equal(out, image & (0xFF << (8 - bits) & 0xFF))


def test_solarize_add_adds_110_below_128_at_full_magnitude():
  image = _all_values().astype(np.int64)
  out = randaugment.apply_op(image.astype(np.uint8), "SolarizeAdd", 10.0,
                             np.random.default_rng(0))
  np.testing.assert_array_equal(
      out, np.where(image < 128, np.minimum(image + 110, 255), image))


def test_brightness_factor_is_one_plus_or_minus_point_nine():
  image = _image()
  factors = set()
  for seed in range(8):
    out = randaugment.apply_op(image, "BrightnessIncreasing", 10.0,
                               np.random.default_rng(seed)).astype(np.int64)
    for factor in (0.1, 1.9):
      expected = np.clip(image * factor, 0, 255)
      if np.abs(out - expected).max() <= 1:
        factors.add(factor)
        break
    else:
      pytest.fail(f"seed {seed}: brightness is not scaled by 0.1 or 1.9")
  assert factors == {0.1, 1.9}


@pytest.mark.parametrize("name, axis", [("TranslateXRel", 1),
                                        ("TranslateYRel", 0)])
def test_translate_shifts_by_045_of_the_side_and_fills_with_mean(name, axis):
  image = _image(20, 40)  # 0.45 * side = 9 rows or 18 columns at magnitude 10
  shift = (9, 18)[axis]
  keep = image.shape[axis] - shift
  def shifted(src, dst):
    out = np.full_like(image, randaugment.FILL)
    np.moveaxis(out, axis, 0)[dst] = np.moveaxis(image, axis, 0)[src]
    return out
  candidates = [shifted(slice(shift, None), slice(None, keep)),
                shifted(slice(None, keep), slice(shift, None))]
  seen = set()
  for seed in range(8):
    out = randaugment.apply_op(image, name, 10.0, np.random.default_rng(seed))
    matches = [np.array_equal(out, c) for c in candidates]
    assert any(matches), f"seed {seed}: not a {shift}-pixel shift"
    seen.add(matches.index(True))
  assert seen == {0, 1}


def _rotated(img, sign):
  return img.rotate(sign * 30.0, resample=Image.BICUBIC,
                    fillcolor=randaugment.FILL)


def _sheared(img, sign, axis):
  matrix = (1, sign * 0.3, 0, 0, 1, 0) if axis == "x" else (
      1, 0, 0, sign * 0.3, 1, 0)
  return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BICUBIC,
                       fillcolor=randaugment.FILL)


@pytest.mark.parametrize("name, expected", [
    ("Rotate", _rotated),
    ("ShearX", lambda img, sign: _sheared(img, sign, "x")),
    ("ShearY", lambda img, sign: _sheared(img, sign, "y"))])
def test_full_magnitude_is_30_degrees_or_shear_03_with_random_sign(name,
                                                                   expected):
  image = _image()
  candidates = [np.asarray(expected(Image.fromarray(image), sign))
                for sign in (-1, 1)]
  seen = set()
  for seed in range(8):
    out = randaugment.apply_op(image, name, 10.0, np.random.default_rng(seed))
    matches = [np.array_equal(out, c) for c in candidates]
    assert any(matches), f"seed {seed}: {name} is not at +/- full strength"
    seen.add(matches.index(True))
  assert seen == {0, 1}


def test_rotate_fills_corners_with_imagenet_mean():
  image = _image()
  for seed in range(4):
    out = randaugment.apply_op(image, "Rotate", 10.0,
                               np.random.default_rng(seed))
    for corner in (out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]):
      np.testing.assert_array_equal(corner, (124, 116, 104))


def test_sampled_magnitude_is_clipped_to_0_10():
  rng = np.random.default_rng(0)
  samples = [randaugment.sample_magnitude(rng, 9.0, 5.0) for _ in range(1000)]
  assert min(samples) == 0.0 and max(samples) == 10.0
  assert randaugment.sample_magnitude(rng, 9.0, 0.0) == 9.0
  assert randaugment.sample_magnitude(rng, 12.0, 0.0) == 10.0


def test_magnitude_above_ten_acts_as_ten():
  image = _image()
  for seed in range(10):
    np.testing.assert_array_equal(
        *[randaugment.rand_augment(image, np.random.default_rng(seed),
                                   magnitude=m, magnitude_std=0.0, prob=1.0)
          for m in (10.0, 15.0)])


def test_magnitude_noise_reaches_the_ops():
  # At magnitude 0, 11 of the 15 ops are the identity; noise of std 0.5
  # pushes the magnitude above 0 half of the time, so more images change.
  image = _image()
  def changed_fraction(magnitude_std):
    return np.mean([not np.array_equal(image, randaugment.rand_augment(
        image, np.random.default_rng(s), num_ops=1, magnitude=0.0,
        magnitude_std=magnitude_std, prob=1.0)) for s in range(200)])
  assert changed_fraction(0.0) < 0.35 < 0.45 < changed_fraction(0.5)


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.float32),
                                 np.zeros((8, 8), np.uint8)])
def test_rejects_images_that_are_not_uint8_rgb(bad):
  with pytest.raises(ValueError, match="uint8"):
    randaugment.rand_augment(bad, np.random.default_rng(0))
