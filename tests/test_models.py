import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from configs import common
from mae_jax import models
from mae_jax.models import vit
from testing_utils import tiny_model


def official_sincos_2d(embed_dim, grid_size):
  """The reference's get_2d_sincos_pos_embed, transcribed (w first, then h)."""

  def one_dim(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  grid = np.meshgrid(np.arange(grid_size, dtype=np.float32),
                     np.arange(grid_size, dtype=np.float32))
  grid = np.stack(grid, axis=0).reshape(2, 1, grid_size, grid_size)
  return np.concatenate([one_dim(embed_dim // 2, grid[0]),
                         one_dim(embed_dim // 2, grid[1])], axis=1)


def _init(model, batch=2, seed=0):
  images = jnp.zeros((batch, model.image_size, model.image_size, 3))
  noise = jax.random.uniform(jax.random.key(seed + 1),
                             (batch, model.num_patches))
  return model.init(jax.random.key(seed), images, noise)["params"], images


class ModelTest(chex.TestCase, parameterized.TestCase):

  @parameterized.parameters(("base/16", 86e6), ("large/16", 304e6),
                            ("huge/14", 632e6))
  def test_encoder_parameter_count_matches_the_paper(self, name, expected):
    model = models.build(common.mae_model(name, dtype="float32"))
    shapes = jax.eval_shape(lambda: _init(model)[0])
    count = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["encoder"]))
    self.assertAlmostEqual(count / expected, 1.0, delta=0.01)

  def test_sincos_matches_the_official_layout(self):
    np.testing.assert_allclose(vit.sincos_pos_embed_2d(64, 5, 5),
                               official_sincos_2d(64, 5), atol=1e-6)

  def test_sincos_non_square_grid_is_row_major(self):
    table = vit.sincos_pos_embed_2d(16, 2, 3)
    # Token (h=1, w=2) is row-major index 5; its w part is sin/cos(2*omega).
    np.testing.assert_allclose(table[5, 0], np.sin(2.0), atol=1e-6)
    np.testing.assert_allclose(table[5, 8], np.sin(1.0), atol=1e-6)

  def test_output_shapes_and_given_noise_reproduces_the_masking(self):
    model = models.build(tiny_model())
    params, _ = _init(model)
    images = jax.random.normal(jax.random.key(2), (3, 16, 16, 3))
    noise = jax.random.uniform(jax.random.key(3), (3, 16))
    out1 = model.apply({"params": params}, images, noise=noise)
    out2 = jax.jit(model.apply)({"params": params}, images, noise=noise)
    chex.assert_shape(out1.pred, (3, 16, 48))
    chex.assert_shape(out1.mask, (3, 16))
    np.testing.assert_array_equal(out1.mask.sum(1), [12, 12, 12])
    np.testing.assert_array_equal(out1.mask, out2.mask)
    np.testing.assert_allclose(out1.loss, out2.loss, rtol=1e-5)
    np.testing.assert_array_equal(
        out1.mask, (noise >= np.sort(noise, 1)[:, 4:5]).astype(np.float32))

  def test_without_noise_the_masking_rng_stream_is_used(self):
    model = models.build(tiny_model())
    params, images = _init(model)
    masks = [model.apply({"params": params}, images,
                         rngs={"masking": jax.random.key(s)}).mask
             for s in (0, 0, 1)]
    np.testing.assert_array_equal(masks[0], masks[1])
    self.assertFalse(np.array_equal(masks[0], masks[2]))

  def test_bfloat16_compute_keeps_float32_params_and_loss(self):
    model = models.build(tiny_model(dtype="bfloat16"))
    params, images = _init(model)
    self.assertTrue(all(x.dtype == jnp.float32
                        for x in jax.tree.leaves(params)))
    out = model.apply({"params": params}, images + 1.0,
                      noise=jnp.ones((2, 16)))
    self.assertEqual(out.loss.dtype, jnp.float32)
    self.assertEqual(out.pred.dtype, jnp.float32)
    self.assertTrue(np.isfinite(out.loss))

  def test_remat_changes_memory_not_results(self):
    plain = models.build(tiny_model())
    remat = models.build(tiny_model(remat=True))
    params, _ = _init(plain)
    images = jax.random.normal(jax.random.key(4), (2, 16, 16, 3))
    noise = jax.random.uniform(jax.random.key(5), (2, 16))

    def loss_and_grads(model):
      return jax.value_and_grad(lambda p: model.apply(
          {"params": p}, images, noise=noise).loss)(params)

    chex.assert_trees_all_close(loss_and_grads(plain), loss_and_grads(remat),
                                rtol=1e-5, atol=1e-6)

  def test_init_follows_the_reference(self):
    model = models.build(tiny_model(width=64, mlp_dim=128))
    params, _ = _init(model, seed=7)
    kernel = params["encoder"]["patch_embed"]["kernel"]  # (4*4*3, 64)
    bound = np.sqrt(6 / (48 + 64))  # xavier-uniform on (fan_in, fan_out)
    self.assertLessEqual(np.abs(kernel).max(), bound)
    self.assertGreater(np.abs(kernel).max(), 0.9 * bound)
    qkv = params["encoder"]["transformer"]["blocks_0"]["attn"]["qkv"]
    self.assertLessEqual(np.abs(qkv["kernel"]).max(),
                         np.sqrt(6 / (64 + 192)))
    np.testing.assert_array_equal(qkv["bias"], 0.0)
    norm = params["encoder"]["transformer"]["norm"]
    np.testing.assert_array_equal(norm["scale"], 1.0)
    np.testing.assert_array_equal(norm["bias"], 0.0)
    self.assertAlmostEqual(float(params["decoder"]["mask_token"].std()),
                           0.02, delta=0.01)

  def test_patch_embedding_bias_has_the_conv_default_init(self):
    # PyTorch's Conv2d bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in 3*p*p,
    # which the reference keeps.
    model = models.build(tiny_model(width=256))
    params, _ = _init(model, seed=3)
    bias = np.asarray(params["encoder"]["patch_embed"]["bias"])
    bound = 1 / np.sqrt(3 * 4 * 4)
    self.assertLessEqual(np.abs(bias).max(), bound)
    uniform_std = bound / np.sqrt(3)
    self.assertAlmostEqual(float(bias.std()), uniform_std,
                           delta=0.2 * uniform_std)

  def test_encoder_runs_at_another_resolution(self):
    model = models.build(tiny_model())
    params, _ = _init(model)
    encoder = models.VisionEncoder(4, 32, 2, 2, 64)
    out = encoder.apply({"params": params["encoder"]}, jnp.ones((1, 24, 24, 3)))
    chex.assert_shape(out, (1, 1 + 36, 32))

  def test_encoder_mask_tokens_encode_every_patch(self):
    # MAE Table 1c "w/ [M]": 1 + L encoder tokens instead of 1 + L/4.
    model = models.build(tiny_model(encoder_mask_tokens=True))
    params, _ = _init(model)
    self.assertIn("mask_token", params)
    self.assertNotIn("mask_token", params["decoder"])  # no tokens to add
    images = jax.random.normal(jax.random.key(6), (2, 16, 16, 3))
    noise = jax.random.uniform(jax.random.key(7), (2, 16))
    latent, mask, _ = model.apply({"params": params}, images, noise,
                                  method=models.MAE.encode)
    chex.assert_shape(latent, (2, 1 + 16, 32))
    plain = models.build(tiny_model())
    plain_latent, _, _ = plain.apply({"params": _init(plain)[0]}, images,
                                     noise, method=models.MAE.encode)
    chex.assert_shape(plain_latent, (2, 1 + 4, 32))

    # The encoder never sees a removed patch's pixels, only the mask token.
    removed = jnp.repeat(jnp.repeat(mask.reshape(2, 4, 4), 4, 1), 4, 2)
    altered = images + 5.0 * removed[..., None]
    pred = lambda x: model.apply({"params": params}, x, noise).pred
    np.testing.assert_allclose(pred(altered), pred(images), atol=1e-5)

    loss, grads = jax.value_and_grad(lambda p: model.apply(
        {"params": p}, images, noise).loss)(params)
    self.assertTrue(np.isfinite(loss))
    self.assertGreater(float(jnp.abs(grads["mask_token"]).sum()), 0.0)

  def test_unknown_dtype_is_rejected(self):
    with self.assertRaisesRegex(ValueError, "bfloat16"):
      models.compute_dtype("float8")


def _reference_attention(q, k, v):
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1])
  return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(logits, -1), v)


