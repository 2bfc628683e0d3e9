import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from mae_jax import masking


def _tokens(b=4, length=16, d=3):
  x = np.arange(b * length * d, dtype=np.float32).reshape(b, length, d)
  return jnp.asarray(x)


class RandomMaskingTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_keeps_exactly_len_keep_tokens(self):
    tokens = _tokens()
    noise = jax.random.uniform(jax.random.key(0), (4, 16))
    kept, mask, ids_restore = self.variant(
        masking.random_masking, static_argnums=2)(tokens, noise, 4)
    chex.assert_shape(kept, (4, 4, 3))
    chex.assert_shape(ids_restore, (4, 16))
    np.testing.assert_array_equal(mask.sum(axis=1), [12] * 4)
    # The kept tokens are exactly the unmasked ones, lowest noise first.
    for b in range(4):
      visible = np.flatnonzero(mask[b] == 0)
      order = visible[np.argsort(noise[b][visible])]
      np.testing.assert_array_equal(kept[b], tokens[b][order])

  @chex.variants(with_jit=True, without_jit=True)
  def test_unshuffle_restores_token_order(self):
    tokens = _tokens()
    noise = jax.random.uniform(jax.random.key(1), (4, 16))
    ids_shuffle = jnp.argsort(noise, axis=1)
    shuffled = jnp.take_along_axis(tokens, ids_shuffle[..., None], axis=1)
    _, _, ids_restore = masking.random_masking(tokens, noise, 4)
    np.testing.assert_array_equal(
        self.variant(masking.unshuffle)(shuffled, ids_restore), tokens)

  def test_masks_differ_between_samples(self):
    keys = masking.example_keys(jax.random.key(0), jnp.int32(5),
                                jnp.arange(8))
    noise = masking.masking_noise(keys, 196)
    _, mask, _ = masking.random_masking(jnp.zeros((8, 196, 1)), noise, 49)
    self.assertLen({tuple(np.asarray(m)) for m in mask}, 8)

  def test_given_noise_decides_the_mask(self):
    noise = jnp.asarray([[0.9, 0.1, 0.5, 0.3]])
    _, mask, _ = masking.random_masking(jnp.zeros((1, 4, 1)), noise, 2)
    np.testing.assert_array_equal(mask, [[1, 0, 1, 0]])

  def test_example_noise_depends_on_id_and_step_not_on_batch_split(self):
    rng = jax.random.key(3)
    ids = jnp.arange(8)
    whole = masking.masking_noise(masking.example_keys(rng, 7, ids), 10)
    halves = [masking.masking_noise(masking.example_keys(rng, 7, part), 10)
              for part in (ids[:4], ids[4:])]
    np.testing.assert_array_equal(whole, np.concatenate(halves))
    other_step = masking.masking_noise(masking.example_keys(rng, 8, ids), 10)
    self.assertFalse(np.allclose(whole, other_step))

  @parameterized.parameters((196, 0.75, 49), (36, 0.75, 9), (50, 0.9, 4))
  def test_num_kept_truncates_like_the_reference(self, length, ratio, kept):
    self.assertEqual(masking.num_kept(length, ratio), kept)

  def test_num_kept_rejects_ratio_of_one(self):
    with self.assertRaisesRegex(ValueError, "mask_ratio"):
      masking.num_kept(16, 1.0)

  def test_num_kept_rejects_a_ratio_that_leaves_no_patch_visible(self):
    # int(196 * 0.01) = 1 stays; int(16 * 0.01) = 0 does not.
    self.assertEqual(masking.num_kept(196, 0.99), 1)
    with self.assertRaisesRegex(ValueError, "0.99 leaves no visible patch of "
                                "16.*below 0.9375"):
      masking.num_kept(16, 0.99)


def _beit_block_mask(rng, height, width, num_masked):
  """BEiT's MaskingGenerator (beit/masking_generator.py, as in Atten4Vis/CAE
  furnace/masking_generator.py), rewritten: the reference for the
  distribution of ours."""
  mask = np.zeros((height, width), bool)
  log_aspect = (np.log(0.3), np.log(1 / 0.3))
  while mask.sum() != num_masked:
    remaining = num_masked - mask.sum()
    for _ in range(10):
      area = 16 + (remaining - 16) * rng.random()  # random.uniform(16, r)
      aspect = np.exp(rng.uniform(*log_aspect))
      h = int(round(np.sqrt(area * aspect)))
      w = int(round(np.sqrt(area / aspect)))
      if w < width and h < height:
        top = rng.integers(0, height - h + 1)
        left = rng.integers(0, width - w + 1)
        new = h * w - mask[top:top + h, left:left + w].sum()
        if 0 < new <= remaining:
          mask[top:top + h, left:left + w] = True
          break
  return mask.reshape(-1)


def _components(mask, height, width):
  """Number of 4-connected groups of masked patches."""
  mask = mask.reshape(height, width).copy()
  count = 0
  for start in zip(*np.nonzero(mask)):
    if not mask[start]:
      continue
    count += 1
    stack = [start]
    while stack:
      i, j = stack.pop()
      if 0 <= i < height and 0 <= j < width and mask[i, j]:
        mask[i, j] = False
        stack += [(i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)]
  return count


@pytest.mark.parametrize("grid,num_masked", [
    ((14, 14), 98), ((14, 14), 75), ((8, 8), 32), ((6, 6), 18)])
