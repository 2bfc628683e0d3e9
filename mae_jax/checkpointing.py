"""orbax checkpoints in `workdir/checkpoints`, with the run's config.

The state is saved unreplicated, so a run restores on any number of devices.
Before restoring, the stored shapes are compared with the model's, so a
changed config fails with the parameter's name instead of deep in orbax.

Layout: `checkpoints/<step>/state` holds {'step', 'params', 'opt_state', ...}
and `checkpoints/<step>/config` the run's config as JSON. `load_params` reads
the parameters and model config of any such checkpoint (to initialise a
fine-tuning from it); `save_params` writes weights from elsewhere (converted
official ones) in the same layout.
"""

from absl import logging
import json
import os
import re
import time
from typing import Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mae_jax import multihost


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _shapes(tree) -> dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_name(p): tuple(np.shape(x)) for p, x in flat}


# The file of `checkpoints/<step>/config/` that holds the config as JSON
# (orbax's JsonCheckpointHandler's default name).
CONFIG_FILE = "metadata"

# Model fields that may differ when a run resumes: they trade memory for
# compute and do not change what the model computes.
RESUMABLE_MODEL_FIELDS = ("remat",)


def _process_devices() -> list:
  """The first local device of every process, in process order."""
  return [jax.local_devices(process_index=p)[0]
          for p in range(jax.process_count())]


