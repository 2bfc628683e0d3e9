"""Placing pytrees on the local devices for a `jax.pmap`-ed step.

The pmapped steps take the train state unmapped (`in_axes=None`): one array
per leaf with a copy on every local device, no leading device axis. jax 0.10
writes pmap as a jit of a shard_map that squeezes the mapped axis off each
argument and adds it back to each output; through those reshapes XLA:CPU
does not update the donated state in place and copies all of it at every
step (1.34 GB for ViT-B, whose step was 1.11x slower for it on a 2-core
CPU: benchmarks/cpu_step_forms.py). XLA:TPU's estimate is the same
either way.

pmap keys its compilation cache on the input shardings, mesh axis name
included: inputs placed under another axis name than the step's own outputs
(as `flax.jax_utils.replicate` does) recompile the step on its second call.
Everything here is placed under the step's axis name, `AXIS`.
"""

import collections
import itertools
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

AXIS = "batch"


def _mesh(devices: Sequence[Any]) -> jax.sharding.Mesh:
  return jax.sharding.Mesh(np.asarray(devices), (AXIS,))


def replicate(tree, devices: Sequence[Any]):
  """Every leaf as one array replicated over `devices`, as the pmapped steps
  take the state (`in_axes=None`) and return it (`out_axes=None`).

  Each copy goes straight to its device; nothing holds all copies at once.
  """
  sharding = jax.NamedSharding(_mesh(devices), jax.P())

  def put(x):
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    return jax.make_array_from_single_device_arrays(
        x.shape, sharding, [jax.device_put(x, d) for d in devices])

  return jax.tree.map(put, tree)


def unreplicate(tree):
  """The first local device's copy of a replicated pytree (no host
  transfer)."""
  return jax.tree.map(lambda x: x.addressable_data(0), tree)


def shard(tree, devices: Sequence[Any]):
  """Host arrays shaped (len(devices), ...) -> one slice per device."""
  sharding = jax.NamedSharding(_mesh(devices), jax.P(AXIS))
  return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def prefetch_to_devices(iterator: Iterator, devices: Sequence[Any],
                        size: int = 2) -> Iterator:
  """Keeps `size` batches in flight to the devices ahead of the step."""
  queue = collections.deque()
  for batch in itertools.islice(iterator, size):
    queue.append(shard(batch, devices))
  while queue:
    yield queue.popleft()
    for batch in itertools.islice(iterator, 1):
      queue.append(shard(batch, devices))


def summed_over_processes(count: int) -> int:
  """A per-process count summed over all processes (every one must call)."""
  if jax.process_count() == 1:
    return count
  return int(np.sum(multihost_utils.process_allgather(np.int64(count))))
