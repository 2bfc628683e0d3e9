"""Placing pytrees on the local devices for a `jax.pmap`-ed step.

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


def _sharding(devices: Sequence[Any]) -> jax.NamedSharding:
  mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS,))
  return jax.NamedSharding(mesh, jax.P(AXIS))


def replicate(tree, devices: Sequence[Any]):
  """One copy of every leaf per device, stacked along a new leading axis.

  Each copy goes straight to its device; nothing holds all copies at once.
  """
  sharding = _sharding(devices)

  def put(x):
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    shards = [jax.device_put(x[None], d) for d in devices]
    return jax.make_array_from_single_device_arrays(
        (len(devices),) + x.shape, sharding, shards)

  return jax.tree.map(put, tree)


def unreplicate(tree):
  """The first device's copy of a replicated pytree (no host transfer)."""
  return jax.tree.map(lambda x: x.addressable_data(0).reshape(x.shape[1:]),
                      tree)


def shard(tree, devices: Sequence[Any]):
  """Host arrays shaped (len(devices), ...) -> one slice per device."""
  sharding = _sharding(devices)
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
