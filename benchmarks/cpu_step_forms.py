"""The CPU step against the forms of it that the trainer ran before.

  python benchmarks/cpu_step_forms.py --config=configs/mae_vit_base_pretrain.py \
      --config.batch_size=8 --config.model.dtype=float32 --steps=3 --rounds=6

Two changes made the trainer's step faster on XLA:CPU without changing
what it computes; this script compiles the step as it was before each and
as it is, checks that all give the same new parameters, counts the copies
of the train state and the all-reduces that XLA:CPU left in each, and times
them in interleaved rounds (the median of the rounds' medians, and of the
per-round ratios against the trainer):

- the train state mapped over the devices (pmap's default, the trainer
  until 2026-12-07). jax 0.10 writes pmap as a jit of a shard_map that
  squeezes the device axis off each mapped argument and adds it back to
  each output, so each parameter and moment then enters the program
  through a reshape (a bitcast), and XLA:CPU, which does not update a
  buffer in place through one, copies every donated array of the state at
  the start of the step. The trainer passes it unmapped (`in_axes=None`:
  one replicated array per leaf, mae_jax/devices.py).
- the mean over devices kept when the step runs on one device (until
  2026-12-07 too): XLA emits an all-reduce even then, and on CPU it copies
  every gradient (train.mean_over_devices skips it).

The second form only differs from the trainer on a single device, as the
benchmark runs (`python -m mae_jax.benchmark` uses all local devices: one
CPU device unless XLA_FLAGS asks for more).
"""

# pylint: disable=g-import-not-at-top,wrong-import-position
if __name__ == "__main__":
  import os
  import sys
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  from mae_jax import huge_pages  # the benchmark's malloc, as it runs
  huge_pages.reexec_with_huge_page_malloc()

import contextlib
import functools
import json
import os
import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cpu_step_profile
from mae_jax import benchmark
from mae_jax import cli
from mae_jax import optim
from mae_jax import tasks
from mae_jax import tpu_estimate
from mae_jax import train

# --config and --steps are mae_jax.benchmark's (defined when it is imported).
FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 4, "Interleaved rounds of --steps steps of "
                     "each form.", lower_bound=1)

MAPPED = "state mapped, all-reduce on one device (until 2026-12-07)"
ALL_REDUCE = "state unmapped, all-reduce on one device"
TRAINER = "state unmapped, no all-reduce on one device (the trainer)"
FORMS = (MAPPED, ALL_REDUCE, TRAINER)


@contextlib.contextmanager
def all_reduce_on_one_device():
  """The trainer's step traced with its mean over devices always an
  all-reduce, as before train.mean_over_devices."""
  import jax  # pylint: disable=import-outside-toplevel
  skipping = train.mean_over_devices
  train.mean_over_devices = lambda tree: jax.lax.pmean(tree, train.AXIS)
  try:
    yield
  finally:
    train.mean_over_devices = skipping


def state_copies(compiled) -> tuple[int, int]:
  """(count, bytes) of the copies of the step's inputs that XLA:CPU left in
  the compiled step."""
  instructions = cpu_step_profile.entry_instructions(compiled.as_text())
  copies = [i for i in instructions.values()
            if cpu_step_profile.kind_of(i, instructions) ==
            "copies of the train state"]
  return len(copies), sum(i["bytes"] for i in copies)


def all_reduces(compiled) -> int:
  return compiled.as_text().count(" all-reduce(")


