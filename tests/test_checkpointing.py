import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

from mae_jax import checkpointing
from mae_jax import train
from mae_jax import writers
from testing_utils import (assert_same_trajectory, tiny_cae_config,
                           tiny_config, tiny_model)


def test_round_trip_restores_values_and_config(tmp_path):
  tree = {"step": jnp.asarray(7, jnp.int32),
          "params": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}}
  config = tiny_config()
  saver = checkpointing.Checkpointer(str(tmp_path), keep=2)
  saver.save(7, tree, config)
  saver.finish()
  # A new Checkpointer, as after a restart, reads what the old one wrote.
  reader = checkpointing.Checkpointer(str(tmp_path), keep=2)
  template = jax.tree.map(jnp.zeros_like, tree)
  restored, step = reader.restore(template)
  assert step == 7
  chex.assert_trees_all_equal(restored, tree)
  assert reader.stored_config(7).model.width == config.model.width


def test_keeps_only_the_last_checkpoints(tmp_path):
  saver = checkpointing.Checkpointer(str(tmp_path), keep=2)
  for step in (1, 2, 3):
    saver.save(step, {"x": jnp.full((2,), step)}, tiny_config())
  saver.finish()
  assert saver.all_steps() == [2, 3]


def test_no_checkpoint_returns_the_template(tmp_path):
  template = {"x": jnp.ones(2)}
  restored, step = checkpointing.Checkpointer(
      str(tmp_path), keep=1).restore(template)
  assert step == 0 and restored is template


def test_shape_mismatch_names_the_parameter(tmp_path):
  saver = checkpointing.Checkpointer(str(tmp_path), keep=1)
  saver.save(1, {"params": {"dense": {"kernel": jnp.ones((2, 3))},
                            "old": jnp.ones(1)}}, tiny_config())
  saver.finish()
  template = {"params": {"dense": {"kernel": jnp.ones((2, 4))},
                         "new": jnp.ones(1)}}
  with pytest.raises(ValueError) as error:
    saver.restore(template)
  message = str(error.value)
  assert "params/dense/kernel: checkpoint (2, 3) vs model (2, 4)" in message
  assert "params/new: not in the checkpoint" in message
  assert "params/old: in the checkpoint, not in the model" in message
  assert "new --workdir" in message


class _Interrupt(Exception):
  pass


def _interrupted_run(config, workdir, monkeypatch, at_step):
  """Runs `config` in `workdir` and stops it while it logs `at_step`."""
  create_writer = writers.create_writer

  def interrupting_writer(workdir, **kwargs):
    writer = create_writer(workdir, **kwargs)
    write_scalars = writer.write_scalars

    def write(step, scalars):
      if step == at_step:
        raise _Interrupt()
      write_scalars(step, scalars)

    writer.write_scalars = write
    return writer

  with monkeypatch.context() as patch:
    patch.setattr(writers, "create_writer", interrupting_writer)
    with pytest.raises(_Interrupt):
      train.train_and_evaluate(config, workdir)


@pytest.mark.parametrize("make_config", [tiny_config, tiny_cae_config])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch,
                                                    make_config):
  config = make_config(total_steps=6, log_every_steps=1,
                       checkpoint_every_steps=3)
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  workdir = str(tmp_path / "resumed")
  _interrupted_run(config, workdir, monkeypatch, at_step=5)
  assert checkpointing.Checkpointer(workdir, 3).all_steps() == [3]
  resumed = train.train_and_evaluate(config, workdir)

  # Data order, augmentation and masking are functions of (seed, step), so
  # the resumed run is the uninterrupted one, bit for bit.
  chex.assert_trees_all_equal(resumed.params, straight.params)
  chex.assert_trees_all_equal(resumed.opt_state, straight.opt_state)
  # Step 4, logged before the interruption, is logged again by the resumed
  # run: one row per step.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [r["step"] for r in map(json.loads, f) if "train/loss" in r]
  assert steps == [1, 2, 3, 4, 5, 6]


