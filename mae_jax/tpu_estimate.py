"""XLA's estimate of the train step on a TPU this machine does not have.

With libtpu installed (`scripts/in_venv.sh --tpu_estimate`), XLA compiles for a
named TPU topology with no TPU attached: `jax.experimental.topologies` gives
compile-only devices, and the compiled step's `cost_analysis()` holds XLA's
own estimate of its run time (`optimal_seconds`) and its `memory_analysis()`
the bytes each device needs. Nothing runs: these are cost-model estimates,
not measurements.

The step compiled is the trainer's (`train.train_step` of the config's task,
the gradient all-reduce included) over every device of the topology, with
`pmap`'s semantics (`pmap_equivalent`): `jax.pmap` itself needs devices that
exist.
"""

import dataclasses
import functools
import os
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mae_jax import durations
from mae_jax import models
from mae_jax import optim
from mae_jax import tasks
from mae_jax import train


# The recipes' data set: ImageNet-1k's training split, whose size turns
# their epochs into steps (the run reads it from the data set instead).
IMAGENET_TRAIN_EXAMPLES = 1_281_167


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice as JAX sees it: one JAX device per TensorCore on v3, per
  chip on v4 (megacore: both TensorCores as one device) and on v5e/v6e (one
  TensorCore per chip)."""
  platform: str
  topology_name: str  # for jax.experimental.topologies
  devices: int  # JAX devices in the slice
  devices_per_host: int
  hbm_gib: float  # per JAX device
  peak_bf16_tflops: float  # dense, per JAX device
  compile_options: tuple[tuple[str, Any], ...] = ()


# Chip figures from Google Cloud's TPU pages (cloud.google.com/tpu/docs/v3,
# .../v4, .../v5e, .../v6e): v3 123 TFLOP/s bf16 and 32 GiB HBM per chip of
# two TensorCores, 4 chips per host; v4 275 TFLOP/s and 32 GiB per chip,
# 4 chips per host; v5e 197 TFLOP/s and 16 GB per chip, 8 chips per host;
# v6e 918 TFLOP/s and 32 GB per chip, 8 chips per host. Slice names count
# TensorCores on v3/v4 and chips on v5e/v6e, as Cloud's accelerator types do.
_V3 = dict(platform="tpu", devices_per_host=8, hbm_gib=16.0,
           peak_bf16_tflops=61.5)
_V4 = dict(platform="tpu", devices_per_host=4, hbm_gib=32.0,
           peak_bf16_tflops=275.0,
           compile_options=(("chip_config_name", "megacore"),))
_V5E = dict(platform="tpu", devices_per_host=8, hbm_gib=16e9 / 2**30,
            peak_bf16_tflops=197.0,
            compile_options=(("chips_per_host_bounds", (2, 4, 1)),))
_V6E = dict(platform="tpu", devices_per_host=8, hbm_gib=32e9 / 2**30,
            peak_bf16_tflops=918.0,
            compile_options=(("chips_per_host_bounds", (2, 4, 1)),))
TOPOLOGIES = {
    "v3-8": Topology(topology_name="v3:2x2", devices=8, **_V3),
    "v3-32": Topology(topology_name="v3:4x4", devices=32, **_V3),
    "v3-128": Topology(topology_name="v3:8x8", devices=128, **_V3),
    "v4-8": Topology(topology_name="v4:2x2x1", devices=4, **_V4),
    "v4-32": Topology(topology_name="v4:2x2x4", devices=16, **_V4),
    "v5e-8": Topology(topology_name="v5e:2x4", devices=8, **_V5E),
    "v5e-16": Topology(topology_name="v5e:4x4", devices=16, **_V5E),
    "v5e-256": Topology(topology_name="v5e:16x16", devices=256, **_V5E),
    "v6e-8": Topology(topology_name="v6e:2x4", devices=8, **_V6E),
}


def topology(name: str) -> Topology:
  if name not in TOPOLOGIES:
    raise ValueError(f"unknown topology {name!r}; use one of "
                     f"{sorted(TOPOLOGIES)}")
  return TOPOLOGIES[name]


def libtpu_missing() -> str | None:
  """Why TPU steps cannot be compiled here, or None if they can."""
  try:
    import libtpu  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return ("libtpu is not installed here; run the command with "
            "`scripts/in_venv.sh --tpu_estimate ...` (it builds .venv-tpu with "
            "libtpu==0.0.42.* for jax 0.10.2), or `pip install -e "
            ".[tpu_estimate]` into an environment of its own")
  return None


def compile_only_devices(top: Topology) -> list:
  """The slice's devices, for compiling only (they cannot run anything)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  missing = libtpu_missing()
  if missing:
    raise RuntimeError(missing)
  # libtpu locks a file so that one process owns the TPU; compiling only,
  # several processes (tests, benchmarks) can share it.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  devices = topologies.get_topology_desc(
      platform=top.platform, topology_name=top.topology_name,
      **dict(top.compile_options)).devices
  if len(devices) != top.devices:
    raise RuntimeError(f"{top.topology_name} gave {len(devices)} devices, "
                       f"expected {top.devices}; is libtpu 0.0.42?")
  return list(devices)


