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
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def _shapes(tree) -> dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_name(p): tuple(np.shape(x)) for p, x in flat}


class Checkpointer:
  """Saves every few steps, keeps the last few, restores the latest."""

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
    """Starts an asynchronous save of `state` (unreplicated) and `config`."""
    self.check_for_errors()
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(config.to_dict())))

  def check_compatible(self, step: int, template):
    """Raises ValueError naming every parameter whose shape differs."""
    stored = _shapes(self._manager.item_metadata(step)["state"].tree)
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
    """(state, step) of the newest checkpoint, or (template, 0) if none."""
    step = self.latest_step()
    if step is None:
      return template, 0
    self.check_compatible(step, template)
    logging.info("Restoring checkpoint at step %d from %s", step,
                 self.directory)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(template)))
    return restored["state"], step

  def stored_config(self, step: int) -> ml_collections.ConfigDict:
    restored = self._manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore()))
    return ml_collections.ConfigDict(restored["config"])

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


def load_params(path: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(run config, parameters as numpy arrays) of a checkpoint of ours.

  Only the parameters are read, not the optimizer state.
  """
  step_dir = resolve_checkpoint(path)
  config = ml_collections.ConfigDict(
      ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
          os.path.join(step_dir, "config")))
  checkpointer = ocp.PyTreeCheckpointer()
  state_dir = os.path.join(step_dir, "state")
  tree = checkpointer.metadata(state_dir).item_metadata.tree
  item = {"params": jax.tree.map(lambda m: np.zeros(m.shape, m.dtype),
                                 tree["params"])}
  restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
      item=item, partial_restore=True,
      restore_args=jax.tree.map(
          lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)))
  logging.info("Loaded parameters from %s", step_dir)
  return config, restored["params"]


def save_params(workdir: str, config: ml_collections.ConfigDict, params,
                step: int = 0):
  """Writes `params` and `config` as `workdir/checkpoints/<step>`, readable
  by `load_params` (and so by `config.init_from`)."""
  checkpointer = Checkpointer(workdir, keep=1)
  checkpointer.save(step, {"step": np.int32(step), "params": params}, config)
  checkpointer.wait()
  checkpointer.close()
