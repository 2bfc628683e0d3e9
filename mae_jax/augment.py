"""Batch augmentations of the MAE fine-tuning recipe, on the device (MAE A.1).

Mixup / CutMix with label smoothing (timm `Mixup`, mode 'batch') and random
erasing (timm `RandomErasing`, mode 'pixel', one box). They are pure jnp
functions with static shapes, run inside the pmapped train step and driven by
PRNG keys.

A run must follow the same trajectory on 1 or on 8 devices. The batch-level
draws (mixup or cutmix, lambda, the box) come from one key that is the same
on every device, and each example is mixed with its neighbour (2i with 2i+1)
rather than with the reversed batch as in timm, whose pairs would change with
the split. Random erasing draws everything from the example's own key.

The reference erases in its per-image transform, so a step calls
`random_erasing` before `mixup_or_cutmix`.
"""

import functools
import math

import jax
import jax.numpy as jnp

ERASE_AREA = (0.02, 1 / 3)  # fraction of the image, per box
ERASE_LOG_RATIO = (math.log(0.3), math.log(1 / 0.3))
ERASE_ATTEMPTS = 10


def smooth_labels(labels: jnp.ndarray, num_classes: int,
                  smoothing: float) -> jnp.ndarray:
  """(b,) int -> (b, C) float32 targets.

  1 - smoothing + smoothing/C on the label, smoothing/C elsewhere.
  """
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return one_hot * (1.0 - smoothing) + smoothing / num_classes