def pmap_equivalent(fun: Callable, devices: Sequence[Any], axis_name: str,
                    in_axes: tuple[int | None, ...],
                    out_axes: tuple[int | None, ...],
                    donate_argnums: tuple[int, ...] = ()) -> Callable:
  """`jax.pmap(fun, axis_name, in_axes=..., out_axes=..., donate_argnums=...)`
  over `devices`, written as jax 0.10 writes pmap: jit of a shard_map that
  strips the leading (device) axis of each mapped argument and adds it back
  to each mapped output; an unmapped one (None) is replicated as it is. One
  axis (0 or None) per argument and per output.

  Unlike pmap it takes devices that cannot run (compile-only TPU devices),
  so `.lower(...).compile()` works on any machine. `check_vma=False`, as
  pmap: a gradient with respect to an argument is then this device's own,
  and the step's `pmean` averages it (with the default check, shard_map
  would already have summed the gradients of replicated arguments).
  """
  mesh = Mesh(np.asarray(devices), (axis_name,))
  spec = lambda axis: P() if axis is None else P(axis_name)

  def per_device(*args):
    args = [arg if axis is None else jax.tree.map(lambda x: x[0], arg)
            for arg, axis in zip(args, in_axes)]
    outs = fun(*args)
    return tuple(out if axis is None else jax.tree.map(lambda x: x[None], out)
                 for out, axis in zip(outs, out_axes))

  return jax.jit(jax.shard_map(
      per_device, mesh=mesh, in_specs=tuple(map(spec, in_axes)),
      out_specs=tuple(map(spec, out_axes)), check_vma=False),
                 donate_argnums=donate_argnums)


def for_platform(config: ml_collections.ConfigDict, platform: str
                 ) -> ml_collections.ConfigDict:
  """`config` with the model's 'auto' compute dtype resolved for `platform`
  (this process's default backend is the CPU that compiles, not the TPU)."""
  config = ml_collections.ConfigDict(config.to_dict())
  dtype = models.compute_dtype(config.model.dtype, platform)
  config.model.dtype = jnp.dtype(dtype).name
  return config


def batch_shapes(config: ml_collections.ConfigDict, per_device_batch: int
                 ) -> dict[str, jax.ShapeDtypeStruct]:
  """One device's share of a training batch as the input pipeline makes it
  (CAE's DALL-E target also reads a second, smaller view of each image)."""
  size = config.model.image_size
  shapes = {
      "image": jax.ShapeDtypeStruct((per_device_batch, size, size, 3),
                                    jnp.uint8),
      "label": jax.ShapeDtypeStruct((per_device_batch,), jnp.int32),
      "example_id": jax.ShapeDtypeStruct((per_device_batch,), jnp.int32),
  }
  second = config.data.get("second_view_size", 0)
  if second:
    shapes["second_view"] = jax.ShapeDtypeStruct(
        (per_device_batch, second, second, 3), jnp.uint8)
  return shapes


