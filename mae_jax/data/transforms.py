"""Per-image augmentation on the host and normalisation on the device.

Crop boxes are drawn as the reference code draws them, the box is cut out and
then resized with PIL (torchvision's `F.resized_crop` on a PIL image), so that
pixels outside the box never leak into the crop through the filter. Images
leave the host as uint8 (4x less to copy than float32) and are normalised
inside the compiled step.
"""

import math
from typing import Callable

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (top, left, height, width) of a crop, torchvision's order.
Box = tuple[int, int, int, int]


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


def torchvision_box(height: int, width: int, rng: np.random.Generator,
                    scale: tuple[float, float],
                    ratio: tuple[float, float]) -> Box:
  """torchvision's `RandomResizedCrop.get_params` (timm's and BEiT's too).

  Ten tries to fit a crop of `scale` x area and log-uniform aspect `ratio`;
  otherwise the central crop with the aspect ratio clamped to `ratio`.
  """
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
      return top, left, crop_h, crop_w
  in_ratio = width / height
  if in_ratio < min(ratio):
    crop_w, crop_h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    crop_w, crop_h = int(round(height * max(ratio))), height
  else:
    crop_w, crop_h = width, height
  return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def clamped_box(height: int, width: int, rng: np.random.Generator,
                scale: tuple[float, float], ratio: tuple[float, float]) -> Box:
  """The official MAE linear probe's `util/crop.py` RandomResizedCrop.

  One draw of area and log-uniform aspect ratio, the sides clamped to the
  image, no retries and no central fallback (it follows BYOL's TPU code, see
  that file). Sides are at least one pixel, where the reference would fail on
  an image of a few pixels.
  """
  area = height * width
  target_area = area * rng.uniform(*scale)
  aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
  crop_w = max(1, min(width, int(round(math.sqrt(target_area * aspect)))))
  crop_h = max(1, min(height, int(round(math.sqrt(target_area / aspect)))))
  top = int(rng.integers(0, height - crop_h + 1))
  left = int(rng.integers(0, width - crop_w + 1))
  return top, left, crop_h, crop_w


# data.crop_sampler -> how the training crop box is drawn.
CROP_SAMPLERS: dict[str, Callable[..., Box]] = {
    "torchvision": torchvision_box,
    "clamped": clamped_box,
}


def crop_sampler(name: str) -> Callable[..., Box]:
  if name not in CROP_SAMPLERS:
    raise ValueError(f"data.crop_sampler={name!r}; use one of "
                     f"{', '.join(map(repr, CROP_SAMPLERS))}")
  return CROP_SAMPLERS[name]


def resized_crop(image: np.ndarray, box: Box, size: int,
                 resample: int = Image.BICUBIC) -> np.ndarray:
  """The `box` of an (H, W, 3) image, cut out, then resized to size x size."""
  top, left, height, width = box
  crop = Image.fromarray(image[top:top + height, left:left + width])
  return np.asarray(crop.resize((size, size), resample))


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale: tuple[float, float], ratio: tuple[float, float],
                        sampler: str = "torchvision") -> np.ndarray:
  """RandomResizedCrop(size, scale, ratio, bicubic) with the named sampler."""
  box = crop_sampler(sampler)(*image.shape[:2], rng, scale, ratio)
  return resized_crop(image, box, size)


def random_horizontal_flip(image: np.ndarray,
                           rng: np.random.Generator) -> np.ndarray:
  return image[:, ::-1] if rng.random() < 0.5 else image


def two_view_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                  second_size: int, scale: tuple[float, float],
                  ratio: tuple[float, float], flip: bool,
                  sampler: Callable[..., Box] = torchvision_box
                  ) -> tuple[np.ndarray, np.ndarray]:
  """CAE's augmentation: one crop box, resized for the encoder and again for
  the DALL-E tokenizer, so that both see the same pixels.

  As Atten4Vis/CAE `furnace/datasets.py` (DataAugmentationForCAE) and
  `furnace/transforms.py` (BEiT's RandomResizedCropAndInterpolationWithTwoPic)
  do it: a random horizontal flip of the whole image first, then one box
  (torchvision's sampler there), resized bicubically to `size` and with
  LANCZOS to `second_size`.
  """
  if flip:
    image = random_horizontal_flip(image, rng)
  box = sampler(*image.shape[:2], rng, scale, ratio)
  return (resized_crop(image, box, size, Image.BICUBIC),
          resized_crop(image, box, second_size, Image.LANCZOS))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The evaluation transform of the official MAE (`util/datasets.py`
  build_transform): resize the short side to size / crop_pct (bicubic), then
  take the central size x size, where crop_pct is 224/256 up to 224 pixels
  (256 -> 224) and 1 above (resize to the size, then crop the centre).

  Sizes are rounded as torchvision's Resize and CenterCrop round them.
  """
  crop_pct = 224 / 256 if size <= 224 else 1.0
  short = int(size / crop_pct)
  height, width = image.shape[:2]
  if width <= height:
    new_w, new_h = short, int(short * height / width)
  else:
    new_w, new_h = int(short * width / height), short
  resized = np.asarray(Image.fromarray(image).resize((new_w, new_h),
                                                     Image.BICUBIC))
  top = int(round((new_h - size) / 2.0))
  left = int(round((new_w - size) / 2.0))
  return resized[top:top + size, left:left + size]
