"""RandAugment of the MAE fine-tuning recipe: timm's `rand-m9-mstd0.5-inc1`.

RandAugment (Cubuk et al., 2019) as timm implements it in
`timm/data/auto_augment.py`, which the official MAE fine-tuning script uses
via `create_transform(auto_augment="rand-m9-mstd0.5-inc1",
interpolation="bicubic")`. Per image: pick `num_ops` ops uniformly with
replacement from timm's "increasing" set (`_RAND_INCREASING_TRANSFORMS`); apply
each with probability `prob`, at a magnitude drawn from N(magnitude,
magnitude_std) and clipped to [0, 10]. The magnitude-to-argument mappings
(`LEVEL_TO_ARG` in timm) are in `OPS`. As in timm, the geometric ops fill with
the ImageNet mean in pixels and, because MAE passes
interpolation="bicubic", resample bicubically (timm picks bilinear or bicubic at
random only when interpolation is "random").

The same `rng` state gives the same output: every random choice, including the
random sign of signed arguments, is drawn from `rng`.
"""

from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

# round(255 * IMAGENET_MEAN), timm's `img_mean` hyper-parameter.
FILL = (124, 116, 104)
MAX_MAGNITUDE = 10.0


def _affine(img: Image.Image, matrix) -> Image.Image:
  return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BICUBIC,
                       fillcolor=FILL)


def _rotate(img: Image.Image, degrees: float) -> Image.Image:
  return img.rotate(degrees, resample=Image.BICUBIC, fillcolor=FILL)


def _solarize_add(img: Image.Image, add: int) -> Image.Image:
  """Add `add` to the pixels below 128, saturating at 255."""
  return img.point(lambda v: min(255, v + add) if v < 128 else v)


def _posterize(img: Image.Image, bits: int) -> Image.Image:
  """Keep the `bits` most significant bits; 0 bits gives black, as in the
  Pillow that timm was written against (newer ImageOps.posterize rejects 0)."""
  mask = (0xFF << (8 - bits)) & 0xFF
  return img.point(lambda v: v & mask)


def _enhance(enhancer) -> Callable[[Image.Image, float], Image.Image]:
  return lambda img, factor: enhancer(img).enhance(factor)


def _signed(value: float, rng: np.random.Generator) -> float:
  """`value` with a random sign (timm's `_randomly_negate`)."""
  return -value if rng.random() < 0.5 else value


def _no_args(level, rng):
  return ()


def _enhance_increasing(level, rng):
  # 1 is "no change"; moving towards 0.1 or 1.9 strengthens the op.
  return (max(0.1, 1.0 + _signed(0.9 * level, rng)),)


def _shear(level, rng):
  return (_signed(0.3 * level, rng),)


def _translate_rel(level, rng):
  return (_signed(0.45 * level, rng),)


# name -> (op(image, *args), (level, rng) -> args), level = magnitude / 10.
# Posterize and solarize are the "increasing" variants: stronger with level.
OPS: dict[str, tuple[Callable, Callable]] = {
    "AutoContrast": (ImageOps.autocontrast, _no_args),
    "Equalize": (ImageOps.equalize, _no_args),
    "Invert": (ImageOps.invert, _no_args),
    "Rotate": (_rotate, lambda level, rng: (_signed(30.0 * level, rng),)),
    "PosterizeIncreasing": (_posterize,
                            lambda level, rng: (4 - int(4 * level),)),
    "SolarizeIncreasing": (ImageOps.solarize,
                           lambda level, rng: (256 - int(256 * level),)),
    "SolarizeAdd": (_solarize_add, lambda level, rng: (int(110 * level),)),
    "ColorIncreasing": (_enhance(ImageEnhance.Color), _enhance_increasing),
    "ContrastIncreasing": (_enhance(ImageEnhance.Contrast),
                           _enhance_increasing),
    "BrightnessIncreasing": (_enhance(ImageEnhance.Brightness),
                             _enhance_increasing),
    "SharpnessIncreasing": (_enhance(ImageEnhance.Sharpness),
                            _enhance_increasing),
    "ShearX": (lambda img, s: _affine(img, (1, s, 0, 0, 1, 0)), _shear),
    "ShearY": (lambda img, s: _affine(img, (1, 0, 0, s, 1, 0)), _shear),
    "TranslateXRel": (
        lambda img, t: _affine(img, (1, 0, t * img.width, 0, 1, 0)),
        _translate_rel),
    "TranslateYRel": (
        lambda img, t: _affine(img, (1, 0, 0, 0, 1, t * img.height)),
        _translate_rel),
}


def sample_magnitude(rng: np.random.Generator, magnitude: float,
                     magnitude_std: float) -> float:
  """N(magnitude, magnitude_std) clipped to [0, 10]; `magnitude` if std is 0."""
  if magnitude_std > 0:
    magnitude = rng.normal(magnitude, magnitude_std)
  return float(np.clip(magnitude, 0.0, MAX_MAGNITUDE))


def apply_op(image: np.ndarray, name: str, magnitude: float,
             rng: np.random.Generator) -> np.ndarray:
  """One op of `OPS` at `magnitude` in [0, 10] (signs drawn from `rng`)."""
  op, level_to_args = OPS[name]
  args = level_to_args(magnitude / MAX_MAGNITUDE, rng)
  return np.asarray(op(Image.fromarray(image), *args))


def rand_augment(image: np.ndarray, rng: np.random.Generator, *,
                 num_ops: int = 2, magnitude: float = 9.0,
                 magnitude_std: float = 0.5, prob: float = 0.5) -> np.ndarray:
  """(H, W, 3) uint8 -> (H, W, 3) uint8, all randomness from `rng`."""
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(
        f"rand_augment takes an (H, W, 3) uint8 image, got {image.dtype} "
        f"{image.shape}; convert with np.asarray(pil_image.convert('RGB'))")
  names = list(OPS)
  for index in rng.integers(len(names), size=num_ops):
    if rng.random() < prob:
      image = apply_op(image, names[index],
                       sample_magnitude(rng, magnitude, magnitude_std), rng)
  return image
