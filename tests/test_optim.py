import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mae_jax import models
from mae_jax import optim
from testing_utils import tiny_classifier_config, tiny_config


def _classifier_params(config):
  model = models.build_classifier(config.model)
  return jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 16, 16, 3))))["params"]


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


def test_pretraining_decays_all_but_one_dimensional_parameters():
  # timm 0.3.2's add_weight_decay with an empty skip list, as the reference's
  # main_pretrain.py calls it: the cls and mask tokens are decayed.
  model = models.build(tiny_config().model)
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 16))))
  mask = optim.weight_decay_mask(params["params"], optim.no_decay_names(
      "pretrain"))
  encoder, decoder = mask["encoder"], mask["decoder"]
  block = encoder["transformer"]["blocks_0"]
  assert block["attn"]["qkv"]["kernel"] and block["mlp"]["fc1"]["kernel"]
  assert encoder["patch_embed"]["kernel"] and decoder["pred"]["kernel"]
  assert encoder["cls_token"] and decoder["mask_token"]
  assert not block["attn"]["qkv"]["bias"]
  assert not block["norm1"]["scale"] and not block["norm1"]["bias"]


def test_classifiers_spare_the_position_embedding_and_cls_token():
  # The reference's fine-tuning skips the model's no_weight_decay() set.
  config = tiny_classifier_config("finetune")
  mask = optim.weight_decay_mask(_classifier_params(config),
                                 optim.no_decay_names(config.mode))
  encoder = mask["encoder"]
  assert not encoder["cls_token"] and not encoder["pos_embed"]
  assert encoder["patch_embed"]["kernel"] and mask["head"]["kernel"]
  assert not mask["head"]["bias"] and not mask["fc_norm"]["scale"]


@pytest.mark.parametrize("mode, token_decay", [("pretrain", -0.5 * 0.05),
                                               ("finetune", 0.0)])
def test_adamw_decays_only_masked_parameters(mode, token_decay):
  config = tiny_config(mode=mode)
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,)),
            "cls_token": jnp.ones((1, 1, 2))}
  tx = optim.make_optimizer(config, lambda _: 0.5, params)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.5 * 0.05)
  np.testing.assert_array_equal(updates["b"], 0.0)
  np.testing.assert_allclose(updates["cls_token"], token_decay)


def test_gradient_clipping_when_configured():
  config = tiny_config()
  config.optimizer.grad_clip_norm = 1.0
  params = {"w": jnp.zeros((3,))}
  tx = optim.make_optimizer(config, lambda _: 1.0, params)
  grads = {"w": jnp.asarray([300.0, 400.0, 0.0])}
  _, state = tx.update(grads, tx.init(params), params)
  # Adam's first moment sees the clipped gradient (norm 1), scaled by 1 - b1.
  mu = optax.tree_utils.tree_get(state, "mu")["w"]
  np.testing.assert_allclose(mu, 0.1 * np.asarray([0.6, 0.8, 0.0]), rtol=1e-5)


def test_layer_decay_scales_follow_the_reference():
  config = tiny_classifier_config("finetune")  # depth 2
  scales = optim.layer_decay_scales(_classifier_params(config), depth=2,
                                    decay=0.5)
  encoder = scales["encoder"]
  # Embedding: decay^(N+1); block i: decay^(N-i); after the blocks: 1.
  for name in ("patch_embed", "cls_token", "pos_embed"):
    assert jax.tree.leaves(encoder[name]) == [0.125] * len(
        jax.tree.leaves(encoder[name])), name
  blocks = encoder["transformer"]
  assert set(jax.tree.leaves(blocks["blocks_0"])) == {0.25}
  assert set(jax.tree.leaves(blocks["blocks_1"])) == {0.5}
  assert set(jax.tree.leaves(scales["fc_norm"])) == {1.0}
  assert set(jax.tree.leaves(scales["head"])) == {1.0}


