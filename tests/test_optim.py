import jax
import jax.numpy as jnp
import numpy as np
import optax

from mae_jax import models
from mae_jax import optim
from testing_utils import tiny_config


def test_lr_scales_with_the_global_batch():
  config = tiny_config()
  config.optimizer.base_lr, config.batch_size = 1.5e-4, 4096
  np.testing.assert_allclose(optim.peak_learning_rate(config), 2.4e-3)


def test_schedule_warms_up_linearly_then_follows_half_cosine():
  schedule = optim.warmup_cosine_schedule(1.0, warmup_steps=10,
                                          total_steps=110, min_lr=0.1)
  np.testing.assert_allclose(
      [schedule(s) for s in (0, 5, 10, 60, 110, 200)],
      [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], atol=1e-6)
  values = np.asarray([schedule(s) for s in range(10, 111)])
  assert np.all(np.diff(values) <= 1e-7)


def test_weight_decay_applies_to_weight_matrices_only():
  model = models.build(tiny_config().model)
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16))))
  mask = optim.weight_decay_mask(params["params"])
  encoder, decoder = mask["encoder"], mask["decoder"]
  block = encoder["transformer"]["blocks_0"]
  assert block["attn"]["qkv"]["kernel"] and block["mlp"]["fc1"]["kernel"]
  assert encoder["patch_embed"]["kernel"] and decoder["pred"]["kernel"]
  assert not block["attn"]["qkv"]["bias"]
  assert not block["norm1"]["scale"] and not block["norm1"]["bias"]
  assert not encoder["cls_token"] and not decoder["mask_token"]


def test_adamw_decays_only_masked_parameters():
  config = tiny_config()
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,)),
            "cls_token": jnp.ones((1, 1, 2))}
  tx = optim.make_optimizer(config, lambda _: 0.5)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.5 * 0.05)
  np.testing.assert_array_equal(updates["b"], 0.0)
  np.testing.assert_array_equal(updates["cls_token"], 0.0)


def test_gradient_clipping_when_configured():
  config = tiny_config()
  config.optimizer.grad_clip_norm = 1.0
  tx = optim.make_optimizer(config, lambda _: 1.0)
  params = {"w": jnp.zeros((3,))}
  grads = {"w": jnp.asarray([300.0, 400.0, 0.0])}
  _, state = tx.update(grads, tx.init(params), params)
  # Adam's first moment sees the clipped gradient (norm 1), scaled by 1 - b1.
  mu = optax.tree_utils.tree_get(state, "mu")["w"]
  np.testing.assert_allclose(mu, 0.1 * np.asarray([0.6, 0.8, 0.0]), rtol=1e-5)
