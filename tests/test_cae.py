"""The CAE model: masked count, where gradients flow, what the regressor
sees, the alignment target, the init, and the paper's Fig. 4 path."""

import functools

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax import masking
from mae_jax import models
from mae_jax.models import cae
from testing_utils import tiny_cae_config

BATCH = 3
GRID = 6  # 24x24 images of 4x4 patches
NUM_MASKED = 18


def _model(**overrides):
  model_config = tiny_cae_config().model
  model_config.update(overrides)
  return models.build(model_config)


@functools.lru_cache(maxsize=None)
def _params(seed=0, **overrides):
  """Parameters with no layer scale, bias or norm left at its init value,
  so that every path of the model shows in the outputs."""
  model = _model(**overrides)
  params = model.init(jax.random.key(seed), jnp.zeros((1, 24, 24, 3)),
                      jnp.zeros((1, GRID * GRID)))["params"]
  rng = np.random.RandomState(seed)
  return jax.tree.map(
      lambda x: (x + 0.1 * rng.randn(*x.shape)).astype(np.float32), params)


def _inputs(seed=1):
  images = jax.random.normal(jax.random.key(seed), (BATCH, 24, 24, 3))
  keys = jax.random.split(jax.random.key(seed + 1), BATCH)
  noise = masking.make_noise("block", keys, (GRID, GRID), GRID * GRID -
                             NUM_MASKED)
  return images, noise


def test_outputs_cover_exactly_the_masked_patches():
  model = _model()
  images, noise = _inputs()
  out = model.apply({"params": _params()}, images, noise)
  chex.assert_shape(out.pred, (BATCH, NUM_MASKED, 4 * 4 * 3))
  np.testing.assert_array_equal(out.mask.sum(axis=1), [NUM_MASKED] * BATCH)
  for mask, ids in zip(np.asarray(out.mask), np.asarray(out.ids_masked)):
    np.testing.assert_array_equal(np.sort(ids), np.flatnonzero(mask))
  assert float(out.loss) == pytest.approx(
      float(out.loss_recon + 2.0 * out.loss_align), rel=1e-6)


def _split(module, images, noise):
  """The pieces of `CAE.__call__`, for tests that cut it open."""
  visible, masked, ids_keep, ids_masked, _ = module.mask(images, noise)
  latents = module.encode(visible)
  predicted = module.regress(latents[:, 1:], ids_keep, ids_masked)
  return latents, predicted, module.alignment_target(masked)


def test_no_gradient_flows_back_through_the_alignment_target():
  model = _model()
  images, noise = _inputs()

  def target_sum(params):
    _, _, target = model.apply({"params": params}, images, noise,
                               method=_split)
    return jnp.sum(target ** 2)

  grads = jax.grad(target_sum)(_params())
  assert all(not np.any(g) for g in jax.tree.leaves(grads))


def test_the_alignment_trains_the_encoder_through_the_regressor_input():
  model = _model()
  images, noise = _inputs()
  params = _params()
  _, _, target = model.apply({"params": params}, images, noise,
                             method=_split)

  def align(params, target=None):
    out = model.apply({"params": params}, images, noise)
    if target is None:
      return out.loss_align
    _, predicted, _ = model.apply({"params": params}, images, noise,
                                  method=_split)
    return jnp.mean((predicted - target) ** 2)

  grads = jax.grad(align)(params)
  # The same as with the target a constant given from outside ...
  chex.assert_trees_all_close(
      grads, jax.grad(align)(params, jax.lax.stop_gradient(target)),
      rtol=1e-5, atol=1e-7)
  # ... and it does reach the encoder, by way of the visible latents.
  encoder = flax.traverse_util.flatten_dict(grads["encoder"], sep="/")
  assert np.any(encoder["transformer/blocks_0/mlp/fc1/kernel"])
  assert not np.any(grads["decoder"]["head"]["kernel"])  # not in the MSE