def test_layer_decay_scales_each_parameters_update():
  config = tiny_classifier_config("finetune")
  config.optimizer.weight_decay = 0.0
  params = jax.tree.map(lambda s: jnp.zeros(s.shape), _classifier_params(
      config))
  grads = jax.tree.map(jnp.ones_like, params)
  tx = optim.make_optimizer(config, lambda _: 1.0, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step is -lr * sign(g) = -1, times the layer's scale.
  scales = optim.layer_decay_scales(params, 2, config.optimizer.layer_decay)
  for update, scale in zip(jax.tree.leaves(updates), jax.tree.leaves(scales)):
    np.testing.assert_allclose(update, -scale, rtol=1e-5)


def test_partial_fine_tuning_trains_the_last_blocks_norm_and_head():
  config = tiny_classifier_config("finetune", trainable_blocks=1)
  mask = optim.trainable_mask(config, _classifier_params(config))
  encoder = mask["encoder"]
  assert not any(jax.tree.leaves(encoder["patch_embed"]))
  assert not encoder["cls_token"] and not encoder["pos_embed"]
  assert not any(jax.tree.leaves(encoder["transformer"]["blocks_0"]))
  assert all(jax.tree.leaves(encoder["transformer"]["blocks_1"]))
  assert all(jax.tree.leaves(mask["fc_norm"]) + jax.tree.leaves(mask["head"]))
  config.trainable_blocks = -1
  assert all(jax.tree.leaves(optim.trainable_mask(
      config, _classifier_params(config))))


def test_linear_probe_trains_the_head_only_with_lars():
  config = tiny_classifier_config("linear_probe")
  params = jax.tree.map(lambda s: jnp.ones(s.shape),
                        _classifier_params(config))
  mask = optim.trainable_mask(config, params)
  assert jax.tree.leaves(mask["head"]) == [True, True]
  assert not any(jax.tree.leaves(mask["encoder"]))
  tx = optim.make_optimizer(config, lambda _: 1.0, params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert not any(np.any(u) for u in jax.tree.leaves(updates["encoder"]))
  # The kernel's update is scaled by the trust ratio 0.001 |w| / |g| = 0.001;
  # the 1-D bias gets the plain gradient.
  np.testing.assert_allclose(updates["head"]["kernel"], -0.001, rtol=1e-5)
  np.testing.assert_allclose(updates["head"]["bias"], -1.0)


def test_lars_applies_the_lr_after_momentum_as_the_reference():
  tx = optim.lars(lambda step: 1.0 + step, momentum=0.9,
                  trust_coefficient=1.0, weight_decay=0.0)
  params = {"b": jnp.zeros((2,))}  # 1-D: no trust ratio
  state = tx.init(params)
  grads = {"b": jnp.ones((2,))}
  first, state = tx.update(grads, state, params)
  second, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(first["b"], -1.0)  # lr 1 x buffer 1
  np.testing.assert_allclose(second["b"], -2.0 * 1.9)  # lr 2 x buffer 1.9


def test_attentive_probe_lr_is_not_rescaled_by_the_batch():
  config = tiny_classifier_config("attentive_probe")
  for batch_size in (16, 8192):
    config.batch_size = batch_size
    assert optim.peak_learning_rate(config) == 0.4


def test_attentive_probe_trains_pooling_and_head_with_nesterov_sgd():
  config = tiny_classifier_config("attentive_probe")
  params = jax.tree.map(lambda s: jnp.ones(s.shape),
                        _classifier_params(config))
  mask = optim.trainable_mask(config, params)
  assert all(jax.tree.leaves(mask["attentive_pool"]))
  assert all(jax.tree.leaves(mask["head"]))
  assert not any(jax.tree.leaves(mask["encoder"]))
  lrs = {0: 1.0, 1: 0.5}
  tx = optim.make_optimizer(config, lambda step: lrs[int(step)], params)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  first, state = tx.update(grads, state, params)
  second, _ = tx.update(jax.tree.map(lambda g: 2 * g, grads), state, params)
  assert not any(np.any(u) for u in jax.tree.leaves(second["encoder"]))
  # PyTorch's SGD(nesterov=True): buf = 0.9 buf + g; step = lr (g + 0.9 buf).
  buf = 1.0
  np.testing.assert_allclose(first["head"]["kernel"], -1.0 * (1 + 0.9 * buf))
  buf = 0.9 * buf + 2
  np.testing.assert_allclose(second["head"]["kernel"],
                             -0.5 * (2 + 0.9 * buf), rtol=1e-6)


def test_knn_trains_nothing():
  config = tiny_classifier_config("linear_probe")
  config.mode = "knn"
  assert not any(jax.tree.leaves(optim.trainable_mask(
      config, _classifier_params(config))))
