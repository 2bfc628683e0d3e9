import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax import models
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


def test_the_encoder_takes_cae_options():
  config = tiny_classifier_config("finetune").model
  config.update(layer_scale_init=0.1, key_bias=False, sincos_order="h_first")
  _, variables = _init(config)
  encoder = variables["params"]["encoder"]
  block = encoder["transformer"]["blocks_0"]
  np.testing.assert_array_equal(block["layer_scale_attn"], np.float32(0.1))
  np.testing.assert_array_equal(encoder["pos_embed"][0, 1:],
                                vit.sincos_pos_embed_2d(32, 4, 4, "h_first"))