def test_the_regressor_never_changes_the_visible_latents():
  model = _model(regressor_depth=3)
  images, noise = _inputs()
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, cae.RegressorBlock):
      seen.append(np.asarray(args[1]))  # (queries, visible, ...)
    return next_fun(*args, **kwargs)

  params = _params(regressor_depth=3)
  with nn.intercept_methods(record):
    latents, _, _ = model.apply({"params": params}, images, noise,
                                method=_split)
  assert len(seen) == 3
  for visible in seen:
    np.testing.assert_array_equal(visible, latents[:, 1:])


def test_a_missing_key_bias_gets_no_gradient():
  model = _model(key_bias=False)
  images, noise = _inputs()
  params = _params(key_bias=False)
  grads = jax.grad(lambda p: model.apply({"params": p}, images, noise).loss)(
      params)
  width = 32
  qkv = grads["encoder"]["transformer"]["blocks_0"]["attn"]["qkv"]["bias"]
  np.testing.assert_array_equal(qkv[width:2 * width], 0.0)
  assert np.any(qkv[:width]) and np.any(qkv[2 * width:])
  k_bias = grads["regressor"]["blocks_0"]["cross_attn"]["k"]["bias"]
  np.testing.assert_array_equal(k_bias, 0.0)


def test_layer_scales_start_at_their_init_values():
  model = _model(layer_scale_init=0.1, decoder_layer_scale_init=1e-5)
  params = model.init(jax.random.key(0), jnp.zeros((1, 24, 24, 3)),
                      jnp.zeros((1, GRID * GRID)))["params"]
  block = params["encoder"]["transformer"]["blocks_1"]
  np.testing.assert_array_equal(block["layer_scale_attn"], np.float32(0.1))
  np.testing.assert_array_equal(block["layer_scale_mlp"], np.float32(0.1))
  for stack in (params["regressor"], params["decoder"]["transformer"]):
    np.testing.assert_array_equal(stack["blocks_0"]["layer_scale_mlp"],
                                  np.float32(1e-5))
  no_scale = _model(layer_scale_init=0.0, decoder_layer_scale_init=0.0)
  params = no_scale.init(jax.random.key(0), jnp.zeros((1, 24, 24, 3)),
                         jnp.zeros((1, GRID * GRID)))["params"]
  assert "layer_scale_attn" not in params["regressor"]["blocks_0"]


def test_drop_path_draws_per_example_and_changes_the_loss():
  model = _model(drop_path_rate=0.5)
  images, noise = _inputs()
  keys = jax.random.split(jax.random.key(5), BATCH)
  apply = functools.partial(model.apply, {"params": _params()}, images, noise)
  assert apply(keys).loss != apply(None).loss
  assert apply(keys).loss == apply(keys).loss
  # An example's result does not depend on its batch neighbours' keys.
  other = keys.at[1:].set(jax.random.split(jax.random.key(6), BATCH - 1))
  np.testing.assert_array_equal(apply(keys).pred[0], apply(other).pred[0])


def test_pixel_targets_are_the_masked_patches_normalised():
  model = _model(norm_pix_loss=True, align_weight=0.0)
  images, noise = _inputs()
  params = _params()
  out = model.apply({"params": params}, images, noise)
  target = masking.gather(
      jnp.asarray(images).reshape(BATCH, GRID, 4, GRID, 4, 3).transpose(
          0, 1, 3, 2, 4, 5).reshape(BATCH, GRID * GRID, 48), out.ids_masked)
  mean = target.mean(-1, keepdims=True)
  std = jnp.sqrt(target.var(-1, keepdims=True, ddof=1) + 1e-6)
  expected = jnp.mean((out.pred - (target - mean) / std) ** 2)
  assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
  assert out.loss == out.loss_recon


