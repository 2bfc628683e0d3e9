import chex
import jax
import jax.numpy as jnp
import numpy as np
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


def test_token_gather_by_matmul_equals_the_gather_with_its_gradient():
  # The accelerator path of `take_tokens` against the CPU one, exactly.
  tokens = jax.random.normal(jax.random.key(0), (3, 16, 5))
  indices = jnp.argsort(jax.random.uniform(jax.random.key(1), (3, 16)),
                        axis=1)[:, :6]
  cotangent = jax.random.normal(jax.random.key(2), (3, 6, 5))

  def pullback(take):
    out, vjp = jax.vjp(lambda t: take(t, indices), tokens)
    return out, vjp(cotangent)

  chex.assert_trees_all_equal(pullback(masking._take_by_matmul),
                              pullback(masking._take_by_loop))