def _abstract_step_inputs(task, config: ml_collections.ConfigDict,
                          schedule, devices: Sequence[Any],
                          per_device_batch: int):
  """Shapes of (state, batch, rng) as the trainer feeds its pmapped step
  (`train.STEP_IN_AXES`): the state and the key replicated, each device's
  share of the batch stacked along a leading axis."""
  mesh = Mesh(np.asarray(devices), (train.AXIS,))

  def placed(tree, axis):
    if axis is None:
      return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=NamedSharding(mesh, P())), tree)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        (len(devices),) + x.shape, x.dtype,
        sharding=NamedSharding(mesh, P(train.AXIS))), tree)

  state = jax.eval_shape(lambda rng: train.create_train_state(
      task, config, rng, schedule, load_init_from=False), jax.random.key(0))
  batch = batch_shapes(config, per_device_batch)
  rng = jax.eval_shape(lambda: jax.random.key(0))
  return tuple(map(placed, (state, batch, rng), train.STEP_IN_AXES))


def _pmapped_train_step(task, config: ml_collections.ConfigDict, schedule,
                        devices: Sequence[Any], donate: bool) -> Callable:
  """`train.pmap_train_step` in pmap_equivalent's form."""
  return pmap_equivalent(
      functools.partial(train.train_step, task=task, schedule=schedule,
                        grad_accum_steps=config.grad_accum_steps),
      devices, train.AXIS, train.STEP_IN_AXES, train.STEP_OUT_AXES,
      donate_argnums=(0,) if donate else ())


def compile_train_step(task, config: ml_collections.ConfigDict,
                       devices: Sequence[Any], per_device_batch: int):
  """The trainer's pmapped step for `devices`, compiled (not run)."""
  schedule = optim.make_schedule(config)
  step = _pmapped_train_step(task, config, schedule, devices, donate=True)
  return step.lower(*_abstract_step_inputs(
      task, config, schedule, devices, per_device_batch)).compile()


def _single(analysis):
  return analysis[0] if isinstance(analysis, (list, tuple)) else analysis