def test_checkpoint_from_eight_devices_resumes_on_two(tmp_path, monkeypatch):
  config = tiny_config(total_steps=4, log_every_steps=1,
                       checkpoint_every_steps=2)
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
  workdir = str(tmp_path / "moved")
  _interrupted_run(config, workdir, monkeypatch, at_step=3)  # 8 devices
  assert checkpointing.Checkpointer(workdir, 3).all_steps() == [2]
  logged = []
  create_writer = writers.create_writer

  def recording_writer(workdir, **kwargs):
    writer = create_writer(workdir, **kwargs)
    write_scalars = writer.write_scalars
    writer.write_scalars = lambda step, scalars: (
        logged.append(step), write_scalars(step, scalars))
    return writer

  monkeypatch.setattr(writers, "create_writer", recording_writer)
  resumed = train.train_and_evaluate(config, workdir,
                                     devices=jax.local_devices()[:2])
  # It resumed: it trained steps 3 and 4 only, after step 2's checkpoint.
  assert logged == [3, 4]
  assert int(resumed.step) == 4
  assert_same_trajectory(resumed.params, straight.params, config)


def test_resuming_with_another_model_config_is_refused(tmp_path):
  # Needs the train loop to call Checkpointer.check_model_config.
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(total_steps=2), workdir)
  wider = tiny_config(total_steps=4)
  wider.model = tiny_model(width=64)
  with pytest.raises(ValueError, match=r"(?s)model.width: checkpoint 32 vs "
                                       r"config 64.*new --workdir"):
    train.train_and_evaluate(wider, workdir)
  assert checkpointing.Checkpointer(workdir, 3).all_steps() == [2]


