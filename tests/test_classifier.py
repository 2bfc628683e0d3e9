import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax import models
from mae_jax.models import classifier
from mae_jax.models import vit
from testing_utils import tiny_classifier_config


def _init(model_config, size=16):
  model = models.build_classifier(model_config)
  variables = model.init(jax.random.key(0), jnp.zeros((2, size, size, 3)))
  return model, variables


def _images(batch=4, size=16):
  return jax.random.normal(jax.random.key(1), (batch, size, size, 3))


def test_global_pool_head_drops_the_final_norm_and_adds_fc_norm():
  _, variables = _init(tiny_classifier_config("finetune").model)
  params = variables["params"]
  assert "fc_norm" in params and "norm" not in params["encoder"]["transformer"]
  assert params["head"]["kernel"].shape == (32, 10)
  assert params["encoder"]["pos_embed"].shape == (1, 1 + 16, 32)
  assert "batch_stats" not in variables


def test_linear_probe_head_is_batch_norm_without_affine_on_the_cls_token():
  _, variables = _init(tiny_classifier_config("linear_probe").model)
  params = variables["params"]
  assert "fc_norm" not in params and "norm" in params["encoder"]["transformer"]
  assert "head_norm" not in params  # no affine parameters
  assert set(variables["batch_stats"]["head_norm"]) == {"mean", "var"}
  assert np.std(params["head"]["kernel"]) == pytest.approx(0.01, rel=0.2)


def test_learned_position_embedding_starts_as_the_sincos_table():
  _, variables = _init(tiny_classifier_config("finetune").model)
  pos_embed = variables["params"]["encoder"]["pos_embed"][0]
  np.testing.assert_array_equal(pos_embed[0], 0.0)
  np.testing.assert_array_equal(pos_embed[1:], vit.sincos_pos_embed_2d(32, 4, 4))


def test_drop_path_is_the_identity_without_keys():
  config = tiny_classifier_config("finetune").model
  config.drop_path_rate = 0.5
  model, variables = _init(config)
  no_drop = config.copy_and_resolve_references()
  no_drop.drop_path_rate = 0.0
  reference = models.build_classifier(no_drop).apply(variables, _images())
  np.testing.assert_array_equal(model.apply(variables, _images()), reference)
  keys = jax.random.split(jax.random.key(2), 4)
  dropped = model.apply(variables, _images(), train=True, drop_keys=keys)
  assert not np.allclose(dropped, reference)


def test_drop_path_is_per_sample_and_keyed_by_the_sample():
  x = jnp.ones((6, 3, 2))
  keys = jax.random.split(jax.random.key(0), 6)
  out = vit.drop_path(x, keys, 0.5)
  per_sample = np.asarray(out[:, 0, 0])
  assert set(per_sample.tolist()) <= {0.0, 2.0}  # dropped, or kept / (1-p)
  np.testing.assert_array_equal(out, out[:, :1, :1] * np.ones((1, 3, 2)))
  # A sample's decision depends on its key only, not on its batch-mates.
  np.testing.assert_array_equal(vit.drop_path(x[2:4], keys[2:4], 0.5),
                                out[2:4])


def test_batch_norm_uses_running_statistics_at_evaluation():
  model, variables = _init(tiny_classifier_config("linear_probe").model)
  images = _images(8)
  logits, updates = model.apply(variables, images, train=True,
                                mutable=["batch_stats"])
  stats = updates["batch_stats"]["head_norm"]
  assert not np.allclose(stats["mean"], 0.0)
  assert logits.shape == (8, 10)
  # Evaluation normalises with the running statistics, not the batch's: one
  # image's logits do not depend on its batch-mates, and do depend on them.
  trained = {**variables, **updates}
  np.testing.assert_allclose(model.apply(trained, images)[:1],
                             model.apply(trained, images[:1]), rtol=1e-5,
                             atol=1e-6)
  features = model.apply(trained, images[:1], capture_intermediates=True,
                         mutable=["intermediates"])[1]["intermediates"][
                             "head_norm"]["__call__"][0]
  raw = model.apply(trained, images[:1], capture_intermediates=True,
                    mutable=["intermediates"])[1]["intermediates"]["encoder"][
                        "__call__"][0][:, 0]
  np.testing.assert_allclose(
      features, (raw - stats["mean"]) / np.sqrt(stats["var"] + 1e-6),
      rtol=1e-4, atol=1e-5)