def model_flops_per_device(task_factory: Callable, config, per_device_batch:
                           int) -> float:
  """FLOPs of one device's step without activation recomputation (`remat`),
  from XLA's analysis of the step lowered for this machine's CPU: the work
  the model needs, which `remat` repeats in part."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.remat = False
  task = task_factory(config)
  schedule = optim.warmup_cosine_schedule(1.0, 1, 2)
  devices = jax.local_devices(backend="cpu")[:1]
  step = _pmapped_train_step(task, config, schedule, devices, donate=False)
  lowered = step.lower(*_abstract_step_inputs(
      task, config, schedule, devices, per_device_batch))
  return float(_single(lowered.cost_analysis())["flops"])


def estimate(config: ml_collections.ConfigDict, topology_name: str,
             pod_name: str | None = None,
             task_factory: Callable | None = None,
             num_examples: int = IMAGENET_TRAIN_EXAMPLES) -> dict:
  """XLA's estimates for `config`'s train step on `topology_name`, with the
  per-device batch of the recipe on `pod_name` (default: the same slice);
  the recipe's epochs are of `num_examples` images.

  `task_factory(config) -> task` builds another task (the stock-Flax
  reference in benchmarks/); by default the config's own.
  """
  top, pod = topology(topology_name), topology(pod_name or topology_name)
  if (top.platform, top.peak_bf16_tflops) != (pod.platform,
                                              pod.peak_bf16_tflops):
    raise ValueError(f"--pod={pod_name} is not the chip of "
                     f"--topology={topology_name}; name a slice of the same "
                     "TPU generation")
  if pod.devices < top.devices:
    raise ValueError(f"--pod={pod_name} ({pod.devices} devices) is smaller "
                     f"than --topology={topology_name} ({top.devices}): --pod "
                     "is the whole slice the recipe runs on, --topology the "
                     "part compiled for; did you swap them?")
  train.require_a_train_step(config)
  config = for_platform(config, top.platform)
  train.validate_config(config, 1, pod.devices)
  config = durations.resolve(config, num_examples)
  per_device = config.batch_size // pod.devices
  task_factory = task_factory or (
      lambda c: tasks.make_task(c, train.AXIS))
  devices = compile_only_devices(top)

  start = time.perf_counter()
  compiled = compile_train_step(task_factory(config), config, devices,
                                per_device)
  compile_s = time.perf_counter() - start
  cost = _single(compiled.cost_analysis())
  memory = compiled.memory_analysis()
  executed_flops = float(cost["flops"])
  model_flops = (model_flops_per_device(task_factory, config, per_device)
                 if config.model.remat else executed_flops)
  step_s = float(cost["optimal_seconds"])
  gib = lambda n: n / 2**30
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes -
           memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  return {
      "impl": "mae_jax",
      **describe(config),
      "dtype": config.model.dtype,
      "topology": topology_name,
      "device_kind": devices[0].device_kind,
      "pod": pod_name or topology_name,
      "batch_per_device": per_device,
      "grad_accum_steps": config.grad_accum_steps,
      "memory_arguments_gib": gib(memory.argument_size_in_bytes),
      "memory_outputs_gib": gib(memory.output_size_in_bytes),
      "memory_aliased_gib": gib(memory.alias_size_in_bytes),
      "memory_temporaries_gib": gib(memory.temp_size_in_bytes),
      "memory_total_gib": gib(total),
      "hbm_gib": top.hbm_gib,
      "fits_hbm": gib(total) <= top.hbm_gib,
      "train_gflop_per_img": model_flops / per_device / 1e9,
      "executed_gflop_per_img": executed_flops / per_device / 1e9,
      "peak_bf16_tflops_per_device": top.peak_bf16_tflops,
      "estimated_step_s": step_s,
      "estimated_img_per_s_per_device": per_device / step_s,
      "estimated_mfu": model_flops / step_s / (top.peak_bf16_tflops * 1e12),
      "recipe_steps": config.total_steps,
      "estimated_recipe_hours": config.total_steps * step_s / 3600,
      "compile_s": compile_s,
  }


def define_flags(config_help: str):
  """--config, --topology and --pod for a script that estimates a step
  (benchmarks/), as `mae_jax.benchmark` has them. Defined when the script
  runs, not at import: tests import these scripts next to
  mae_jax.benchmark, which has flags of the same names."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, config_help,
                                  lock_config=True)
  flags.DEFINE_enum("topology", "v3-8", sorted(TOPOLOGIES),
                    "The TPU slice to compile the step for.")
  flags.DEFINE_enum("pod", None, sorted(TOPOLOGIES),
                    "The slice the recipe runs on, which sets the per-device "
                    "batch; default: --topology.")
  flags.mark_flags_as_required(["config"])
  # absl files a flag under the module that defines it (this one); the
  # script's --helpshort lists its key flags, so make these the script's.
  for name in ("config", "topology", "pod"):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])


def describe(config: ml_collections.ConfigDict) -> dict:
  """What a benchmark line measured: mode, model, options and batch."""
  model = config.model
  described = {"mode": config.mode, "model": models.size_name(model)}
  if config.mode == "pretrain" and models.method_of(model) == "cae":
    # The regressor and decoder have the encoder's width.
    described.update(decoder=f"regressor {model.regressor_depth}x"
                     f"{model.width} + decoder {model.decoder_depth}x"
                     f"{model.width}", mask_ratio=model.mask_ratio)
  elif config.mode == "pretrain":
    described.update(decoder=f"{model.decoder_depth}x{model.decoder_width}",
                     mask_ratio=model.mask_ratio,
                     encoder_mask_tokens=model.encoder_mask_tokens)
  return {**described, "remat": model.remat, "batch": config.batch_size}
