"""Other ways to write the attention layer, estimated by XLA for one v3 core.

The attention's token-by-token products take a large share of the TPU step
for few FLOPs (BENCHMARKS.md, benchmarks/tpu_op_breakdown.py). This script
compiles one attention layer, forward and backward, at the MAE encoders' and
decoder's shapes (32 images per core, bfloat16) in the form the model uses on
accelerators (`vit._attention_per_head`) and in the alternatives we tried,
each computing the same function (tests/test_tpu_attention_variants.py), and
prints XLA's estimated time of each as one JSON line:

  scripts/in_venv.sh --tpu_estimate python benchmarks/tpu_attention_variants.py

Then it compiles the whole MAE ViT-B pretraining step (as `python -m
mae_jax.benchmark --topology=v3-8 --pod=v3-128` does) with the model's
attention replaced by the form that wins at the layer level, heads in groups
of 128 lanes, in all blocks, in the encoder only and in the decoder only: a
layer's estimate alone does not tell what the step gains. It also tries
jax's Pallas flash attention (a fused kernel that keeps the logits on chip)
and prints why it gives no estimate. Needs libtpu.
"""

import functools
import json
import os
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import mae_vit_base_pretrain  # pylint: disable=g-import-not-at-top,wrong-import-position
from mae_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from mae_jax.models import vit  # pylint: disable=g-import-not-at-top,wrong-import-position

# (name, heads, tokens, width): MAE's encoders see 49 visible patches and
# the cls token; the decoder all 196 patches and the cls token.
SHAPES = (("ViT-B encoder", 12, 50, 768), ("ViT-L encoder", 16, 50, 1024),
          ("ViT-H encoder", 16, 65, 1280), ("MAE decoder", 16, 197, 512))
IMAGES_PER_CORE = 32


def _bnhd_attention(q, k, v):
  """`vit.attention` on (B, N, heads, head_dim) operands."""
  heads_first = lambda x: x.transpose(0, 2, 1, 3)
  return heads_first(vit.attention(*map(heads_first, (q, k, v))))


# The model's form on accelerators, kept apart from the name that
# `whole_step` replaces.
_MODEL_FORM = vit._attention_per_head  # pylint: disable=protected-access


def current(x, qkv_kernel, qkv_bias, proj_kernel, proj_bias, *, num_heads,
            dtype):
  """The model's form on accelerators."""
  return _MODEL_FORM(x, qkv_kernel, qkv_bias, proj_kernel, proj_bias,
                     num_heads=num_heads, dtype=dtype)


def one_einsum_over_the_kernel(x, qkv_kernel, qkv_bias, proj_kernel,
                               proj_bias, *, num_heads, dtype):
  """q, k and v from one einsum over the kernel seen as (D, 3, heads,
  head_dim): no column slices of the kernel."""
  d = x.shape[-1]
  kernel = qkv_kernel.astype(dtype).reshape(d, 3, num_heads, -1)
  bias = qkv_bias.astype(dtype).reshape(3, 1, num_heads, 1, -1)
  q, k, v = jnp.einsum("bnd,dthe->tbhne", x.astype(dtype), kernel) + bias
  return vit._merge_heads_by_einsum(vit.attention(q, k, v), proj_kernel,  # pylint: disable=protected-access
                                    proj_bias, dtype=dtype)


def fused_qkv_tokens_major(x, qkv_kernel, qkv_bias, proj_kernel, proj_bias,
                           *, num_heads, dtype):
  """One (B, N, 3D) product, split into (B, N, heads, head_dim) operands."""
  b, n, d = x.shape
  qkv = vit._dense_on_last_axis(x.astype(dtype), qkv_kernel.astype(dtype),  # pylint: disable=protected-access
                                qkv_bias.astype(dtype))
  q, k, v = qkv.reshape(b, n, 3, num_heads, -1).transpose(2, 0, 1, 3, 4)
  out = _bnhd_attention(q, k, v).reshape(b, n, d)
  return vit._dense_on_last_axis(out, proj_kernel.astype(dtype),  # pylint: disable=protected-access
                                 proj_bias.astype(dtype))


def separate_products_tokens_major(x, qkv_kernel, qkv_bias, proj_kernel,
                                   proj_bias, *, num_heads, dtype):
  """q, k and v each a (B, N, D) product, reshaped to heads."""
  b, n, d = x.shape
  q, k, v = (vit._dense_on_last_axis(  # pylint: disable=protected-access
      x.astype(dtype), qkv_kernel[:, i * d:(i + 1) * d].astype(dtype),
      qkv_bias[i * d:(i + 1) * d].astype(dtype)).reshape(b, n, num_heads, -1)
             for i in range(3))
  out = _bnhd_attention(q, k, v)
  kernel = proj_kernel.astype(dtype).reshape(num_heads, -1, d)
  return jnp.einsum("bnhe,hed->bnd", out, kernel) + proj_bias.astype(dtype)


