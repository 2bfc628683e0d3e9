"""The CPU step's copies of the train state: mapped over the devices or not.

  python benchmarks/cpu_unmapped_state.py --config=configs/mae_vit_base_pretrain.py \
      --config.batch_size=8 --config.model.dtype=float32 --steps=3 --rounds=6

The trainer pmaps its step with the train state unmapped (`in_axes=None`:
one replicated array per leaf, mae_jax/devices.py). pmap's default maps
every argument: one copy of the state per device, stacked on a leading axis,
as the trainer did until 2026-12-07. jax 0.10 writes pmap as a jit of a
shard_map that squeezes that axis off each mapped argument and adds it back
to each output, so each parameter and moment then enters the program
through a reshape (a bitcast), and XLA:CPU, which does not update a buffer
in place through one, copies every donated array of the state at the start
of the step (the "copies of the train state" of cpu_step_profile.py).

This script compiles the trainer's step and the same step with the state
mapped, checks that both give the same new parameters, counts the copies of
the state that XLA:CPU left in each, and times them in interleaved rounds
(the median of the rounds' medians, and of the per-round ratios).
"""

# pylint: disable=g-import-not-at-top,wrong-import-position
if __name__ == "__main__":
  import os
  import sys
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  from mae_jax import huge_pages  # the benchmark's malloc, as it runs
  huge_pages.reexec_with_huge_page_malloc()

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
                     "each form.")

FORMS = ("state mapped (pmap's default)", "state unmapped (the trainer)")


def state_copies(compiled) -> tuple[int, int]:
  """(count, bytes) of the copies of the step's inputs that XLA:CPU left in
  the compiled step."""
  instructions = cpu_step_profile.entry_instructions(compiled.as_text())
  copies = [i for i in instructions.values()
            if cpu_step_profile.kind_of(i, instructions) ==
            "copies of the train state"]
  return len(copies), sum(i["bytes"] for i in copies)


def mapped_state_step(config, state, step_rng):
  """The trainer's step pmapped with every argument mapped (pmap's default),
  and its state and key placed for it: one copy per device stacked on a
  leading axis -> (step, state, step_rng)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  task = tasks.make_task(config, train.AXIS)
  schedule = optim.make_schedule(config)
  step = jax.pmap(
      functools.partial(train.train_step, task=task, schedule=schedule,
                        grad_accum_steps=config.grad_accum_steps),
      axis_name=train.AXIS, donate_argnums=(0,))
  devices = jax.local_devices()
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


def measure(config, steps: int, rounds: int) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  if jax.default_backend() != "cpu":
    raise SystemExit("cpu_unmapped_state.py measures XLA:CPU; this JAX runs "
                     f"on {jax.default_backend()}")
  unmapped, state, batch, step_rng, _, _ = benchmark.compiled_step(config)
  mapped, stacked_state, stacked_rng = mapped_state_step(config, state,
                                                         step_rng)
  mapped = mapped.lower(stacked_state, batch, stacked_rng).compile()
  copies = dict(zip(FORMS, map(state_copies, (mapped, unmapped))))

  # One step of each from the same state: the same new parameters.
  stacked_state, _ = mapped(stacked_state, batch, stacked_rng)
  state, _ = unmapped(state, batch, step_rng)
  difference = _max_difference(
      jax.tree.map(lambda x: x.addressable_data(0)[0], stacked_state.params),
      jax.tree.map(lambda x: x.addressable_data(0), state.params))

  def timed(run):
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      jax.block_until_ready(run())
      times.append(time.perf_counter() - start)
    return statistics.median(times)

  def mapped_step():
    nonlocal stacked_state
    stacked_state, metrics = mapped(stacked_state, batch, stacked_rng)
    return metrics

  def unmapped_step():
    nonlocal state
    state, metrics = unmapped(state, batch, step_rng)
    return metrics

  medians = {form: [] for form in FORMS}
  for _ in range(rounds):
    medians[FORMS[0]].append(timed(mapped_step))
    medians[FORMS[1]].append(timed(unmapped_step))
  step_s = {form: statistics.median(times) for form, times in medians.items()}
  return {
      **tpu_estimate.describe(config),
      "devices": jax.local_device_count(),
      "steps_per_round": steps,
      "rounds": rounds,
      "step_s_median": step_s,
      "step_s_by_round": medians,
      "unmapped_speedup": step_s[FORMS[0]] / step_s[FORMS[1]],
      "unmapped_speedup_median_of_rounds": statistics.median(
          a / b for a, b in zip(*medians.values())),
      "state_copies": {form: count for form, (count, _) in copies.items()},
      "state_copy_gb_per_step": {form: size / 1e9
                                 for form, (_, size) in copies.items()},
      "max_param_difference_after_one_step": difference,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.steps < 1 or FLAGS.rounds < 1:
    raise app.UsageError("--steps and --rounds must be at least 1")
  result = measure(FLAGS.config, FLAGS.steps, FLAGS.rounds)
  for form in FORMS:
    print(f"{form:>30}: {result['step_s_median'][form]:.3f} s/step, "
          f"{result['state_copies'][form]} state copies "
          f"({result['state_copy_gb_per_step'][form]:.2f} GB)",
          file=sys.stderr)
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run_absl(main)