def _replicated_sharding() -> jax.sharding.NamedSharding:
  """One copy per process, on its first local device.

  Every process holds the same unreplicated state. orbax refuses to save
  such process-local arrays from several processes; as one global array with
  this sharding, it writes each array once (in slices, one per process) and
  reads it on every process. With one process it is that process's device.
  """
  mesh = jax.sharding.Mesh(np.asarray(_process_devices()), ("process",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _to_global(tree):
  """This process's copy of `tree` as part of global replicated arrays."""
  sharding = _replicated_sharding()
  device = jax.local_devices()[0]

  def convert(x):
    local = jax.device_put(x, device)
    return jax.make_array_from_single_device_arrays(
        local.shape, sharding, [local])

  return jax.tree.map(convert, tree)


def _to_local(tree):
  """This process's copy of global replicated arrays."""
  return jax.tree.map(lambda x: x.addressable_data(0), tree)


def _plain(tree) -> dict:
  """A config as JSON stores it (tuples become lists)."""
  return json.loads(json.dumps(tree))


# Statuses of tensorstore that mean the stored bytes are wrong (missing, cut
# short, undecodable), not that the storage is unreachable (UNAVAILABLE,
# DEADLINE_EXCEEDED) or that the caller asked for something else.
_DAMAGED_DATA = re.compile(
    r"DATA_LOSS|(OUT_OF_RANGE|FAILED_PRECONDITION|NOT_FOUND): Error "
    r"(reading|decoding)")
# Waits before reading a checkpoint again whose files look intact.
RETRY_DELAYS_S = (2, 10, 30)
# A save that has not finished after this long is treated as hung.
SAVE_TIMEOUT_S = 3600
_POLL_S = 0.2


class CheckpointMismatchError(ValueError):
  """A checkpoint written by another model or run than the configured one."""


def _json_problem(path: epath.Path) -> str:
  """'' if `path` holds JSON, else what is wrong with it."""
  if not path.exists():
    return f"{path.parent.name}/{path.name} is missing"
  try:
    json.loads(path.read_text())
  except ValueError as e:
    return f"{path.parent.name}/{path.name} is not valid JSON ({e})"
  return ""


def damage(step_dir: epath.Path, errors: Sequence[str]) -> str:
  """What shows that the checkpoint in `step_dir` is damaged, or '' when its
  files look whole and `errors` (of reading it) name no damaged data: the
  failure was then passing (storage) or ours (a bug), and the checkpoint
  must stay where it is."""
  problems = [f"{item}/ is missing" for item in ("state", "config")
              if not (step_dir / item).is_dir()]
  if not problems:
    problems += [p for p in (
        _json_problem(step_dir / "state" / "_METADATA"),
        _json_problem(step_dir / "config" / CONFIG_FILE)) if p]
    if not (step_dir / "state" / "manifest.ocdbt").exists():
      problems.append("state/manifest.ocdbt is missing")
  problems += [e for e in errors if _DAMAGED_DATA.search(e)]
  return "; ".join(problems)


class Checkpointer:
  """Saves every few steps, keeps the last few, restores the newest readable.

  orbax commits a step atomically (written to a temporary directory, renamed
  when complete), so a crash during a save leaves the previous step as the
  newest. A step that is listed but verifiably damaged (`damage`) is set
  aside as `<step>.corrupt.<time>` and the previous one is restored; one that
  fails to read although its files look whole is read again, then the run
  stops with the error: it may be a storage outage or a bug, and setting it
  aside would silently lose the newest step.

  Every process makes the same calls. What concerns the directory (which
  step, whether it is damaged, renaming) is decided on process 0 and shared
  (multihost.py), and a failure on any process stops all of them.
  """

  def __init__(self, workdir: str, keep: int):
    if "://" not in workdir:  # orbax needs absolute local paths
      workdir = os.path.abspath(workdir)
    self.directory = os.path.join(workdir, "checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        # Named up front so that a new process can read what an old one wrote.
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "config": ocp.JsonCheckpointHandler(CONFIG_FILE)})
    self._save_failure = None

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  # ------------------------------------------------------------- saving

  def save(self, step: int, state, config: ml_collections.ConfigDict):
    """Starts an asynchronous save of `state` (unreplicated) and `config`.

    Every process calls it with the same step and its own (identical) copy
    of the state; the copies are written once. First, the previous save must
    have finished on every process (orbax would wait for it inside `save`,
    where a failure on another process leaves this one waiting), and process
    0 checks that the directory takes a file (`_check_writable`). A save
    that orbax skips (the directory already holds this step or a newer one:
    another run writes there) is an error.
    """
    self.finish()
    multihost.on_process_0("checking the checkpoint directory",
                           self._check_writable)
    saved = self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_global(state)),
        config=ocp.args.JsonSave(config.to_dict())))
    skipped = None if saved else RuntimeError(
        f"orbax did not save step {step} in {self.directory}: it holds step "
        f"{self.latest_step()} already. Is another run writing there?")
    multihost.raise_if_failed_anywhere(f"saving step {step}", skipped)

  def _check_writable(self) -> str:
    """Process 0: writes and removes a small file in the directory.

    A directory that orbax cannot write to (read-only, full, no permission on
    the bucket) then fails here, at once and on every process; inside
    orbax's threads the processes would wait minutes for each other, and the
    threads would keep the process from exiting.
    """
    probe = epath.Path(self.directory) / ".write_test"
    try:
      probe.write_text("mae_jax")
      probe.unlink()
    except OSError as e:
      raise PermissionError(
          f"cannot write checkpoints to {self.directory} ({e}); make room or "
          "fix its permissions, or use another --workdir") from e
    return ""

  def save_error(self) -> RuntimeError | None:
    """Why the last asynchronous save failed on this process, if it did.

    Asked only once the save has ended: orbax hands a failure out once, and
    taken while the save runs, it would be missing when orbax decides
    whether to commit the step.
    """
    if self._save_failure is None and not self._manager.is_saving_in_progress():
      try:
        self._manager.wait_until_finished()  # at once: nothing runs
        self._manager.check_for_errors()
      except Exception as e:  # pylint: disable=broad-except
        self._save_failure = RuntimeError(
            f"saving a checkpoint in {self.directory} failed: "
            f"{multihost.describe(e)}")  # orbax has logged its traceback
    return self._save_failure

  def finish(self, timeout_s: float = SAVE_TIMEOUT_S):
    """Waits until the save in flight has finished on every process; raises
    on every process if it failed on any, or takes longer than `timeout_s`.

    Polled rather than joined, so that every process hears at once of a
    failure on another.
    """
    deadline = time.monotonic() + timeout_s
    while True:
      busy = self._manager.is_saving_in_progress()
      error = self.save_error()
      if error is None and busy and time.monotonic() > deadline:
        error = self._save_failure = RuntimeError(
            f"the checkpoint save in {self.directory} has not finished after "
            f"{timeout_s:.0f} s; is the storage reachable?")
      multihost.raise_if_failed_anywhere("the checkpoint save", error)
      if "busy" not in multihost.gather(
          "waiting for the checkpoint save", "busy" if busy else ""):
        return
      time.sleep(_POLL_S)

  def finish_locally(self, timeout_s: float = multihost.TIMEOUT_S):
    """On the way out after an error: lets this process's save in flight
    complete (the evaluators run after a save, so that a failing one does
    not lose the step), for at most `timeout_s`; logs, never raises."""
    deadline = time.monotonic() + timeout_s
    while (self._manager.is_saving_in_progress()
           and time.monotonic() < deadline):
      time.sleep(_POLL_S)
    if self.save_error() is not None:
      logging.error("The last checkpoint save in %s failed: %s",
                    self.directory, multihost.describe(self.save_error()))
    elif self._manager.is_saving_in_progress():
      logging.error("The last checkpoint save in %s did not finish within "
                    "%.0f s; the step before it is the newest.",
                    self.directory, timeout_s)

  def close(self):
    """After `finish`: releases orbax's resources."""
    self._manager.close()

  # ---------------------------------------------------------- restoring

  def _stored_shapes(self, step: int) -> dict[str, tuple]:
    metadata = self._manager.item_metadata(step)["state"]
    if metadata is None:
      raise FileNotFoundError(f"no state metadata in step {step}")
    return _shapes(metadata.tree)

  def _check_shapes(self, step: int, stored: dict[str, tuple], template):
    wanted = _shapes(template)
    problems = [f"{name}: checkpoint {stored[name]} vs model {shape}"
                for name, shape in wanted.items()
                if name in stored and stored[name] != shape]
    problems += [f"{name}: not in the checkpoint"
                 for name in wanted if name not in stored]
    problems += [f"{name}: in the checkpoint, not in the model"
                 for name in stored if name not in wanted]
    if problems:
      raise CheckpointMismatchError(
          f"the checkpoint at step {step} in {self.directory} does not fit the "
          "configured model (was the model config changed?):\n  "
          + "\n  ".join(problems[:20])
          + "\nUse the config the run was started with, or a new --workdir.")

  def _unreadable_metadata(self, step: int, template) -> str:
    """Process 0: '' if `step`'s metadata is readable and fits `template`
    (else CheckpointMismatchError); what went wrong if it is unreadable."""
    try:
      stored = self._stored_shapes(step)
    except Exception as e:  # pylint: disable=broad-except
      return multihost.describe(e)
    self._check_shapes(step, stored, template)
    return ""

  def restore(self, template, resume_step: int = 0):
    """(state, step) of the newest readable checkpoint, or (template, 0) if
    there is none. `template` is the unreplicated state; the result has its
    structure, shapes and dtypes, on this process's first device.

    A checkpoint whose shapes differ from the template's raises ValueError.
    `resume_step`: restore that kept step instead of the newest (see
    `_roll_back`).
    """
    if resume_step:
      multihost.on_process_0(f"rolling back to step {resume_step}",
                             lambda: self._roll_back(resume_step))
      self._manager.reload()
    sharding = _replicated_sharding()
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            np.shape(x), jax.dtypes.canonicalize_dtype(np.result_type(x)),
            sharding=sharding), template)
    attempt = 0
    while self.all_steps():
      steps = self.all_steps()
      step = steps[-1]
      unreadable = multihost.on_process_0(
          f"checking step {step}",
          lambda: self._unreadable_metadata(step, template))
      error = RuntimeError(unreadable) if unreadable else None
      if error is None:
        logging.info("Restoring checkpoint at step %d from %s", step,
                     self.directory)
        try:
          restored = self._manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract)))["state"]
        except Exception as e:  # pylint: disable=broad-except
          error = e
      errors = multihost.gather_errors(f"reading step {step}", error)
      if not errors:
        return _to_local(restored), step
      verdict = multihost.on_process_0(
          f"judging step {step}",
          lambda: self._judge(step, errors, attempt, oldest=len(steps) == 1))
      attempt = attempt + 1 if verdict == "retry" else 0
      self._manager.reload()
    return template, 0

  def _judge(self, step: int, errors: list[str], attempt: int,
             oldest: bool) -> str:
    """Process 0, after `step` failed to read: sets it aside if it is
    verifiably damaged ('set aside'), waits to read it again ('retry'), or
    raises."""
    step_dir = epath.Path(self.directory) / str(step)
    problems = damage(step_dir, errors)
    if problems and oldest:
      # Renaming the only remaining step would make the next run start from
      # scratch in a workdir that holds a run.
      raise RuntimeError(
          f"the checkpoint at step {step} in {self.directory}, the oldest "
          f"there, is damaged ({problems}); it is left in place. Move it away "
          "to start from scratch, or use a new --workdir.")
    if problems:
      self._set_aside(step, problems)
      return "set aside"
    if attempt < len(RETRY_DELAYS_S):
      logging.warning("Reading the checkpoint at step %d failed, though its "
                      "files look whole (%s); reading it again in %d s.", step,
                      "; ".join(errors), RETRY_DELAYS_S[attempt])
      time.sleep(RETRY_DELAYS_S[attempt])
      return "retry"
    raise RuntimeError(
        f"the checkpoint at step {step} in {self.directory} cannot be read "
        f"({'; '.join(errors)}), though its files look whole; it is left in "
        "place. If the storage was unavailable, run again; if the error "
        "persists, it may be a bug: please report it.")

  def _set_aside(self, step: int, problems: str, reason: str = "corrupt"):
    """Renames a step so that orbax no longer lists it (it would otherwise
    refuse to save any step up to it); process 0."""
    path = epath.Path(self.directory) / str(step)
    target = path.parent / f"{step}.{reason}.{int(time.time())}"
    logging.warning("The checkpoint at step %d in %s is moved to %s: %s. "
                    "Delete it once you no longer need it.", step,
                    self.directory, target.name, problems)
    try:
      path.rename(target)
    except Exception as e:
      raise RuntimeError(
          f"could not move the checkpoint {path} aside ({e}); move or delete "
          "it by hand, then run again") from e

  def _roll_back(self, step: int) -> str:
    """Process 0, for `resume_step=step`: moves the steps after `step` aside
    (as `<step>.abandoned.<time>`, never deleted), so that the run resumes
    from `step` and orbax accepts its new saves.

    Once only: steps written by a run that was itself started with this
    resume_step are that run's progress, and a rerun of the same command
    (after a preemption) resumes from the newest of them.
    """
    steps = self.all_steps()
    later = [s for s in steps if s > step]
    if any(self._resumed_from(s) == step for s in later):
      return ""
    if step not in steps:
      raise ValueError(f"resume_step={step} is not a checkpoint in "
                       f"{self.directory}; the kept steps are {steps}")
    for later_step in later:
      self._set_aside(later_step, f"resume_step={step} resumes before it",
                      reason="abandoned")
    return ""

  def _resumed_from(self, step: int) -> int:
    """The resume_step of the run that wrote `step` (0 if unknown)."""
    try:
      return int(self.stored_config(step).get("resume_step", 0))
    except Exception:  # pylint: disable=broad-except
      return 0

  def stored_config(self, step: int) -> ml_collections.ConfigDict:
    """The config saved with `step`, read as a file: orbax's restore waits
    for every process, and process 0 reads configs alone."""
    path = epath.Path(self.directory) / str(step) / "config" / CONFIG_FILE
    return ml_collections.ConfigDict(json.loads(path.read_text()))

  def check_model_config(self, config: ml_collections.ConfigDict):
    """Raises ValueError on every process if the newest checkpoint with a
    readable config was written by a run with another mode or model config:
    its workdir belongs to that run, which resuming would overwrite.
    Decided on process 0.

    Fields in RESUMABLE_MODEL_FIELDS may differ; a field that only one of the
    two configs has (code from another version) is logged, not refused.
    Checkpoints none of whose configs can be read are an error too: the
    workdir's run cannot be told.
    """
    multihost.on_process_0("checking the model config",
                           lambda: self._compare_model_config(config))

  def _compare_model_config(self, config: ml_collections.ConfigDict) -> str:
    steps, error = self.all_steps(), None
    for step in reversed(steps):
      try:
        stored_config = self.stored_config(step)
        stored = _plain(stored_config.model.to_dict())
        break
      except Exception as e:  # pylint: disable=broad-except
        error = e
        logging.warning("Cannot read the config of step %d in %s (%s)", step,
                        self.directory, e)
    else:
      if steps:
        raise RuntimeError(
            f"cannot tell which run {self.directory} holds: the config of "
            f"none of its checkpoints {steps} can be read ("
            f"{multihost.describe(error)}). If the storage was unavailable, "
            "run again; otherwise move the checkpoints away or use a new "
            "--workdir.")
      return ""
    stored_mode = stored_config.get("mode", config.mode)
    if stored_mode != config.mode:
      hint = (" To start from it, pass it as --config.init_from and use a new "
              "--workdir." if stored_mode == "pretrain" else "")
      raise CheckpointMismatchError(
          f"{self.directory} holds a {stored_mode} run (step {step}), not a "
          f"{config.mode} run.{hint} Resuming would overwrite that run.")
    current = _plain(config.model.to_dict())
    differences = [f"model.{k}: checkpoint {stored[k]!r} vs config "
                   f"{current[k]!r}" for k in sorted(set(stored) & set(current))
                   if stored[k] != current[k]
                   and k not in RESUMABLE_MODEL_FIELDS]
    only_one = sorted(set(stored) ^ set(current))
    if only_one:
      logging.warning("Model fields in only one of the checkpoint's and the "
                      "given config (not compared): %s", only_one)
    if differences:
      raise CheckpointMismatchError(
          f"{self.directory} holds a run (step {step}) with another model "
          "config:\n  " + "\n  ".join(differences)
          + "\nResuming would overwrite that run. Use a new --workdir for "
          "this config, or the config the run was started with to resume it.")
    return ""