def two_images_per_sequence(x, qkv_kernel, qkv_bias, proj_kernel, proj_bias,
                            *, num_heads, dtype):
  """Pairs of images' tokens as one sequence of twice the length, with a
  block-diagonal mask: a logit across images gets probability exactly 0."""
  b, n, d = x.shape
  pairs = x.reshape(b // 2, 2 * n, d)
  q, k, v = (vit._heads_by_einsum(  # pylint: disable=protected-access
      pairs, qkv_kernel[:, i * d:(i + 1) * d], qkv_bias[i * d:(i + 1) * d],
      num_heads=num_heads, dtype=dtype) for i in range(3))
  image = np.repeat(np.arange(2), n)
  mask = np.where(image[:, None] == image[None, :], 0.0, -np.inf)
  scale = np.float32(q.shape[-1] ** -0.5)
  logits = jnp.einsum("bhqd,bhkd->bhqk", q * scale.astype(q.dtype), k)
  probs = jax.nn.softmax(logits.astype(jnp.float32) + mask, axis=-1)
  out = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), v)
  out = vit._merge_heads_by_einsum(out, proj_kernel, proj_bias, dtype=dtype)  # pylint: disable=protected-access
  return out.reshape(b, n, d)


@jax.custom_vjp
def _grouped_attention(q, k, v, head_of_column):
  return _grouped_attention_forward(q, k, v, head_of_column)[0]