def test_block_masking_masks_exactly_the_count(grid, num_masked):
  keys = jax.random.split(jax.random.key(0), 512)
  noise = masking.make_noise("block", keys, grid,
                             grid[0] * grid[1] - num_masked)
  _, mask, _ = masking.random_masking(
      jnp.zeros((512, grid[0] * grid[1], 1)), noise,
      grid[0] * grid[1] - num_masked)
  np.testing.assert_array_equal(mask.sum(axis=1), num_masked)
  blocked = jax.vmap(lambda k: masking.block_mask(k, grid, num_masked))(keys)
  # The blocks alone reach the count (no top-up needed at these sizes).
  np.testing.assert_array_equal(np.sum(blocked, axis=1), num_masked)


def test_block_masks_are_distributed_like_beits():
  count, grid, num_masked = 1500, (14, 14), 98
  ours = np.asarray(jax.jit(jax.vmap(
      lambda k: masking.block_mask(k, grid, num_masked)))(
          jax.random.split(jax.random.key(1), count)))
  rng = np.random.default_rng(0)
  reference = np.stack([_beit_block_mask(rng, *grid, num_masked)
                        for _ in range(count)])
  for masks in (ours, reference):
    assert masks.sum(axis=1).tolist() == [num_masked] * count
  # Where the blocks fall (the border is masked less), how many separate
  # groups they form, and how many rows they touch.
  np.testing.assert_allclose(ours.mean(axis=0), reference.mean(axis=0),
                             atol=0.07)
  groups = [np.mean([_components(m, *grid) for m in masks])
            for masks in (ours, reference)]
  assert groups[0] == pytest.approx(groups[1], abs=0.1)
  rows = [masks.reshape(count, *grid).any(axis=2).sum(axis=1).mean()
          for masks in (ours, reference)]
  assert rows[0] == pytest.approx(rows[1], abs=0.2)


def test_blocks_that_fall_short_are_topped_up_with_random_patches(
    monkeypatch):
  monkeypatch.setattr(masking, "MAX_BLOCKS", 1)
  keys = jax.random.split(jax.random.key(2), 64)
  noise = masking.make_noise("block", keys, (14, 14), 196 - 98)
  blocked = np.asarray(noise) >= 1  # the block's patches
  assert np.all(np.sum(blocked, axis=1) < 98)  # one block is never enough
  _, mask, _ = masking.random_masking(jnp.zeros((64, 196, 1)), noise, 98)
  np.testing.assert_array_equal(mask.sum(axis=1), 98)
  # Every blocked patch stays masked; the top-up adds the rest.
  assert np.all(np.asarray(mask)[blocked] == 1)


def test_grid_masking_keeps_one_patch_of_every_two_by_two_cell():
  keys = jax.random.split(jax.random.key(3), 32)
  noise = masking.make_noise("grid", keys, (6, 4), 6)
  _, mask, _ = masking.random_masking(jnp.zeros((32, 24, 1)), noise, 6)
  cells = np.asarray(mask).reshape(32, 3, 2, 2, 2).sum(axis=(2, 4))
  np.testing.assert_array_equal(cells, 3)  # 3 of each 2x2 masked
  kept_offsets = {tuple(np.argwhere(m.reshape(6, 4)[:2, :2] == 0)[0])
                  for m in np.asarray(mask)}
  assert len(kept_offsets) == 4  # the kept corner is drawn per image


def test_masking_is_the_same_on_one_and_on_eight_devices():
  rng, step, ids = jax.random.key(4), jnp.int32(3), jnp.arange(16)

  def masks(keys):
    noise = masking.make_noise("block", keys, (8, 8), 32)
    return masking.random_masking(jnp.zeros((keys.shape[0], 64, 1)), noise,
                                  32)[1]

  whole = masks(masking.example_keys(rng, step, ids))
  per_device = jax.pmap(lambda i: masks(masking.example_keys(rng, step, i)))(
      ids.reshape(8, 2))
  np.testing.assert_array_equal(per_device.reshape(16, 64), whole)


@pytest.mark.parametrize("kind,grid,ratio,message", [
    ("block", (14, 14), 0.05, "at least 16 masked patches"),
    ("block", (4, 4), 0.5, "a grid of at least 5x5"),
    ("grid", (14, 14), 0.5, "mask_ratio=0.75"),
    ("grid", (5, 5), 0.75, "an even grid"),
    ("blocks", (14, 14), 0.5, "masking='blocks' is not known")])
def test_a_masking_that_does_not_fit_the_grid_is_a_named_error(
    kind, grid, ratio, message):
  with pytest.raises(ValueError, match=message):
    masking.check(kind, grid, ratio)


def test_check_returns_the_visible_count():
  assert masking.check("block", (14, 14), 0.5) == 98
  assert masking.check("grid", (14, 14), 0.75) == 49
  assert masking.check("random", (14, 14), 0.75) == 49


def test_token_gather_by_matmul_equals_the_gather_with_its_gradient():
  # The accelerator path of `gather` against the CPU one, exactly.
  tokens = jax.random.normal(jax.random.key(0), (3, 16, 5, 2))
  indices = jnp.argsort(jax.random.uniform(jax.random.key(1), (3, 16)),
                        axis=1)[:, :6]
  cotangent = jax.random.normal(jax.random.key(2), (3, 6, 5, 2))

  def pullback(take):
    out, vjp = jax.vjp(lambda t: take(t, indices), tokens)
    return out, vjp(cotangent)

  chex.assert_trees_all_equal(pullback(masking._gather_by_matmul),
                              pullback(masking._gather_by_index))