def _absolute(path: str) -> str:
  return path if "://" in path else os.path.abspath(path)


def resolve_checkpoint(path: str) -> str:
  """A workdir, its `checkpoints/` or one `<step>/` directory -> the step dir.

  For the first two, the newest step is taken.
  """
  path = epath.Path(_absolute(path))
  if (path / "state").exists():
    return str(path)
  for directory in (path / "checkpoints", path):
    steps = ([int(p.name) for p in directory.iterdir() if p.name.isdigit()
              and (p / "state").exists()] if directory.is_dir() else [])
    if steps:
      return str(directory / str(max(steps)))
  raise FileNotFoundError(
      f"no checkpoint under {path}: expected a workdir of mae_jax (with "
      "checkpoints/<step>/state), its checkpoints/ directory, one "
      "checkpoints/<step>/ directory, or the output of "
      "`python -m mae_jax.convert`")


def _read_config(step_dir: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
          os.path.join(step_dir, "config")))


def load_config(path: str) -> ml_collections.ConfigDict:
  """The run config stored with a checkpoint of ours (nothing else read)."""
  return _read_config(resolve_checkpoint(path))


def load_variables(path: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(run config, {'step', 'params'[, 'model_state', 'frozen_digest']}) of
  a checkpoint of ours, as numpy arrays; the optimizer state is not read."""
  step_dir = resolve_checkpoint(path)
  config = _read_config(step_dir)
  checkpointer = ocp.PyTreeCheckpointer()
  state_dir = os.path.join(step_dir, "state")
  tree = checkpointer.metadata(state_dir).item_metadata.tree
  item = {name: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree[name])
          for name in ("step", "params", "model_state", "frozen_digest")
          if name in tree}
  restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
      item=item, partial_restore=True,
      restore_args=jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)))
  logging.info("Loaded %s from %s", sorted(restored), step_dir)
  return config, restored


def load_params(path: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(run config, parameters as numpy arrays) of a checkpoint of ours."""
  config, variables = load_variables(path)
  return config, variables["params"]


def save_params(workdir: str, config: ml_collections.ConfigDict, params,
                step: int = 0):
  """Writes `params` and `config` as `workdir/checkpoints/<step>`, readable
  by `load_params` (and so by `config.init_from`)."""
  checkpointer = Checkpointer(workdir, keep=1)
  checkpointer.save(step, {"step": np.int32(step), "params": params}, config)
  checkpointer.finish()
  checkpointer.close()
