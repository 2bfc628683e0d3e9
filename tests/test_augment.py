import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from mae_jax import augment

NUM_CLASSES = 20
MODES = dict(mixup=dict(mixup_alpha=0.8, cutmix_alpha=0.0),
             cutmix=dict(mixup_alpha=0.0, cutmix_alpha=1.0),
             both=dict(mixup_alpha=0.8, cutmix_alpha=1.0),
             none=dict(mixup_alpha=0.0, cutmix_alpha=0.0))


def _batch(b=8, size=8, seed=0):
  """Gaussian images (no two pixels equal) and distinct labels."""
  images = jax.random.normal(jax.random.key(seed), (b, size, size, 3))
  return images, jnp.arange(b) % NUM_CLASSES


def _neighbour(x):
  return np.asarray(x)[np.arange(len(x)) ^ 1]


def _is_cutmix(images, mixed):
  """Every pixel is copied from the example or from its neighbour."""
  x, partner, mixed = map(np.asarray, (images, _neighbour(images), mixed))
  return bool(np.all((mixed == x) | (mixed == partner)))


def _own_lam(targets, labels):
  """The weight of each example's own label, with smoothing 0."""
  return np.asarray(targets)[np.arange(len(labels)), np.asarray(labels)]


class SmoothLabelsTest(chex.TestCase):

  def test_on_and_off_values(self):
    targets = augment.smooth_labels(jnp.asarray([2, 0]), 4, 0.1)
    chex.assert_type(targets, jnp.float32)
    np.testing.assert_allclose(
        targets, [[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]],
        rtol=1e-6)

  def test_no_smoothing_is_one_hot(self):
    np.testing.assert_array_equal(
        augment.smooth_labels(jnp.asarray([1]), 3, 0.0), [[0, 1, 0]])


class MixupOrCutmixTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*MODES.items())
  def test_target_rows_sum_to_one(self, mode):
    images, labels = _batch()
    fn = functools.partial(augment.mixup_or_cutmix, num_classes=NUM_CLASSES,
                           label_smoothing=0.1, **mode)
    mixed, targets = self.variant(fn)(jax.random.key(3), images, labels)
    chex.assert_shape(mixed, images.shape)
    chex.assert_shape(targets, (8, NUM_CLASSES))
    chex.assert_type(targets, jnp.float32)
    np.testing.assert_allclose(targets.sum(axis=1), np.ones(8), rtol=1e-6)
    self.assertTrue(np.all(targets >= 0.1 / NUM_CLASSES - 1e-7))

  @chex.variants(with_jit=True, without_jit=True)
  def test_mixup_blends_each_example_with_its_neighbour(self):
    images, labels = _batch()
    fn = functools.partial(augment.mixup_or_cutmix, num_classes=NUM_CLASSES,
                           label_smoothing=0.0, **MODES["mixup"])
    mixed, targets = self.variant(fn)(jax.random.key(1), images, labels)
    lam = _own_lam(targets, labels)
    np.testing.assert_allclose(lam, np.full(8, lam[0]))  # one lam per batch
    lam = lam[0]
    self.assertTrue(0.01 < lam < 0.99, lam)
    rows = np.arange(8)
    np.testing.assert_allclose(
        np.asarray(targets)[rows, _neighbour(labels)], np.full(8, 1 - lam),
        rtol=1e-6)
    self.assertEqual(int(np.count_nonzero(targets)), 16)
    np.testing.assert_allclose(
        mixed, lam * np.asarray(images) + (1 - lam) * _neighbour(images),
        rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_cutmix_pastes_a_neighbour_box_and_lam_is_own_share(self):
    images, labels = _batch(size=16)
    fn = functools.partial(augment.mixup_or_cutmix, num_classes=NUM_CLASSES,
                           label_smoothing=0.0, **MODES["cutmix"])
    mixed, targets = self.variant(fn)(jax.random.key(0), images, labels)
    mixed, x, partner = map(np.asarray, (mixed, images, _neighbour(images)))
    own = mixed == x
    pasted = mixed == partner
    np.testing.assert_array_equal(own | pasted, True)
    # One box for the whole batch and all channels.
    box = pasted[0, :, :, 0]
    np.testing.assert_array_equal(pasted, np.broadcast_to(
        box[None, :, :, None], pasted.shape))
    rows, cols = np.nonzero(box)
    self.assertGreater(len(rows), 0)
    self.assertEqual(len(rows),
                     (np.ptp(rows) + 1) * (np.ptp(cols) + 1))  # a rectangle
    lam = _own_lam(targets, labels)
    np.testing.assert_allclose(lam, np.full(8, 1 - box.mean()), rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(targets)[np.arange(8), _neighbour(labels)], box.mean(),
        rtol=1e-6)

  @parameterized.parameters(0.0, 0.19, 0.75, 0.9, 0.99, 1.0)
  def test_cutmix_box_is_timm_rand_bbox(self, lam):
    size = 16
    cut = int(size * np.sqrt(1 - lam))
    for seed in range(20):
      in_box, corrected = augment._cutmix_box(jax.random.key(seed),
                                              jnp.float32(lam), size, size)
      in_box = np.asarray(in_box)
      # Some centre (cy, cx) gives exactly this box, clipped to the image.
      candidates = [
          (cy, cx) for cy in range(size) for cx in range(size)
          if np.array_equal(in_box, self._timm_box(size, cut, cy, cx))]
      self.assertNotEmpty(candidates, f"seed={seed}")
      self.assertAlmostEqual(float(corrected), 1 - in_box.mean(), places=6)

  @staticmethod
  def _timm_box(size, cut, cy, cx):
    yl, yh = np.clip([cy - cut // 2, cy + cut // 2], 0, size)
    xl, xh = np.clip([cx - cut // 2, cx + cut // 2], 0, size)
    box = np.zeros((size, size), bool)
    box[yl:yh, xl:xh] = True
    return box

  @parameterized.named_parameters(
      ("mixup_only", MODES["mixup"], 0.5, False),
      ("cutmix_only", MODES["cutmix"], 0.5, True),
      ("both_never_switch", MODES["both"], 0.0, False),
      ("both_always_switch", MODES["both"], 1.0, True))
  def test_mode_choice(self, mode, switch_prob, cutmix):
    images, labels = _batch()
    fn = jax.jit(functools.partial(
        augment.mixup_or_cutmix, num_classes=NUM_CLASSES,
        switch_prob=switch_prob, **mode))
    for seed in range(8):
      mixed, _ = fn(jax.random.key(seed), images, labels)
      self.assertEqual(_is_cutmix(images, mixed), cutmix, f"seed={seed}")

  def test_both_modes_switch_with_probability(self):
    images, labels = _batch()
    fn = jax.jit(functools.partial(
        augment.mixup_or_cutmix, num_classes=NUM_CLASSES, switch_prob=0.25,
        **MODES["both"]))
    cutmix = [_is_cutmix(images, fn(jax.random.key(s), images, labels)[0])
              for s in range(200)]
    self.assertBetween(np.mean(cutmix), 0.15, 0.35)

  def test_no_alpha_returns_images_unchanged(self):
    images, labels = _batch(b=3)  # odd is fine when nothing is mixed
    mixed, targets = augment.mixup_or_cutmix(
        jax.random.key(0), images, labels, NUM_CLASSES, label_smoothing=0.1,
        **MODES["none"])
    np.testing.assert_array_equal(mixed, images)
    np.testing.assert_array_equal(
        targets, augment.smooth_labels(labels, NUM_CLASSES, 0.1))

  def test_odd_per_device_batch_raises(self):
    images, labels = _batch(b=8)
    fn = jax.pmap(functools.partial(
        augment.mixup_or_cutmix, num_classes=NUM_CLASSES, **MODES["both"]),
                  in_axes=(None, 0, 0))
    with self.assertRaisesRegex(ValueError, "per-device batch must be even"):
      fn(jax.random.key(0), images.reshape(8, 1, 8, 8, 3),
         labels.reshape(8, 1))
    with self.assertRaisesRegex(ValueError, "must be even; got 7"):
      augment.mixup_or_cutmix(jax.random.key(0), images[:7], labels[:7],
                              NUM_CLASSES, **MODES["mixup"])

  def test_negative_alpha_raises(self):
    images, labels = _batch()
    with self.assertRaisesRegex(ValueError, "must be >= 0"):
      augment.mixup_or_cutmix(jax.random.key(0), images, labels, NUM_CLASSES,
                              mixup_alpha=-1.0, cutmix_alpha=0.0)

  def test_keeps_image_dtype(self):
    images, labels = _batch()
    mixed, targets = augment.mixup_or_cutmix(
        jax.random.key(0), images.astype(jnp.bfloat16), labels, NUM_CLASSES,
        **MODES["both"])
    chex.assert_type(mixed, jnp.bfloat16)
    chex.assert_type(targets, jnp.float32)

  @parameterized.named_parameters(
      ("mixup", MODES["mixup"], 0), ("cutmix", MODES["cutmix"], 0),
      ("both", MODES["both"], 4))
  def test_same_result_on_one_or_eight_devices(self, mode, seed):
    self.assertGreaterEqual(jax.device_count(), 8)
    images, labels = _batch(b=16, seed=seed)
    rng = jax.random.key(seed)
    fn = functools.partial(augment.mixup_or_cutmix, num_classes=NUM_CLASSES,
                           **mode)
    whole_images, whole_targets = jax.jit(fn)(rng, images, labels)
    split_images, split_targets = jax.pmap(
        fn, in_axes=(None, 0, 0), devices=jax.devices()[:8])(
            rng, images.reshape(8, 2, 8, 8, 3), labels.reshape(8, 2))
    self.assertFalse(np.allclose(whole_images, images))
    np.testing.assert_allclose(split_images.reshape(images.shape),
                               whole_images, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(split_targets.reshape(whole_targets.shape),
                               whole_targets, rtol=1e-6, atol=1e-7)


class MixInGroupsTest(chex.TestCase):

  def test_each_group_draws_its_own_lambda(self):
    images, labels = _batch(b=16)
    _, targets = augment.mixup_or_cutmix_in_groups(
        jax.random.key(0), images, labels, jnp.arange(16), NUM_CLASSES,
        group_size=4, label_smoothing=0.0, **MODES["mixup"])
    lams = np.asarray(_own_lam(targets, labels)).reshape(4, 4)
    np.testing.assert_allclose(lams, lams[:, :1] * np.ones((1, 4)),
                               rtol=1e-6)  # one lambda inside a group
    self.assertEqual(len(np.unique(np.round(lams[:, 0], 6))), 4)

  def test_same_result_on_one_or_eight_devices(self):
    images, labels = _batch(b=16, seed=3)
    ids = jnp.arange(16)
    fn = functools.partial(augment.mixup_or_cutmix_in_groups,
                           num_classes=NUM_CLASSES, group_size=2,
                           **MODES["both"])
    rng = jax.random.key(5)
    whole_images, whole_targets = jax.jit(fn)(rng, images, labels, ids)
    split_images, split_targets = jax.pmap(
        fn, in_axes=(None, 0, 0, 0), devices=jax.devices()[:8])(
            rng, images.reshape(8, 2, 8, 8, 3), labels.reshape(8, 2),
            ids.reshape(8, 2))
    np.testing.assert_allclose(split_images.reshape(images.shape),
                               whole_images, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(split_targets.reshape(whole_targets.shape),
                               whole_targets, rtol=1e-6, atol=1e-7)

  def test_group_must_divide_the_batch(self):
    images, labels = _batch(b=8)
    with self.assertRaisesRegex(ValueError, "mix_group_size"):
      augment.mixup_or_cutmix_in_groups(
          jax.random.key(0), images, labels, jnp.arange(8), NUM_CLASSES,
          group_size=3, **MODES["mixup"])


def _erased(images, out):
  """(b, H, W) bool: pixels the erasing changed, checked on all channels."""
  changed = np.asarray(out) != np.asarray(images)
  np.testing.assert_array_equal(changed, np.broadcast_to(
      changed[..., :1], changed.shape))
  return changed[..., 0]


class RandomErasingTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_prob_zero_is_identity(self):
    images, _ = _batch(b=8, size=16)
    keys = jax.random.split(jax.random.key(0), 8)
    out = self.variant(augment.random_erasing)(keys, images, 0.0)
    np.testing.assert_array_equal(out, images)

  @chex.variants(with_jit=True, without_jit=True)
  def test_prob_one_erases_one_rectangle_of_timm_size(self):
    b, size = 32, 32
    images = jnp.full((b, size, size, 3), 100.0)  # never drawn as noise
    keys = jax.random.split(jax.random.key(1), b)
    erased = _erased(images, self.variant(augment.random_erasing)(
        keys, images, 1.0))
    lo, hi = 0.02, 1 / 3  # timm's defaults, used by MAE
    fractions = []
    for mask in erased:
      rows, cols = np.nonzero(mask)
      self.assertNotEmpty(rows)
      h, w = np.ptp(rows) + 1, np.ptp(cols) + 1
      self.assertEqual(len(rows), h * w)  # a full rectangle
      self.assertLess(max(h, w), size)
      # h and w are round(sqrt(area * aspect)), round(sqrt(area / aspect)),
      # so area and aspect are known up to half a pixel on each side.
      area = np.array([(h - .5) * (w - .5), (h + .5) * (w + .5)]) / size**2
      self.assertTrue(area[0] <= hi and area[1] >= lo, (h, w))
      aspect = [(h - .5) / (w + .5), (h + .5) / (w - .5)]
      self.assertTrue(aspect[0] <= 1 / 0.3 and aspect[1] >= 0.3, (h, w))
      fractions.append(h * w / size**2)
    self.assertBetween(min(fractions), lo * 0.5, hi)
    self.assertBetween(max(fractions), lo, hi * 1.2)
    self.assertGreater(np.ptp(fractions), 0.1)  # areas really vary

  def test_fill_is_per_pixel_standard_normal(self):
    b, size = 64, 32
    images = jnp.full((b, size, size, 3), 100.0)
    out = np.asarray(augment.random_erasing(
        jax.random.split(jax.random.key(2), b), images, 1.0))
    values = out[_erased(images, out)]  # (n, 3)
    self.assertGreater(len(values), 10_000)
    self.assertAlmostEqual(values.mean(), 0.0, delta=0.05)
    self.assertAlmostEqual(values.std(), 1.0, delta=0.05)
    self.assertLess(abs(np.corrcoef(values[:, 0], values[:, 1])[0, 1]), 0.05)
    self.assertLess(abs(np.corrcoef(values[:-1, 0], values[1:, 0])[0, 1]),
                    0.05)

  def test_prob_applies_per_example(self):
    b = 200
    images = jnp.zeros((b, 8, 8, 1))
    out = augment.random_erasing(jax.random.split(jax.random.key(3), b),
                                 images, 0.3)
    touched = _erased(images, out).any(axis=(1, 2))
    self.assertBetween(touched.mean(), 0.2, 0.4)

  def test_each_example_depends_only_on_its_key(self):
    images = jnp.zeros((8, 16, 16, 3))
    keys = jax.random.split(jax.random.key(4), 8)
    out = np.asarray(augment.random_erasing(keys, images, 1.0))
    self.assertLen({m.tobytes() for m in _erased(images, out)}, 8)
    part = augment.random_erasing(keys[5:7], images[5:7], 1.0)
    np.testing.assert_array_equal(part, out[5:7])
    same_key = augment.random_erasing(keys[jnp.asarray([2, 2])],
                                      images[:2], 1.0)
    np.testing.assert_array_equal(same_key[0], same_key[1])

  def test_same_result_on_one_or_eight_devices(self):
    self.assertGreaterEqual(jax.device_count(), 8)
    images, _ = _batch(b=16)
    keys = jax.random.split(jax.random.key(5), 16)
    whole = jax.jit(augment.random_erasing)(keys, images, 0.5)
    split = jax.pmap(augment.random_erasing, in_axes=(0, 0, None),
                     devices=jax.devices()[:8])(
                         keys.reshape(8, 2), images.reshape(8, 2, 8, 8, 3),
                         0.5)
    self.assertFalse(np.array_equal(whole, images))
    np.testing.assert_array_equal(split.reshape(images.shape), whole)

  def test_one_key_per_image(self):
    images, _ = _batch(b=4)
    with self.assertRaisesRegex(ValueError, "one key per image"):
      augment.random_erasing(jax.random.split(jax.random.key(0), 3), images,
                             0.5)
