"""The train step's speed: python -m mae_jax.benchmark --config=... .

Timed (the default): the same task, optimizer and pmapped step as training,
on a synthetic batch that already sits on this machine's devices, so the
figure is the step's own speed. FLOPs come from XLA's cost analysis of the
compiled step; the model-FLOP utilisation (MFU) is measured against
`--peak_tflops`, else a table of known accelerators, else (CPUs) a measured
matmul peak.

Estimated (`--topology=v3-8`, optionally `--pod=v3-128`): the same step
compiled, not run, for a TPU slice this machine does not have, with XLA's
estimates of its time and memory (mae_jax/tpu_estimate.py; needs libtpu).

Both print one JSON line.
"""

# pylint: disable=g-import-not-at-top,wrong-import-position
if __name__ == "__main__":
  # glibc's huge-page malloc (mae_jax/huge_pages.py) needs a re-execution,
  # done before the heavy imports, which the new process repeats.
  from mae_jax import huge_pages
  huge_pages.reexec_with_huge_page_malloc()

import json
import os
import resource
import statistics
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from mae_jax import cli
from mae_jax import devices as devices_lib
from mae_jax import huge_pages
from mae_jax import models
from mae_jax import optim
from mae_jax import tasks
from mae_jax import tpu_estimate
from mae_jax import train
from mae_jax.data import throughput

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A configs/*.py file.",
                                lock_config=True)
flags.DEFINE_integer("steps", 10, "Timed steps.", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.",
                     lower_bound=0)
flags.DEFINE_float("peak_tflops", 0.0,
                   "Peak dense TFLOP/s of one device in the compute dtype; "
                   "0 = from the table of known devices, or measured (CPU).",
                   lower_bound=0.0)
flags.DEFINE_enum("topology", None, sorted(tpu_estimate.TOPOLOGIES),
                  "Estimate instead of timing: compile the step for this TPU "
                  "slice (needs libtpu) and print XLA's estimates.")
flags.DEFINE_enum("pod", None, sorted(tpu_estimate.TOPOLOGIES),
                  "With --topology: the slice the recipe runs on, which sets "
                  "the per-device batch and the recipe's wall-clock; default: "
                  "--topology.")
flags.DEFINE_bool("input_only", False,
                  "Time the config's input pipeline alone (img/s on this "
                  "host), not the train step.")
flags.mark_flags_as_required(["config"])

# Dense peak TFLOP/s per JAX device: (bfloat16, float32). A float32 matmul
# runs as bfloat16 passes on TPUs and as TF32 on NVIDIA GPUs since Ampere
# (JAX's default precision), so those are its peaks; NVIDIA's data sheets
# (A100, H100/H200 SXM), without sparsity.
KNOWN_PEAKS = {
    "TPU v2": (22.5, 22.5),  # per core
    "TPU v3": (61.5, 61.5),  # per core
    "TPU v4": (275.0, 275.0),
    "TPU v5 lite": (197.0, 197.0),
    "TPU v5": (459.0, 459.0),
    "TPU v6 lite": (918.0, 918.0),
    "NVIDIA A100-SXM4-40GB": (312.0, 156.0),
    "NVIDIA A100-SXM4-80GB": (312.0, 156.0),
    "NVIDIA H100 80GB HBM3": (989.0, 494.5),
    "NVIDIA H200": (989.0, 494.5),
}


def measured_matmul_tflops(dtype, sizes=(1024, 2048, 4096),
                           repeats=10) -> float:
  """Best square-matmul throughput of one device: its attainable peak.

  The fastest of several repeats at several sizes, as peaks are taken: on a
  shared or throttling machine a median would understate the peak and so
  overstate the utilisation.
  """
  matmul = jax.jit(lambda x: x @ x)
  best = 0.0
  for n in sizes:
    a = jnp.ones((n, n), dtype)
    matmul(a).block_until_ready()
    for _ in range(repeats):
      start = time.perf_counter()
      matmul(a).block_until_ready()
      best = max(best, 2 * n ** 3 / (time.perf_counter() - start) / 1e12)
  return best


def peak_tflops(device, dtype, flag_value: float) -> tuple[float, str]:
  """(peak TFLOP/s per device, where the number comes from)."""
  if flag_value > 0:
    return flag_value, "--peak_tflops"
  for kind, (bf16, fp32) in KNOWN_PEAKS.items():
    if device.device_kind == kind:
      if dtype == jnp.bfloat16:
        return bf16, f"table: {kind}, bfloat16"
      arithmetic = "tf32" if device.platform == "gpu" else "float32"
      return fp32, f"table: {kind}, {arithmetic}"
  return measured_matmul_tflops(dtype), "measured matmul"


def compiled_step(config, devices: Sequence[Any] | None = None) -> tuple:
  """The trainer's pmapped step for `config` over `devices` (all local
  ones by default), compiled, with a replicated state, a synthetic batch
  already on the devices and a step key:
  (compiled, state, batch, step_rng, compile_s, step FLOPs)."""
  devices = devices or jax.local_devices()
  train.require_a_train_step(config)
  train.validate_config(config, 1, len(devices))
  task = tasks.make_task(config, train.AXIS)
  schedule = optim.make_schedule(config)
  state = train.create_train_state(task, config, jax.random.key(0), schedule,
                                   load_init_from=False)
  p_step = train.pmap_train_step(task, config, schedule, devices)

  per_device = config.batch_size // len(devices)
  rng = np.random.default_rng(0)
  shapes = tpu_estimate.batch_shapes(config, per_device)
  batch = {
      name: rng.integers(0, 256, (len(devices),) + shape.shape,
                         dtype=np.uint8)
      for name, shape in shapes.items() if shape.dtype == np.uint8}
  batch["label"] = rng.integers(0, config.model.get("num_classes", 1),
                                (len(devices), per_device), dtype=np.int32)
  batch["example_id"] = np.arange(config.batch_size, dtype=np.int32).reshape(
      len(devices), per_device)
  batch = devices_lib.shard(batch, devices)
  state = devices_lib.replicate(state, devices)
  step_rng = devices_lib.replicate(jax.random.key(1), devices)

  start = time.perf_counter()
  compiled = p_step.lower(state, batch, step_rng).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # The pmapped program is one device's share of the batch.
  step_flops = float(cost["flops"]) * len(devices)
  return compiled, state, batch, step_rng, compile_s, step_flops


def run(config, steps: int, warmup: int, peak_flag: float) -> dict:
  devices = jax.local_devices()
  compiled, state, batch, step_rng, compile_s, step_flops = compiled_step(
      config)

  for _ in range(warmup):
    state, _ = compiled(state, batch, step_rng)
  jax.block_until_ready(state)
  times = []
  usage_before = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, step_rng)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  usage = resource.getrusage(resource.RUSAGE_SELF)

  step_s = statistics.median(times)
  dtype = models.compute_dtype(config.model.dtype)
  peak, peak_source = peak_tflops(devices[0], dtype, peak_flag)
  return {
      "impl": "mae_jax",
      **tpu_estimate.describe(config),
      "dtype": jnp.dtype(dtype).name,
      "devices": f"{len(devices)} x {devices[0].device_kind}",
      "img_per_s": config.batch_size / step_s,
      "step_s_median": step_s,
      "step_s_min": min(times),
      "compile_s": compile_s,
      "train_gflop_per_img": step_flops / config.batch_size / 1e9,
      "peak_tflops_per_device": peak,
      "peak_source": peak_source,
      "mfu": step_flops / step_s / (peak * 1e12 * len(devices)),
      # On CPUs, glibc's default malloc hands XLA's ~1.3 GB temp buffer back to
      # the OS after every step (mae_jax/huge_pages.py): the timed steps'
      # page faults and kernel time show what that costs.
      "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
      **huge_pages.usage_per_step(usage_before, usage, steps),
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.input_only and (FLAGS.topology or FLAGS.pod):
    raise app.UsageError("--input_only times this host's input pipeline; "
                         "--topology and --pod go with the step's estimate, "
                         "not with it")
  if FLAGS.input_only:
    result = throughput.images_per_second(
        FLAGS.config.data, batch_size=FLAGS.config.batch_size,
        image_size=FLAGS.config.model.image_size, steps=FLAGS.steps,
        warmup=FLAGS.warmup)
  elif FLAGS.topology:
    result = tpu_estimate.estimate(FLAGS.config, FLAGS.topology, FLAGS.pod)
  elif FLAGS.pod:
    raise app.UsageError("--pod goes with --topology")
  else:
    result = run(FLAGS.config, FLAGS.steps, FLAGS.warmup, FLAGS.peak_tflops)
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run_absl(main)