def test_token_targets_are_read_at_the_masked_patches():
  model = _model(target="dalle")
  images, noise = _inputs()
  params = model.init(jax.random.key(0), images[:1], noise[:1],
                      token_targets=jnp.zeros((1, GRID * GRID), jnp.int32))
  codes = jax.random.randint(jax.random.key(3), (BATCH, GRID * GRID), 0,
                             cae.DALLE_VOCAB_SIZE)
  out = model.apply(params, images, noise, token_targets=codes)
  chex.assert_shape(out.pred, (BATCH, NUM_MASKED, cae.DALLE_VOCAB_SIZE))
  labels = np.take_along_axis(np.asarray(codes), np.asarray(out.ids_masked),
                              axis=1)
  log_probs = jax.nn.log_softmax(out.pred)
  expected = -np.mean(np.take_along_axis(np.asarray(log_probs),
                                         labels[..., None], axis=-1))
  assert float(out.loss_recon) == pytest.approx(float(expected), rel=1e-5)
  with pytest.raises(ValueError, match="token_targets"):
    model.apply(params, images, noise)


def test_fig4_path_decodes_every_patch_without_the_regressor():
  model = _model()
  images, _ = _inputs()
  params = _params()
  pred = model.apply({"params": params}, images,
                     method=model.decode_all_patches)
  chex.assert_shape(pred, (BATCH, GRID * GRID, 48))
  no_regressor = {k: v for k, v in params.items() if k != "regressor"}
  np.testing.assert_array_equal(
      model.apply({"params": no_regressor}, images,
                  method=model.decode_all_patches), pred)


def _official_init(weight_init):
  model = _model(depth=3)
  params = model.init(jax.random.key(0), jnp.zeros((1, 24, 24, 3)),
                      jnp.zeros((1, GRID * GRID)))["params"]
  return params, cae.official_init(params, jax.random.key(1), weight_init)


def test_official_init_draws_patch_embedding_and_cls_token_cut_at_one_std():
  params, redrawn = _official_init("xavier")
  for name in ("patch_embed", "cls_token"):
    value = redrawn["encoder"][name]
    value = value["kernel"] if name == "patch_embed" else value
    assert np.abs(value).max() <= cae.INIT_STD
    assert np.abs(value).max() > 0.8 * cae.INIT_STD
  # The linear layers keep xavier-uniform, wider than 0.02 at these fans.
  qkv = redrawn["encoder"]["transformer"]["blocks_0"]["attn"]["qkv"]
  np.testing.assert_array_equal(
      qkv["kernel"],
      params["encoder"]["transformer"]["blocks_0"]["attn"]["qkv"]["kernel"])
  assert np.abs(qkv["kernel"]).max() > cae.INIT_STD


def test_beit_init_rescales_each_blocks_output_projections():
  _, redrawn = _official_init("beit")
  for i in range(3):
    block = redrawn["encoder"]["transformer"][f"blocks_{i}"]
    bound = cae.INIT_STD / np.sqrt(2 * (i + 1))
    for kernel in (block["attn"]["proj"]["kernel"],
                   block["mlp"]["fc2"]["kernel"]):
      assert bound * 0.8 < np.abs(kernel).max() <= bound * (1 + 1e-6)
    assert np.abs(block["mlp"]["fc1"]["kernel"]).max() > 0.8 * cae.INIT_STD
  head = redrawn["decoder"]["head"]["kernel"]
  assert np.abs(head).max() <= cae.INIT_STD
  regressor = redrawn["regressor"]["blocks_0"]["cross_attn"]
  assert np.abs(regressor["proj"]["kernel"]).max() <= cae.INIT_STD / np.sqrt(
      2)
  with pytest.raises(ValueError, match="weight_init='lecun'"):
    cae.official_init(redrawn, jax.random.key(0), "lecun")


def test_unknown_target_is_a_clear_error():
  with pytest.raises(ValueError, match="target='rgb'.*pixels"):
    _model(target="rgb").init(jax.random.key(0), jnp.zeros((1, 24, 24, 3)),
                              jnp.zeros((1, GRID * GRID)))
