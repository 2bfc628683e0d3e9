"""Per-image augmentation on the host and normalisation on the device.

Crops are computed as torchvision computes them and resized with PIL's
bicubic filter, the reference's pipeline. Images leave the host as uint8
(4x less to copy than float32) and are normalised inside the compiled step.
"""

import math

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_FRACTION = 224 / 256


def normalize(images_uint8, xp=np):
  """uint8 pixels -> ImageNet mean/std normalised float32 (`xp`: np or jnp)."""
  x = images_uint8.astype(xp.float32) / 255.0
  return (x - xp.asarray(IMAGENET_MEAN, xp.float32)) / xp.asarray(
      IMAGENET_STD, xp.float32)


def denormalize(images, xp=np):
  """The inverse of `normalize`, to [0, 1] floats (clipped)."""
  x = images * xp.asarray(IMAGENET_STD, xp.float32) + xp.asarray(
      IMAGENET_MEAN, xp.float32)
  return xp.clip(x, 0.0, 1.0)


def _resize(image: np.ndarray, size: tuple[int, int], box=None) -> np.ndarray:
  """Bicubic resize of (a `box` of) an image to `size` = (width, height)."""
  return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC, box=box))


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale: tuple[float, float],
                        ratio: tuple[float, float]) -> np.ndarray:
  """torchvision's RandomResizedCrop: a crop of random area and aspect ratio.

  Ten tries to fit a crop of `scale` x area and log-uniform aspect `ratio`;
  otherwise the central crop with the aspect ratio clamped to `ratio`.
  """
  height, width = image.shape[:2]
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    crop_w = int(round(math.sqrt(target_area * aspect)))
    crop_h = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_w <= width and 0 < crop_h <= height:
      top = int(rng.integers(0, height - crop_h + 1))
      left = int(rng.integers(0, width - crop_w + 1))
      break
  else:
    in_ratio = width / height
    if in_ratio < min(ratio):
      crop_w, crop_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
      crop_w, crop_h = int(round(height * max(ratio))), height
    else:
      crop_w, crop_h = width, height
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
  return _resize(image, (size, size), box=(left, top, left + crop_w,
                                           top + crop_h))


def random_horizontal_flip(image: np.ndarray,
                           rng: np.random.Generator) -> np.ndarray:
  return image[:, ::-1] if rng.random() < 0.5 else image


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Evaluation transform: resize the short side to size/0.875, crop the centre
  (256 -> 224 at ImageNet resolution)."""
  height, width = image.shape[:2]
  short = int(size / EVAL_CROP_FRACTION)
  scale = short / min(height, width)
  new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
  resized = _resize(image, (new_w, new_h))
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return resized[top:top + size, left:left + size]
