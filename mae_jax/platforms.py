"""Code chosen by the platform that a step is compiled for.

XLA:CPU and XLA:TPU want different forms of the same computation: layouts
that XLA:TPU picks for itself cost copies on CPU, reshapes that are free on
CPU cost copies on TPU, and a gather is a cheap loop on CPU but an expensive
operation on TPU where a one-hot matmul is nearly free. `per_platform` makes
the choice when the step is lowered, for the platform it is compiled *for*
(`lax.platform_dependent`), not this process's default backend: a step
compiled on a CPU machine for a TPU topology (mae_jax.tpu_estimate) takes
the accelerator path, as it would on the TPU. Only the chosen path is
compiled.
"""

from typing import Callable

import jax


def per_platform(*args, cpu: Callable, accelerator: Callable):
  """`cpu(*args)` in a step compiled for a CPU, else `accelerator(*args)`.

  Both must compute the same function; the tests compare them on CPU.
  """
  return jax.lax.platform_dependent(*args, cpu=cpu, default=accelerator)