def test_relative_workdir_is_saved_and_restored(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  saver = checkpointing.Checkpointer("runs/relative", keep=1)
  saver.save(1, {"x": jnp.arange(3.0)}, tiny_config())
  saver.finish()
  assert saver.directory == str(tmp_path / "runs" / "relative" / "checkpoints")
  restored, step = checkpointing.Checkpointer(
      "runs/relative", keep=1).restore({"x": jnp.zeros(3)})
  assert step == 1
  np.testing.assert_array_equal(restored["x"], [0.0, 1.0, 2.0])



def test_another_model_config_is_named_field_by_field(tmp_path):
  saver = checkpointing.Checkpointer(str(tmp_path), keep=1)
  saver.check_model_config(tiny_config())  # an empty workdir takes any
  saver.save(1, {"x": jnp.ones(2)}, tiny_config())
  saver.finish()
  saver.check_model_config(tiny_config())
  # remat trades memory for compute: a run may resume with it switched.
  saver.check_model_config(tiny_config(model=tiny_model(remat=True)))
  other = tiny_config(model=tiny_model(mask_ratio=0.5, norm_pix_loss=False))
  with pytest.raises(ValueError) as error:
    saver.check_model_config(other)
  message = str(error.value)
  assert "model.mask_ratio: checkpoint 0.75 vs config 0.5" in message
  assert "model.norm_pix_loss: checkpoint True vs config False" in message
  assert "new --workdir" in message


def _two_steps(workdir):
  saver = checkpointing.Checkpointer(workdir, keep=3)
  for step in (1, 2):
    saver.save(step, {"x": jnp.full((4,), float(step))}, tiny_config())
  saver.finish()
  return os.path.join(saver.directory, "2")


def _remove_state_metadata(step_dir):
  os.remove(os.path.join(step_dir, "state", "_METADATA"))


def _garble_state_manifest(step_dir):
  with open(os.path.join(step_dir, "state", "manifest.ocdbt"), "w") as f:
    f.write("garbage")


def _remove_state(step_dir):
  shutil.rmtree(os.path.join(step_dir, "state"))


@pytest.mark.parametrize("damage", [_remove_state_metadata,
                                    _garble_state_manifest, _remove_state])
def test_unreadable_newest_checkpoint_falls_back_to_the_previous(
    tmp_path, caplog, damage):
  workdir = str(tmp_path)
  damage(_two_steps(workdir))
  reader = checkpointing.Checkpointer(workdir, keep=3)
  with caplog.at_level(logging.WARNING):
    restored, step = reader.restore({"x": jnp.zeros(4)})
  assert step == 1
  np.testing.assert_array_equal(restored["x"], np.ones(4))
  assert re.search(r"checkpoint at step 2 .* is moved to 2\.corrupt\.\d+: "
                   r"\S", caplog.text), caplog.text
  # Set aside, not deleted; and the run can save step 2 again.
  assert [name.split(".")[:2] for name in os.listdir(reader.directory)
          if name.startswith("2")] == [["2", "corrupt"]]
  reader.save(2, {"x": jnp.full((4,), 5.0)}, tiny_config())
  reader.finish()
  assert reader.all_steps() == [1, 2]


@pytest.fixture
def no_retry_delays(monkeypatch):
  monkeypatch.setattr(checkpointing, "RETRY_DELAYS_S", (0, 0))


@pytest.mark.parametrize("error", [OSError("503 Service Unavailable"),
                                   TypeError("a bug of ours")])
def test_a_failure_that_is_not_damage_sets_nothing_aside(
    tmp_path, monkeypatch, no_retry_delays, error):
  # A storage outage or a bug looks like an unreadable checkpoint; its files
  # are whole, so the newest step must stay (else the run silently resumes
  # from an older one): read again, then fail.
  workdir = str(tmp_path)
  _two_steps(workdir)
  reader = checkpointing.Checkpointer(workdir, keep=3)
  attempts = []

  def failing(*args, **kwargs):
    attempts.append(1)
    raise error

  monkeypatch.setattr(reader._manager, "restore", failing)
  with pytest.raises(RuntimeError, match=f"step 2 .*{error}.*files look "
                     "whole; it is left in place"):
    reader.restore({"x": jnp.zeros(4)})
  assert len(attempts) == 3  # the first read and two retries
  assert reader.all_steps() == [1, 2]


def test_a_passing_storage_error_is_read_again(tmp_path, monkeypatch,
                                               no_retry_delays):
  workdir = str(tmp_path)
  _two_steps(workdir)
  reader = checkpointing.Checkpointer(workdir, keep=3)
  restore = reader._manager.restore
  failures = [OSError("503 Service Unavailable")]

  def flaky(*args, **kwargs):
    if failures:
      raise failures.pop()
    return restore(*args, **kwargs)

  monkeypatch.setattr(reader._manager, "restore", flaky)
  restored, step = reader.restore({"x": jnp.zeros(4)})
  assert step == 2
  np.testing.assert_array_equal(restored["x"], np.full(4, 2.0))


def test_a_damaged_oldest_checkpoint_stays_in_place(tmp_path):
  # Setting the only checkpoint aside would make the next run start from
  # scratch in a workdir that holds a run.
  workdir = str(tmp_path)
  step_dir = _two_steps(workdir)
  shutil.rmtree(step_dir)
  _remove_state_metadata(os.path.join(os.path.dirname(step_dir), "1"))
  reader = checkpointing.Checkpointer(workdir, keep=3)
  with pytest.raises(RuntimeError, match="step 1 .* the oldest there, is "
                     "damaged .*_METADATA is missing.*left in place"):
    reader.restore({"x": jnp.zeros(4)})
  assert reader.all_steps() == [1]


def test_shapes_of_another_model_are_refused_not_skipped(tmp_path):
  workdir = str(tmp_path)
  _remove_state(_two_steps(workdir))
  with pytest.raises(ValueError, match=r"x: checkpoint \(4,\) vs model \(5,\)"):
    checkpointing.Checkpointer(workdir, keep=3).restore(
        {"x": jnp.zeros(5)})


# Saves step 1, starts saving a 128 MiB step 2 and is killed mid-write.
# The save of step 2 runs in orbax's background thread, which may not have
# created its temporary directory yet when save() returns (on a busy
# machine it had not): wait for it, then die mid-write.
KILLED_MID_SAVE = """
import os, signal, sys, time
import jax.numpy as jnp
from mae_jax import checkpointing
from testing_utils import tiny_config

saver = checkpointing.Checkpointer(sys.argv[1], keep=3)
saver.save(1, {"x": jnp.ones(4)}, tiny_config())
saver.finish()
saver.save(2, {"x": jnp.ones(32 * 2**20)}, tiny_config())
deadline = time.monotonic() + 60
while (not any(name.startswith("2.orbax-checkpoint-tmp")
               for name in os.listdir(saver.directory))
       and time.monotonic() < deadline):
  time.sleep(0.001)
print(sorted(os.listdir(saver.directory)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_crash_during_a_save_leaves_the_previous_checkpoint_newest(
    tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([root, os.path.join(root, "tests")]))
  result = subprocess.run(
      [sys.executable, "-c", KILLED_MID_SAVE, str(tmp_path)], env=env,
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  # It died while step 2 was still in orbax's temporary directory.
  assert "'2.orbax-checkpoint-tmp" in result.stdout, result.stdout
  reader = checkpointing.Checkpointer(str(tmp_path), keep=3)
  assert reader.all_steps() == [1]
  restored, step = reader.restore({"x": jnp.zeros(4)})
  assert step == 1
  np.testing.assert_array_equal(restored["x"], np.ones(4))


def _three_steps(workdir, resume_step=0):
  saver = checkpointing.Checkpointer(workdir, keep=5)
  for step in (1, 2, 3):
    saver.save(step, {"x": jnp.full((4,), float(step))},
               tiny_config(resume_step=resume_step))
  saver.finish()
  return saver


def test_resume_step_restores_it_and_moves_the_later_steps_aside(tmp_path):
  workdir = str(tmp_path)
  _three_steps(workdir)
  reader = checkpointing.Checkpointer(workdir, keep=5)
  restored, step = reader.restore({"x": jnp.zeros(4)}, resume_step=1)
  assert step == 1
  np.testing.assert_array_equal(restored["x"], np.ones(4))
  assert reader.all_steps() == [1]
  # Moved aside, not deleted; and the run can save step 2 again.
  assert sorted(name.split(".")[:2] for name in os.listdir(reader.directory)
                if "abandoned" in name) == [["2", "abandoned"],
                                            ["3", "abandoned"]]
  reader.save(2, {"x": jnp.full((4,), 7.0)}, tiny_config(resume_step=1))
  reader.finish()
  # A second run with the same resume_step resumes from the newest step of
  # the rolled-back run.
  again = checkpointing.Checkpointer(workdir, keep=5)
  restored, step = again.restore({"x": jnp.zeros(4)}, resume_step=1)
  assert step == 2
  np.testing.assert_array_equal(restored["x"], np.full(4, 7.0))


def test_resume_step_that_is_not_kept_lists_the_kept_ones(tmp_path):
  workdir = str(tmp_path)
  _three_steps(workdir)
  with pytest.raises(ValueError, match=r"resume_step=5 .* kept steps are "
                     r"\[1, 2, 3\]"):
    checkpointing.Checkpointer(workdir, keep=5).restore({"x": jnp.zeros(4)},
                                                       resume_step=5)


def test_a_save_that_orbax_skips_is_an_error(tmp_path):
  # orbax skips a step that is not newer than the directory's newest (another
  # run writing there) and only says so by returning False.
  saver = checkpointing.Checkpointer(str(tmp_path), keep=3)
  saver.save(2, {"x": jnp.ones(2)}, tiny_config())
  with pytest.raises(RuntimeError, match="did not save step 2 .* holds step "
                     "2 already"):
    saver.save(2, {"x": jnp.ones(2)}, tiny_config())


def test_a_workdir_whose_configs_cannot_be_read_is_not_taken_for_empty(
    tmp_path):
  workdir = str(tmp_path)
  step_dir = _two_steps(workdir)
  for step_dir in (step_dir, os.path.join(os.path.dirname(step_dir), "1")):
    shutil.rmtree(os.path.join(step_dir, "config"))
  with pytest.raises(RuntimeError, match=r"cannot tell which run .* \[1, 2\]"):
    checkpointing.Checkpointer(workdir, keep=3).check_model_config(
        tiny_config())


def test_damage_is_told_by_the_files_and_the_data_errors(tmp_path):
  step_dir = epath.Path(_two_steps(str(tmp_path)))
  assert checkpointing.damage(step_dir, []) == ""
  # Transient storage errors and bugs are not damage.
  assert checkpointing.damage(step_dir, [
      "process 0: ValueError: UNAVAILABLE: Error reading x: 503",
      "process 0: TypeError: unsupported operand"]) == ""
  truncated = ("process 0: ValueError: OUT_OF_RANGE: Error reading \"x/0\" "
               "in OCDBT database: Requested byte range is not valid")
  assert checkpointing.damage(step_dir, [truncated]) == truncated
  (step_dir / "state" / "_METADATA").write_text("{not json")
  assert "state/_METADATA is not valid JSON" in checkpointing.damage(
      step_dir, [])
