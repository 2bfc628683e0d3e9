"""The attention forms that benchmarks/tpu_attention_variants.py estimates
compute the model's attention layer, values and gradients (run on CPU)."""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "benchmarks"))
import tpu_attention_variants as variants  # pylint: disable=g-import-not-at-top,wrong-import-position


# 32- and 64-wide heads: four and two heads per group of 128 lanes.
@pytest.mark.parametrize("heads,width", [(4, 128), (4, 256)])
@pytest.mark.parametrize("name", sorted(set(variants.VARIANTS) - {"current"}))
def test_each_variant_is_the_models_attention_layer(name, heads, width):
  tokens = 5
  keys = jax.random.split(jax.random.key(0), 6)
  # Unit-variance activations and kernels of 1 / sqrt(fan-in), as in a
  # trained layer (larger ones saturate the softmax).
  scales = (1.0, width ** -0.5, 0.1, width ** -0.5, 0.1, 1.0)
  inputs = [scale * jax.random.normal(key, spec.shape, jnp.float32)
            for key, spec, scale in zip(
                keys, variants.layer_inputs(4, tokens, width), scales)]
  def run(layer):
    return variants.forward_and_backward(functools.partial(
        layer, num_heads=heads, dtype=jnp.float32))(*inputs)
  expected = run(variants.current)
  got = run(variants.VARIANTS[name])
  for want, have in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(have, want, rtol=1e-4,
                               atol=1e-5 * float(np.abs(want).max()))
