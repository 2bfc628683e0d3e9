"""Durations in epochs or steps, resolved to steps when the run starts.

A recipe says "800 epochs, 40 of warm-up"; what the schedule needs is steps,
and those depend on the data set's size and on the batch actually used. So
configs hold either `<name>_epochs` or `<name>_steps` (0 = not given) and the
run converts epochs to steps once it knows both: `--config.batch_size=1024`
then still trains 800 epochs, with a 40-epoch warm-up (big_vision's
`utils.steps` does the same).

An epoch is `num_examples // batch_size` steps, as the reference's
`drop_last` data loader counts it.
"""

import ml_collections

# (name, required): `total` must be given; the others may be left at zero
# (no warm-up; an interval that is not used by the mode, or k-NN off).
DURATIONS = (("total", True), ("warmup", False), ("eval_every", False),
             ("knn_every", False))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  if batch_size > num_examples:
    raise ValueError(
        f"batch_size={batch_size} is larger than the training split "
        f"({num_examples} examples): an epoch would have no full batch; use "
        f"--config.batch_size={num_examples} or less")
  return num_examples // batch_size


def _fields(config: ml_collections.ConfigDict, name: str):
  """(epochs, steps) of `name`, or None where the config has no such field."""
  epochs, steps = f"{name}_epochs", f"{name}_steps"
  if epochs not in config and steps not in config:
    return None
  return config.get(epochs, 0), config.get(steps, 0)


def check(config: ml_collections.ConfigDict):
  """Each duration is given once, in epochs or in steps; none is negative."""
  for name, required in DURATIONS:
    fields = _fields(config, name)
    if fields is None:
      continue
    epochs, steps = fields
    if epochs < 0 or steps < 0:
      raise ValueError(f"{name}_epochs={epochs} and {name}_steps={steps} "
                       "must not be negative")
    if epochs and steps:
      raise ValueError(
          f"{name}_epochs={epochs} and {name}_steps={steps} are both set; "
          f"give one of them (set the other to 0, e.g. "
          f"--config.{name}_epochs=0)")
    if required and not (epochs or steps):
      raise ValueError(f"set --config.{name}_epochs or --config.{name}_steps "
                       "to a positive number")
  # What can be compared before the data set's size is known.
  for unit in ("steps", "epochs"):
    total, warmup = config.get(f"total_{unit}", 0), config.get(
        f"warmup_{unit}", 0)
    if total and warmup > total:
      raise ValueError(f"warmup_{unit} ({warmup}) is longer than total_{unit}"
                       f" ({total}); shorten the warm-up")


def resolve(config: ml_collections.ConfigDict,
            num_examples: int) -> ml_collections.ConfigDict:
  """A copy of `config` with every `<name>_steps` set, from the epochs when
  those were given; the `<name>_epochs` fields are kept as they were."""
  check(config)
  per_epoch = steps_per_epoch(num_examples, config.batch_size)
  resolved = ml_collections.ConfigDict(config.to_dict())
  for name, _ in DURATIONS:
    fields = _fields(config, name)
    if fields is None:
      continue
    epochs, steps = fields
    if epochs:
      steps = max(1, round(epochs * per_epoch))
    resolved[f"{name}_steps"] = int(steps)
  if resolved.get("warmup_steps", 0) > resolved.total_steps:
    raise ValueError(f"the warm-up ({resolved.warmup_steps} steps) is longer "
                     f"than the run ({resolved.total_steps} steps)")
  return resolved


def describe(config: ml_collections.ConfigDict, num_examples: int) -> str:
  """One line for the log: the resolved steps and what they are in epochs."""
  per_epoch = steps_per_epoch(num_examples, config.batch_size)
  parts = []
  for name, _ in DURATIONS:
    steps = config.get(f"{name}_steps", 0)
    if steps:
      parts.append(f"{name}={steps} steps ({steps / per_epoch:.4g} epochs)")
  return (f"{num_examples} training examples, batch {config.batch_size}: "
          f"{per_epoch} steps per epoch; " + ", ".join(parts))