def _layer_norm(x, scale, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(x.var(-1, keepdims=True) + eps) * scale + bias


def _attentive_pool_numpy(p, tokens, num_heads):
  """CAE's AttentiveBlock written out: LN(query) attends over LN(tokens)."""
  tokens = np.asarray(tokens, np.float64)
  b, n, d = tokens.shape
  query = _layer_norm(np.asarray(p["query"], np.float64).reshape(1, d),
                      p["norm_q"]["scale"], p["norm_q"]["bias"])
  q = query @ p["q"]["kernel"] + p["q"]["bias"]  # (1, D)
  k = _layer_norm(tokens, p["norm_k"]["scale"], p["norm_k"]["bias"]) @ p[
      "k"]["kernel"]  # (B, N, D), no bias
  v = _layer_norm(tokens, p["norm_v"]["scale"], p["norm_v"]["bias"]) @ p[
      "v"]["kernel"] + p["v"]["bias"]
  h = d // num_heads
  out = np.zeros((b, d))
  for head in range(num_heads):
    part = slice(head * h, (head + 1) * h)
    logits = k[:, :, part] @ q[0, part] / np.sqrt(h)  # (B, N)
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    out[:, part] = np.einsum("bn,bnh->bh", weights, v[:, :, part])
  return out @ p["proj"]["kernel"] + p["proj"]["bias"]


def _randomised(params, seed=5):
  """Every parameter drawn at random: zeros would hide missing terms."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [
      np.asarray(0.5 * jax.random.normal(k, x.shape)) for k, x in
      zip(keys, leaves)])


def test_attentive_pooling_is_the_cae_block():
  pool = classifier.AttentivePooling(num_heads=4)
  tokens = jax.random.normal(jax.random.key(1), (3, 7, 16))
  params = _randomised(pool.init(jax.random.key(0), tokens)["params"])
  np.testing.assert_allclose(pool.apply({"params": params}, tokens),
                             _attentive_pool_numpy(params, tokens, 4),
                             rtol=1e-4, atol=1e-5)
  # Every token is a key, the cls token (first) included.
  moved = tokens.at[:, 0].set(jax.random.normal(jax.random.key(2), (3, 16)))
  assert not np.allclose(pool.apply({"params": params}, moved),
                         pool.apply({"params": params}, tokens))


def test_attentive_pooling_starts_from_a_zero_query_and_no_key_bias():
  pool = classifier.AttentivePooling(num_heads=2)
  tokens = jax.random.normal(jax.random.key(1), (2, 5, 8))
  params = pool.init(jax.random.key(0), tokens)["params"]
  np.testing.assert_array_equal(params["query"], np.zeros((1, 1, 8)))
  assert set(params["k"]) == {"kernel"}
  assert set(params["q"]) == set(params["v"]) == {"kernel", "bias"}
  assert np.std(params["proj"]["kernel"]) == pytest.approx(0.02, rel=0.3)
  # A zero query attends uniformly: the output is the projected mean value.
  v = _layer_norm(np.asarray(tokens), 1.0, 0.0) @ params["v"]["kernel"]
  np.testing.assert_allclose(
      pool.apply({"params": params}, tokens),
      v.mean(1) @ params["proj"]["kernel"], rtol=1e-4, atol=1e-6)


def test_attentive_probe_head_is_pooling_then_batch_norm_and_linear():
  _, variables = _init(tiny_classifier_config("attentive_probe").model)
  params = variables["params"]
  assert set(params) == {"encoder", "attentive_pool", "head"}
  assert "norm" in params["encoder"]["transformer"]  # final-norm tokens
  assert set(variables["batch_stats"]["head_norm"]) == {"mean", "var"}
  assert params["head"]["kernel"].shape == (32, 10)


def test_the_encoder_takes_cae_options():
  config = tiny_classifier_config("finetune").model
  config.update(layer_scale_init=0.1, key_bias=False, sincos_order="h_first")
  _, variables = _init(config)
  encoder = variables["params"]["encoder"]
  block = encoder["transformer"]["blocks_0"]
  np.testing.assert_array_equal(block["layer_scale_attn"], np.float32(0.1))
  np.testing.assert_array_equal(encoder["pos_embed"][0, 1:],
                                vit.sincos_pos_embed_2d(32, 4, 4, "h_first"))