def _neighbour(x: jnp.ndarray) -> jnp.ndarray:
  """Swaps examples 2i and 2i+1 (partner index i XOR 1)."""
  b = x.shape[0]
  return x.reshape(b // 2, 2, *x.shape[1:])[:, ::-1].reshape(x.shape)


def _box_mask(height: int, width: int, top: jnp.ndarray, bottom: jnp.ndarray,
              left: jnp.ndarray, right: jnp.ndarray) -> jnp.ndarray:
  """(H, W) bool, True on rows [top, bottom) and columns [left, right)."""
  rows = jax.lax.broadcasted_iota(jnp.int32, (height, width), 0)
  cols = jax.lax.broadcasted_iota(jnp.int32, (height, width), 1)
  return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


def _cutmix_box(rng: jax.Array, lam: jnp.ndarray, height: int,
                width: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """timm's `rand_bbox` and lambda correction.

  Returns:
    in_box: (H, W) bool, the pixels taken from the partner.
    lam: 1 - box area / image area, the share of the example's own pixels.
  """
  cy_key, cx_key = jax.random.split(rng)
  ratio = jnp.sqrt(1.0 - lam)
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  cy = jax.random.randint(cy_key, (), 0, height)
  cx = jax.random.randint(cx_key, (), 0, width)
  top = jnp.clip(cy - cut_h // 2, 0, height)
  bottom = jnp.clip(cy + cut_h // 2, 0, height)
  left = jnp.clip(cx - cut_w // 2, 0, width)
  right = jnp.clip(cx + cut_w // 2, 0, width)
  in_box = _box_mask(height, width, top, bottom, left, right)
  area = (bottom - top) * (right - left)
  return in_box, 1.0 - area.astype(jnp.float32) / (height * width)


def mixup_or_cutmix(rng: jax.Array, images: jnp.ndarray, labels: jnp.ndarray,
                    num_classes: int, *, mixup_alpha: float,
                    cutmix_alpha: float, switch_prob: float = 0.5,
                    label_smoothing: float = 0.1
                    ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Mixes each example with its neighbour: Mixup or CutMix (MAE Table 9).

  images (b, H, W, C) float, labels (b,) int -> mixed images of the same
  dtype, soft targets (b, C) float32. One lambda (and one box) for the whole
  batch, drawn from `rng`, which must be the same on every device.
  Mixup: x' = lam x + (1 - lam) x_partner, lam ~ Beta(mixup_alpha,
  mixup_alpha). CutMix: a box of the partner pasted in, lam ~
  Beta(cutmix_alpha, cutmix_alpha) then corrected to the share of own
  pixels. With both alphas > 0, CutMix is chosen with `switch_prob`.
  Targets: lam smooth(y) + (1 - lam) smooth(y_partner). The partner of
  example 2i is 2i+1 and vice versa; both alphas 0 returns the images as
  they are with smoothed one-hot targets.
  """
  if mixup_alpha < 0 or cutmix_alpha < 0:
    raise ValueError(f"mixup_alpha={mixup_alpha} and cutmix_alpha="
                     f"{cutmix_alpha} must be >= 0 (0 turns one off)")
  targets = smooth_labels(labels, num_classes, label_smoothing)
  if mixup_alpha == 0 and cutmix_alpha == 0:
    return images, targets
  b, height, width = images.shape[:3]
  if b % 2:
    raise ValueError(
        f"mixup/cutmix mixes example 2i with 2i+1, so the per-device batch "
        f"must be even; got {b}. Use a global batch_size that is an even "
        f"multiple of the device count.")

  switch_key, mixup_key, cutmix_key, box_key = jax.random.split(rng, 4)
  if mixup_alpha > 0:
    lam_mixup = jax.random.beta(mixup_key, mixup_alpha, mixup_alpha)
  if cutmix_alpha > 0:
    lam_drawn = jax.random.beta(cutmix_key, cutmix_alpha, cutmix_alpha)
    in_box, lam_cutmix = _cutmix_box(box_key, lam_drawn, height, width)
  # One weight map of the example's own pixels covers both modes: lam
  # everywhere for mixup, 1 outside and 0 inside the box for cutmix, where
  # 1 * x + 0 * x_partner copies pixels exactly.
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(switch_key) < switch_prob
    own = jnp.where(use_cutmix, ~in_box, lam_mixup)  # (H, W)
    lam = jnp.where(use_cutmix, lam_cutmix, lam_mixup)
  elif cutmix_alpha > 0:
    own, lam = (~in_box).astype(jnp.float32), lam_cutmix
  else:
    own, lam = jnp.broadcast_to(lam_mixup, (height, width)), lam_mixup

  own = own.astype(jnp.float32)[..., None]  # (H, W, 1)
  x = images.astype(jnp.float32)
  mixed = own * x + (1.0 - own) * _neighbour(x)
  targets = lam * targets + (1.0 - lam) * _neighbour(targets)
  return mixed.astype(images.dtype), targets


def _erase_one(key: jax.Array, image: jnp.ndarray,
               prob: float) -> jnp.ndarray:
  """timm's `RandomErasing._erase` on one (H, W, C) image.

  The 10 attempts are drawn at once and the first that fits is kept.
  """
  height, width = image.shape[:2]
  apply_key, area_key, aspect_key, top_key, left_key, noise_key = (
      jax.random.split(key, 6))
  target_area = jax.random.uniform(
      area_key, (ERASE_ATTEMPTS,), minval=ERASE_AREA[0],
      maxval=ERASE_AREA[1]) * (height * width)
  aspect = jnp.exp(jax.random.uniform(
      aspect_key, (ERASE_ATTEMPTS,), minval=ERASE_LOG_RATIO[0],
      maxval=ERASE_LOG_RATIO[1]))
  # jnp.round rounds half to even, like Python's round in timm.
  box_h = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
  box_w = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
  fits = (box_h < height) & (box_w < width)
  first = jnp.argmax(fits)  # timm keeps the first attempt that fits
  box_h, box_w = box_h[first], box_w[first]
  top = jax.random.randint(top_key, (), 0, height - box_h + 1)
  left = jax.random.randint(left_key, (), 0, width - box_w + 1)
  erase = (jax.random.uniform(apply_key) < prob) & fits.any()
  in_box = erase & _box_mask(height, width, top, top + box_h, left,
                             left + box_w)
  noise = jax.random.normal(noise_key, image.shape, image.dtype)
  return jnp.where(in_box[..., None], noise, image)


def random_erasing(keys: jax.Array, images: jnp.ndarray,
                   prob: float) -> jnp.ndarray:
  """Erases one random rectangle per image with probability `prob`.

  keys: (b,) one PRNG key per example; images (b, H, W, C) already
  normalised. Each image independently gets, with probability prob, one
  rectangle replaced by per-pixel N(0, 1) noise: area 2%-33% of the image,
  log aspect ratio uniform in [log 0.3, log 1/0.3], the first of 10
  candidates that fits (none fitting leaves the image as it is).
  """
  if keys.shape[0] != images.shape[0]:
    raise ValueError(f"random_erasing needs one key per image; got "
                     f"{keys.shape[0]} keys for {images.shape[0]} images")
  return jax.vmap(_erase_one, in_axes=(0, 0, None))(keys, images, prob)


def mixup_or_cutmix_in_groups(rng: jax.Array, images: jnp.ndarray,
                              labels: jnp.ndarray, example_ids: jnp.ndarray,
                              num_classes: int, *, group_size: int,
                              **mix_options) -> tuple[jnp.ndarray, jnp.ndarray]:
  """`mixup_or_cutmix` with one draw per group of `group_size` examples.

  The reference draws once per GPU batch (32 images in the official
  fine-tuning), so a large global batch sees many lambdas and boxes per
  step. Here group g holds the examples with global ids [g*G, (g+1)*G) and
  draws from `rng` folded with g: the same groups and draws whatever the
  device count, provided each device's batch is whole groups (consecutive
  ids, `group_size` dividing it).
  """
  b = images.shape[0]
  if b % group_size or group_size % 2:
    raise ValueError(
        f"mixup/cutmix draws once per group of {group_size} examples, which "
        f"must be even and divide the per-device batch ({b}); set "
        "--config.augment.mix_group_size to an even divisor of it")
  groups = b // group_size
  group_keys = jax.vmap(lambda g: jax.random.fold_in(rng, g))(
      example_ids[::group_size] // group_size)
  mix = functools.partial(mixup_or_cutmix, num_classes=num_classes,
                          **mix_options)
  mixed, targets = jax.vmap(mix)(
      group_keys, images.reshape((groups, group_size) + images.shape[1:]),
      labels.reshape(groups, group_size))
  return mixed.reshape(images.shape), targets.reshape(b, num_classes)