def test_attention_and_its_hand_written_gradient_match_autodiff():
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 3, 7, 8))
  cotangent = jax.random.normal(jax.random.key(1), (2, 3, 7, 8))

  def pullback(fn):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(cotangent)

  chex.assert_trees_all_close(pullback(vit.attention),
                              pullback(_reference_attention),
                              rtol=1e-5, atol=1e-5)


def test_attention_in_bfloat16_matches_float32_and_keeps_the_dtype():
  q, k, v = jax.random.normal(jax.random.key(2), (3, 1, 2, 5, 4))
  low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  out = vit.attention(*low)
  grads = jax.grad(lambda *a: vit.attention(*a).astype(jnp.float32).sum(),
                   argnums=(0, 1, 2))(*low)
  assert out.dtype == jnp.bfloat16
  assert all(g.dtype == jnp.bfloat16 for g in grads)
  np.testing.assert_allclose(out.astype(jnp.float32),
                             _reference_attention(q, k, v), atol=3e-2)


def test_gelu_is_the_exact_erf_gelu():
  x = jnp.linspace(-6, 6, 101)
  np.testing.assert_allclose(vit.gelu(x), jax.nn.gelu(x, approximate=False),
                             atol=1e-6)


def _weights(d, key):
  keys = jax.random.split(jax.random.key(key), 4)
  return (jax.random.normal(keys[0], (d, 3 * d)) / np.sqrt(d),
          jax.random.normal(keys[1], (3 * d,)),
          jax.random.normal(keys[2], (d, d)) / np.sqrt(d),
          jax.random.normal(keys[3], (d,)))


