import jax
import jax.numpy as jnp
import numpy as np

from mae_jax import losses


def _inputs(seed=0):
  rng = np.random.RandomState(seed)
  pred = rng.randn(2, 8, 12).astype(np.float32)
  target = rng.rand(2, 8, 12).astype(np.float32)
  mask = np.zeros((2, 8), np.float32)
  mask[:, :6] = 1
  return pred, target, mask


def test_visible_patches_do_not_affect_the_loss():
  pred, target, mask = _inputs()
  loss = losses.reconstruction_loss(pred, target, mask, norm_pix=True)
  pred2, target2 = pred.copy(), target.copy()
  pred2[:, 6:] += 100.0
  target2[:, 6:] = 7.0
  loss2 = losses.reconstruction_loss(pred2, target2, mask, norm_pix=True)
  np.testing.assert_allclose(loss, loss2, rtol=1e-6)
  grads = jax.grad(lambda p: losses.reconstruction_loss(
      p, target, mask, norm_pix=False))(pred)
  np.testing.assert_array_equal(grads[:, 6:], 0.0)
  assert np.all(grads[:, :6] != 0.0)


def test_loss_is_mean_squared_error_over_masked_patches():
  pred, target, mask = _inputs()
  expected = ((pred - target) ** 2).mean(-1)[:, :6].mean()
  np.testing.assert_allclose(
      losses.reconstruction_loss(pred, target, mask, norm_pix=False),
      expected, rtol=1e-6)


def test_loss_on_all_patches_counts_visible_ones_too():
  pred, target, mask = _inputs()
  np.testing.assert_allclose(
      losses.reconstruction_loss(pred, target, mask, norm_pix=False,
                                 on_all_patches=True),
      ((pred - target) ** 2).mean(), rtol=1e-6)


def test_norm_pix_targets_have_zero_mean_unit_variance_per_patch():
  _, target, _ = _inputs()
  normalized = losses.normalize_patches(jnp.asarray(target * 50 + 3))
  np.testing.assert_allclose(normalized.mean(-1), 0.0, atol=1e-5)
  # Unbiased variance, like torch.var in the reference.
  np.testing.assert_allclose(np.var(normalized, axis=-1, ddof=1), 1.0,
                             rtol=1e-4)


def test_norm_pix_loss_is_zero_for_a_perfect_normalized_prediction():
  _, target, mask = _inputs()
  pred = losses.normalize_patches(jnp.asarray(target))
  assert losses.reconstruction_loss(pred, target, mask, norm_pix=True) < 1e-10


def test_loss_is_float32_for_bfloat16_predictions():
  pred, target, mask = _inputs()
  loss = losses.reconstruction_loss(jnp.asarray(pred, jnp.bfloat16), target,
                                    mask, norm_pix=True)
  assert loss.dtype == jnp.float32
