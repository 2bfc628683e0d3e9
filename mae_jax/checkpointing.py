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
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _shapes(tree) -> dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_name(p): tuple(np.shape(x)) for p, x in flat}


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


def _on_every_process(ok: bool) -> bool:
  """Whether `ok` holds on all processes, so that they decide alike."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


def _plain(tree) -> dict:
  """A config as JSON stores it (tuples become lists)."""
  return json.loads(json.dumps(tree))


class Checkpointer:
  """Saves every few steps, keeps the last few, restores the newest readable.

  orbax commits a step atomically (written to a temporary directory, renamed
  when complete), so a crash during a save leaves the previous step as the
  newest. A step that is listed but cannot be read (damaged afterwards) is
  set aside as `<step>.corrupt.<time>` and the previous one is restored.
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
                       "config": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, config: ml_collections.ConfigDict):
    """Starts an asynchronous save of `state` (unreplicated) and `config`.

    Every process calls it with the same step and its own (identical) copy
    of the state; the copies are written once.
    """
    self.check_for_errors()
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_global(state)),
        config=ocp.args.JsonSave(config.to_dict())))

  def check_compatible(self, step: int, template):
    """Raises ValueError naming every parameter whose shape differs."""
    self._check_shapes(step, self._stored_shapes(step), template)

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
      raise ValueError(
          f"the checkpoint at step {step} in {self.directory} does not fit the "
          "configured model (was the model config changed?):\n  "
          + "\n  ".join(problems[:20])
          + "\nUse the config the run was started with, or a new --workdir.")

  def restore_latest(self, template):
    """(state, step) of the newest readable checkpoint, or (template, 0) if
    there is none. `template` is the unreplicated state; the result has its
    structure, shapes and dtypes, on this process's first device.

    A checkpoint whose shapes differ from the template's raises ValueError;
    one that cannot be read is set aside with a warning, and the one before
    it is tried.
    """
    steps = sorted(self.all_steps(), reverse=True)
    sharding = _replicated_sharding()
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            np.shape(x), jax.dtypes.canonicalize_dtype(np.result_type(x)),
            sharding=sharding), template)
    for step in steps:
      try:
        stored = self._stored_shapes(step)
        error = None
      except Exception as e:  # pylint: disable=broad-except
        stored, error = None, e
      if _on_every_process(error is None):
        self._check_shapes(step, stored, template)
        logging.info("Restoring checkpoint at step %d from %s", step,
                     self.directory)
        try:
          restored = self._manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract)))["state"]
        except Exception as e:  # pylint: disable=broad-except
          restored, error = None, e
        if _on_every_process(error is None):
          return _to_local(restored), step
      if step == steps[-1]:
        # Nothing older to fall back to. The error may be passing (storage
        # unavailable), so this one stays where it is: renaming it would make
        # the next run start from scratch in a workdir that holds a run.
        raise RuntimeError(
            f"the checkpoint at step {step} in {self.directory}, the oldest "
            f"there, cannot be read ({error or 'on another process'}); it is "
            "left in place. If the storage was unavailable, run again; if it "
            "is damaged, move it away to start from scratch, or use a new "
            "--workdir.")
      self._set_aside(step, error)
    return template, 0

  def _set_aside(self, step: int, error: Exception | None):
    """Renames an unreadable step so that orbax no longer lists it (it would
    otherwise refuse to save any step up to it)."""
    path = epath.Path(self.directory) / str(step)
    target = path.parent / f"{step}.corrupt.{int(time.time())}"
    logging.warning(
        "The checkpoint at step %d in %s cannot be read (%s); it is moved to "
        "%s and the previous checkpoint is used. Delete it once you have "
        "looked at it.", step, self.directory,
        error or "it could not be read on another process", target.name)
    if jax.process_index() == 0:
      try:
        path.rename(target)
      except Exception as e:
        raise RuntimeError(
            f"could not move the unreadable checkpoint {path} aside ({e}); "
            "move or delete it by hand, then run again") from e
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self._manager.reload()

  def stored_config(self, step: int) -> ml_collections.ConfigDict:
    restored = self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))
    return ml_collections.ConfigDict(restored["config"])

  def check_model_config(self, config: ml_collections.ConfigDict):
    """Raises ValueError if the newest checkpoint with a readable config was
    written by a run with another model config: its workdir belongs to that
    run, which resuming would otherwise overwrite.

    Fields in RESUMABLE_MODEL_FIELDS may differ; a field that only one of the
    two configs has (code from another version) is logged, not refused.
    """
    for step in sorted(self.all_steps(), reverse=True):
      try:
        stored_config = self.stored_config(step)
        stored = _plain(stored_config.model.to_dict())
        break
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Cannot read the config of step %d in %s (%s)", step,
                        self.directory, e)
    else:
      return
    stored_mode = stored_config.get("mode", config.mode)
    if stored_mode != config.mode:
      hint = (" To start from it, pass it as --config.init_from and use a new "
              "--workdir." if stored_mode == "pretrain" else "")
      raise ValueError(
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
      raise ValueError(
          f"{self.directory} holds a run (step {step}) with another model "
          "config:\n  " + "\n  ".join(differences)
          + "\nResuming would overwrite that run. Use a new --workdir for "
          "this config, or the config the run was started with to resume it.")

  def check_for_errors(self):
    """Raises the error of a finished asynchronous save, if it failed."""
    self._manager.check_for_errors()

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()


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
  """(run config, {'step', 'params'[, 'model_state']}) of a checkpoint of
  ours, as numpy arrays; the optimizer state is not read."""
  step_dir = resolve_checkpoint(path)
  config = _read_config(step_dir)
  checkpointer = ocp.PyTreeCheckpointer()
  state_dir = os.path.join(step_dir, "state")
  tree = checkpointer.metadata(state_dir).item_metadata.tree
  item = {name: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree[name])
          for name in ("step", "params", "model_state") if name in tree}
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
  checkpointer.wait()
  checkpointer.close()