def test_cpu_and_accelerator_attention_agree_with_their_gradients():
  # The two forms `Attention` chooses between by platform (mae_jax/platforms.py).
  x = jax.random.normal(jax.random.key(0), (2, 7, 16))
  weights = _weights(16, 1)
  cotangent = jax.random.normal(jax.random.key(2), (2, 7, 16))

  def pullback(path):
    fn = lambda *a: path(*a, num_heads=4, dtype=jnp.float32)
    out, vjp = jax.vjp(fn, x, *weights)
    return out, vjp(cotangent)

  chex.assert_trees_all_close(pullback(vit._attention_per_head),
                              pullback(vit._attention_on_flat_tokens),
                              rtol=1e-5, atol=1e-5)


def test_cpu_and_accelerator_head_projections_agree_with_their_gradients():
  # The two forms of project_to_heads / project_from_heads (CAE's
  # cross-attention), and a round trip through both.
  x = jax.random.normal(jax.random.key(7), (2, 5, 12))
  kernel = jax.random.normal(jax.random.key(8), (12, 8))
  bias = jax.random.normal(jax.random.key(9), (8,))
  back = jax.random.normal(jax.random.key(10), (8, 6))
  back_bias = jax.random.normal(jax.random.key(11), (6,))
  cotangent = jax.random.normal(jax.random.key(12), (2, 5, 6))

  def pullback(to_heads, from_heads):
    def fn(*a):
      heads = to_heads(*a[:3], num_heads=2, dtype=jnp.float32)
      assert heads.shape == (2, 2, 5, 4)
      return from_heads(heads, *a[3:], dtype=jnp.float32)
    out, vjp = jax.vjp(fn, x, kernel, bias, back, back_bias)
    return out, vjp(cotangent)

  chex.assert_trees_all_close(
      pullback(vit._heads_by_einsum, vit._merge_heads_by_einsum),
      pullback(vit._heads_by_transpose, vit._merge_heads_by_transpose),
      rtol=1e-5, atol=1e-5)