def _grouped_attention_forward(q, k, v, head_of_column):
  """Attention of G heads at once: q, k, v are (B, heads / G, N, G *
  head_dim) and `head_of_column` (G, G * head_dim) is 1 where a column
  belongs to head g. Each head's logits contract the full 128-wide group
  with the other heads' columns zeroed; as in `vit.attention`, the logits
  are kept in the compute dtype and the softmax is taken in float32."""
  scale = np.float32((q.shape[-1] // head_of_column.shape[0]) ** -0.5)
  logits = jnp.einsum("bhqc,bhkc,gc->bhgqk", q * scale.astype(q.dtype), k,
                      head_of_column)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  out = jnp.einsum("bhgqk,bhkc,gc->bhqc", probs, v, head_of_column)
  return out, (q, k, v, head_of_column, probs, out)


def _grouped_attention_backward(residuals, d_out):
  """`vit.attention`'s backward, head by head within the groups."""
  q, k, v, head_of_column, probs, out = residuals
  scale = np.float32((q.shape[-1] // head_of_column.shape[0]) ** -0.5)
  d_v = jnp.einsum("bhgqk,bhqc,gc->bhkc", probs, d_out, head_of_column)
  d_probs = jnp.einsum("bhqc,bhkc,gc->bhgqk", d_out, v, head_of_column)
  row = jnp.einsum("bhqc,bhqc,gc->bhgq", d_out.astype(jnp.float32),
                   out.astype(jnp.float32),
                   head_of_column.astype(jnp.float32))[..., None]
  d_logits = probs.astype(jnp.float32) * (d_probs.astype(jnp.float32) - row)
  d_logits = (d_logits * scale).astype(q.dtype)
  d_q = jnp.einsum("bhgqk,bhkc,gc->bhqc", d_logits, k, head_of_column)
  d_k = jnp.einsum("bhgqk,bhqc,gc->bhkc", d_logits, q, head_of_column)
  return d_q, d_k, d_v, None


_grouped_attention.defvjp(_grouped_attention_forward,
                          _grouped_attention_backward)


def heads_grouped_to_128_lanes(x, qkv_kernel, qkv_bias, proj_kernel,
                               proj_bias, *, num_heads, dtype):
  """The model's form with G = 128 / head_dim heads per group (2 for the
  64-wide heads of ViT-B/L, 4 for the decoder's 32-wide ones; none for
  ViT-H's 80-wide heads), so that the projections write 128-wide rows."""
  d = x.shape[-1]
  head_dim = d // num_heads
  group = 128 // head_dim if 128 % head_dim == 0 else 1
  if num_heads % group:
    group = 1
  q, k, v = (vit._heads_by_einsum(  # pylint: disable=protected-access
      x, qkv_kernel[:, i * d:(i + 1) * d], qkv_bias[i * d:(i + 1) * d],
      num_heads=num_heads // group, dtype=dtype) for i in range(3))
  columns = np.arange(group * head_dim) // head_dim
  head_of_column = jnp.asarray(columns[None, :] == np.arange(group)[:, None],
                               dtype)
  return vit._merge_heads_by_einsum(  # pylint: disable=protected-access
      _grouped_attention(q, k, v, head_of_column), proj_kernel, proj_bias,
      dtype=dtype)


VARIANTS = {f.__name__: f for f in (
    current, one_einsum_over_the_kernel, fused_qkv_tokens_major,
    separate_products_tokens_major, two_images_per_sequence,
    heads_grouped_to_128_lanes)}


def grouped_where(head_dims: tuple[int, ...]):
  """Heads in groups of 128 lanes in the blocks whose heads are
  `head_dims` wide (64: ViT-B's encoder, 32: the MAE decoder), the model's
  form elsewhere."""
  def layer(x, *weights, num_heads, dtype):
    form = (heads_grouped_to_128_lanes
            if x.shape[-1] // num_heads in head_dims else current)
    return form(x, *weights, num_heads=num_heads, dtype=dtype)
  return layer


WHOLE_STEP_FORMS = {
    "current": current,
    "heads_grouped_to_128_lanes": grouped_where((32, 64)),
    "heads_grouped_in_the_encoder_only": grouped_where((64,)),
    "heads_grouped_in_the_decoder_only": grouped_where((32,)),
}


def whole_step(form) -> dict:
  """XLA's estimate of the MAE ViT-B pretraining step (v3-8, 32 images per
  core) with every attention block in `form`."""
  from mae_jax import tpu_estimate  # pylint: disable=g-import-not-at-top
  with mock.patch.object(vit, "_attention_per_head", form):
    return tpu_estimate.estimate(mae_vit_base_pretrain.get_config(), "v3-8",
                                 "v3-128")


def forward_and_backward(layer):
  """`run(*inputs, d_out)`: the layer's output and its gradients with
  respect to all its inputs."""
  def run(*args):
    *inputs, d_out = args
    out, vjp = jax.vjp(layer, *inputs)
    return out, vjp(d_out)
  return run


def layer_inputs(images: int, tokens: int, width: int, sharding=None):
  """Abstract (x, qkv kernel and bias, proj kernel and bias, d_out)."""
  shape = lambda s, dtype: jax.ShapeDtypeStruct(s, dtype, sharding=sharding)
  return (shape((images, tokens, width), jnp.bfloat16),
          shape((width, 3 * width), jnp.float32),
          shape((3 * width,), jnp.float32),
          shape((width, width), jnp.float32), shape((width,), jnp.float32),
          shape((images, tokens, width), jnp.bfloat16))


def _seconds(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["optimal_seconds"])


def pallas_flash_attention(device, heads: int, tokens: int,
                           head_dim: int) -> dict:
  """Whether jax's Pallas flash attention compiles for `device`, and XLA's
  estimate of it if so."""
  from jax.experimental.pallas.ops.tpu import flash_attention  # pylint: disable=g-import-not-at-top
  padded = -(-tokens // 128) * 128  # its blocks are multiples of 128
  shape = jax.ShapeDtypeStruct((IMAGES_PER_CORE, heads, padded, head_dim),
                               jnp.bfloat16,
                               sharding=jax.sharding.SingleDeviceSharding(
                                   device))
  attend = functools.partial(flash_attention.flash_attention,
                             sm_scale=head_dim ** -0.5)
  lowered = jax.jit(forward_and_backward(attend)).lower(shape, shape, shape,
                                                        shape)
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    # Mosaic's compile errors have no public type.
    return {"compiles": False, "error": str(e).splitlines()[0][:300]}
  return {"compiles": True, "estimated_s": _seconds(compiled)}


def main():
  from mae_jax import tpu_estimate  # pylint: disable=g-import-not-at-top
  for topology in ("v3-8", "v4-8"):
    device = tpu_estimate.compile_only_devices(
        tpu_estimate.topology(topology))[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    for name, heads, tokens, width in SHAPES:
      line = {"topology": topology, "layer": name, "heads": heads,
              "tokens": tokens, "width": width, "images": IMAGES_PER_CORE}
      if topology == "v3-8":
        for variant, layer in VARIANTS.items():
          compiled = jax.jit(forward_and_backward(functools.partial(
              layer, num_heads=heads, dtype=jnp.bfloat16))).lower(
                  *layer_inputs(IMAGES_PER_CORE, tokens, width,
                                sharding)).compile()
          print(json.dumps({**line, "variant": variant,
                            "estimated_ms": 1e3 * _seconds(compiled)}),
                flush=True)
      print(json.dumps({**line, "variant": "pallas flash attention "
                        "(attention alone)", **pallas_flash_attention(
                            device, heads, tokens, width // heads)}),
            flush=True)
  for variant, form in WHOLE_STEP_FORMS.items():
    result = whole_step(form)
    print(json.dumps({
        "topology": "v3-8", "step": "MAE base pretraining", "variant": variant,
        "batch_per_device": result["batch_per_device"],
        "estimated_step_ms": 1e3 * result["estimated_step_s"],
        "executed_gflop_per_img": result["executed_gflop_per_img"],
        "memory_total_gib": result["memory_total_gib"]}), flush=True)


if __name__ == "__main__":
  cli.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
  cli.run(main)
