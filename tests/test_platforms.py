import jax
import jax.numpy as jnp
import numpy as np

from mae_jax import platforms


def _scaled(x):
  return platforms.per_platform(x, cpu=lambda y: y * 3.0,
                                accelerator=lambda y: y * 5.0)


def test_a_step_run_on_cpu_takes_the_cpu_path():
  np.testing.assert_allclose(jax.jit(_scaled)(jnp.ones(2)), [3.0, 3.0])


def test_a_step_lowered_for_tpu_here_takes_the_accelerator_path():
  # The platform compiled for decides, not this process's CPU backend.
  exported = jax.export.export(jax.jit(_scaled), platforms=["tpu"])(
      jax.ShapeDtypeStruct((2,), jnp.float32))
  text = exported.mlir_module()
  assert "5.000000e+00" in text and "3.000000e+00" not in text


def test_gradients_flow_through_the_chosen_path():
  grad = jax.grad(lambda x: _scaled(x).sum())(jnp.ones(2))
  np.testing.assert_allclose(grad, [3.0, 3.0])