def mapped_state_step(config, state, step_rng, devices):
  """The trainer's step pmapped over `devices` with every argument mapped
  (pmap's default), and its state and key placed for it: one copy per
  device stacked on a leading axis -> (step, state, step_rng)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  task = tasks.make_task(config, train.AXIS)
  schedule = optim.make_schedule(config)
  step = jax.pmap(
      functools.partial(train.train_step, task=task, schedule=schedule,
                        grad_accum_steps=config.grad_accum_steps),
      axis_name=train.AXIS, donate_argnums=(0,), devices=devices)
  mesh = jax.sharding.Mesh(np.asarray(devices), (train.AXIS,))
  stacked = jax.NamedSharding(mesh, jax.P(train.AXIS))

  def stack(x):
    x = x.addressable_data(0)
    return jax.make_array_from_single_device_arrays(
        (len(devices),) + x.shape, stacked,
        [jax.device_put(x[None], d) for d in devices])

  return step, jax.tree.map(stack, state), stack(step_rng)


def _max_difference(a, b) -> float:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  return max(float(np.max(np.abs(np.asarray(x, np.float64) -
                                 np.asarray(y, np.float64)), initial=0.0))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def compiled_forms(config, devices) -> dict:
  """Each form of FORMS compiled for `devices`, with its state, batch and
  key placed for it, and how to read one device's parameters from its
  state: {form: (compiled, state, batch, step_rng, read_params)}."""
  import jax  # pylint: disable=import-outside-toplevel
  trainer, state, batch, step_rng, _, _ = benchmark.compiled_step(config,
                                                                   devices)
  with all_reduce_on_one_device():
    # Its own state: a state's optimizer is static in its tree. It equals the
    # trainer's (the same initialization key).
    all_reduce, all_reduce_state, *_ = benchmark.compiled_step(config,
                                                               devices)
    mapped, stacked_state, stacked_rng = mapped_state_step(
        config, state, step_rng, devices)
    mapped = mapped.lower(stacked_state, batch, stacked_rng).compile()

  def unstacked(params):
    return jax.tree.map(lambda x: x.addressable_data(0)[0], params)

  def replicated(params):
    return jax.tree.map(lambda x: x.addressable_data(0), params)

  return {MAPPED: (mapped, stacked_state, batch, stacked_rng, unstacked),
          ALL_REDUCE: (all_reduce, all_reduce_state, batch, step_rng,
                       replicated),
          TRAINER: (trainer, state, batch, step_rng, replicated)}


def measure(config, steps: int, rounds: int, devices=None) -> dict:
  """The forms' state copies, all-reduces and step times over `devices`
  (all local ones by default)."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != "cpu":
    raise SystemExit("this script measures XLA:CPU; this JAX runs on "
                     f"{jax.default_backend()}")
  devices = devices or jax.local_devices()
  forms = compiled_forms(config, devices)
  copies = {form: state_copies(compiled)
            for form, (compiled, *_) in forms.items()}
  reductions = {form: all_reduces(compiled)
                for form, (compiled, *_) in forms.items()}
  states = {form: state for form, (_, state, *_) in forms.items()}

  def step(form):
    compiled, _, batch, step_rng, _ = forms[form]
    states[form], metrics = compiled(states[form], batch, step_rng)
    return metrics

  # One step of each from the same state: the same new parameters.
  for form in FORMS:
    step(form)
  new_params = {form: forms[form][4](states[form].params) for form in FORMS}
  difference = max(_max_difference(new_params[form], new_params[TRAINER])
                   for form in FORMS)

  def timed(form):
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      jax.block_until_ready(step(form))
      times.append(time.perf_counter() - start)
    return statistics.median(times)

  medians = {form: [] for form in FORMS}
  for _ in range(rounds):
    for form in FORMS:
      medians[form].append(timed(form))
  step_s = {form: statistics.median(times) for form, times in medians.items()}
  return {
      **tpu_estimate.describe(config),
      "devices": len(devices),
      "steps_per_round": steps,
      "rounds": rounds,
      "step_s_median": step_s,
      "step_s_by_round": medians,
      "trainer_speedup": {form: step_s[form] / step_s[TRAINER]
                          for form in FORMS},
      "trainer_speedup_median_of_rounds": {
          form: statistics.median(
              a / b for a, b in zip(medians[form], medians[TRAINER]))
          for form in FORMS},
      "state_copies": {form: count for form, (count, _) in copies.items()},
      "state_copy_gb_per_step": {form: size / 1e9
                                 for form, (_, size) in copies.items()},
      "all_reduces": reductions,
      "max_param_difference_after_one_step": difference,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  result = measure(FLAGS.config, FLAGS.steps, FLAGS.rounds)
  for form in FORMS:
    print(f"{form}: {result['step_s_median'][form]:.3f} s/step, "
          f"{result['state_copies'][form]} state copies "
          f"({result['state_copy_gb_per_step'][form]:.2f} GB), "
          f"{result['all_reduces'][form]} all-reduces", file=sys.stderr)
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run_absl(main)