def test_cpu_and_accelerator_dense_agree_with_their_gradients():
  x = jax.random.normal(jax.random.key(3), (2, 5, 8))
  kernel = jax.random.normal(jax.random.key(4), (8, 6))
  bias = jax.random.normal(jax.random.key(5), (6,))
  cotangent = jax.random.normal(jax.random.key(6), (2, 5, 6))

  def pullback(path):
    out, vjp = jax.vjp(path, x, kernel, bias)
    return out, vjp(cotangent)

  chex.assert_trees_all_close(pullback(vit._dense_on_last_axis),
                              pullback(vit._dense_on_flat_tokens),
                              rtol=1e-5, atol=1e-5)


def official_cae_sincos(embed_dim, grid_size):
  """Atten4Vis/CAE's build_2d_sincos_position_embedding, transcribed: a
  meshgrid of (w, h) in 'ij' order, so its 'w' half embeds the row."""
  grid_w, grid_h = np.meshgrid(np.arange(grid_size, dtype=np.float32),
                               np.arange(grid_size, dtype=np.float32),
                               indexing="ij")
  pos_dim = embed_dim // 4
  omega = 1.0 / 10000 ** (np.arange(pos_dim, dtype=np.float32) / pos_dim)
  out_w = np.einsum("m,d->md", grid_w.reshape(-1), omega)
  out_h = np.einsum("m,d->md", grid_h.reshape(-1), omega)
  return np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h),
                         np.cos(out_h)], axis=1)


def test_sincos_h_first_matches_the_official_cae_table():
  np.testing.assert_allclose(vit.sincos_pos_embed_2d(64, 5, 5, "h_first"),
                             official_cae_sincos(64, 5), atol=1e-6)
  assert not np.allclose(vit.sincos_pos_embed_2d(64, 5, 5, "w_first"),
                         official_cae_sincos(64, 5), atol=1e-3)
  with pytest.raises(ValueError, match="sincos_order='hw'"):
    vit.sincos_pos_embed_2d(64, 5, 5, "hw")


def _block_params(**options):
  block = vit.Block(2, 16, **options)
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  params = block.init(jax.random.key(1), x)["params"]
  noisy = jax.tree.map(
      lambda p: p + jax.random.normal(jax.random.key(2), p.shape), params)
  return block, noisy, x


def test_leaving_out_the_key_bias_changes_no_output():
  with_bias, params, x = _block_params()
  without = vit.Block(2, 16, key_bias=False)
  # Softmax ignores a key bias: the same parameters give the same output,
  # though the key third of the bias is not zero here.
  assert np.any(params["attn"]["qkv"]["bias"][8:16])
  np.testing.assert_allclose(without.apply({"params": params}, x),
                             with_bias.apply({"params": params}, x),
                             rtol=1e-5, atol=1e-5)


def test_layer_scale_gains_scale_each_branch():
  block, params, x = _block_params(layer_scale_init=0.1)
  init = block.init(jax.random.key(1), x)["params"]
  np.testing.assert_array_equal(init["layer_scale_attn"], np.float32(0.1))
  zero = dict(params, layer_scale_attn=jnp.zeros(8),
              layer_scale_mlp=jnp.zeros(8))
  np.testing.assert_array_equal(block.apply({"params": zero}, x), x)
  assert not np.allclose(block.apply({"params": params}, x), x)
