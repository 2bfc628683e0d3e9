import functools
import json
import logging
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mae_jax import devices as devices_lib
from mae_jax import models
from mae_jax import optim
from mae_jax import tasks
from mae_jax import train
from mae_jax.data import sources
from testing_utils import assert_same_trajectory, tiny_config


def _read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _fixed_batch(config, num_devices):
  """The first digits, as the pipeline would lay them out."""
  per_device = config.batch_size // num_devices
  size = config.model.image_size
  digits = sources.DigitsSource("train", size)
  images = np.stack([digits[i].image for i in range(config.batch_size)])
  return {
      "image": images.reshape(num_devices, per_device, size, size, 3),
      "label": np.zeros((num_devices, per_device), np.int32),
      "example_id": np.arange(config.batch_size, dtype=np.int32).reshape(
          num_devices, per_device),
  }


def _step_fn(config, grad_accum_steps=1):
  task = tasks.make_task(config, train.AXIS)
  schedule = optim.make_schedule(config)
  state = train.create_train_state(task, config, jax.random.key(0), schedule)
  step = jax.pmap(functools.partial(
      train.train_step, task=task, schedule=schedule,
      grad_accum_steps=grad_accum_steps), axis_name=train.AXIS)
  return state, step


def test_loss_decreases_on_a_fixed_batch():
  config = tiny_config(total_steps=40, warmup_steps=0)
  config.optimizer.base_lr = 0.016  # lr 1e-3 at batch 16
  state, step = _step_fn(config)
  devices = jax.local_devices()
  state = devices_lib.replicate(state, devices)
  batch = devices_lib.shard(_fixed_batch(config, 8), devices)
  rng = devices_lib.replicate(jax.random.key(1), devices)
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch, rng)
    losses.append(float(devices_lib.unreplicate(metrics).loss.compute()))
  assert losses[-1] < 0.7 * losses[0], losses


def test_gradient_accumulation_matches_the_whole_batch():
  config = tiny_config()
  model = models.build(config.model)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                      jnp.zeros((1, 16)))["params"]
  images = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
  noise = jax.random.uniform(jax.random.key(2), (8, 16))

  def loss_fn(params, model_state, batch):
    images, noise = batch
    out = model.apply({"params": params}, images, noise)
    return out.loss, (model_state, {"mean_pred": out.pred.mean()})

  accumulate = jax.jit(train.accumulate_gradients, static_argnums=(0, 4))
  whole = accumulate(loss_fn, params, {}, (images, noise), 1)
  in_four = accumulate(loss_fn, params, {}, (images, noise), 4)
  chex.assert_trees_all_close(whole, in_four, rtol=1e-5, atol=1e-7)


def test_same_trajectory_on_one_and_on_eight_devices(tmp_path):
  config = tiny_config(total_steps=4, log_every_steps=1)
  one = train.train_and_evaluate(config, str(tmp_path / "one"),
                                 devices=jax.local_devices()[:1])
  eight = train.train_and_evaluate(config, str(tmp_path / "eight"))
  losses_one = [m["train/loss"] for m in _read_metrics(tmp_path / "one")]
  losses_eight = [m["train/loss"] for m in _read_metrics(tmp_path / "eight")]
  assert len(losses_one) == 4
  np.testing.assert_allclose(losses_one, losses_eight, rtol=1e-5)
  assert_same_trajectory(one.params, eight.params, config)
  # A different seed is a different trajectory: the comparison has teeth.
  other = train.train_and_evaluate(tiny_config(total_steps=4, seed=1),
                                   str(tmp_path / "other"))
  with pytest.raises(AssertionError):
    assert_same_trajectory(one.params, other.params, config)


class _CompileLog(logging.Handler):

  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def test_train_step_compiles_once(tmp_path):
  handler = _CompileLog()
  logger = logging.getLogger("jax._src.interpreters.pxla")
  logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      train.train_and_evaluate(
          tiny_config(total_steps=5, log_every_steps=1, figure_every_steps=2,
                      checkpoint_every_steps=2), str(tmp_path))
  finally:
    logger.removeHandler(handler)
  # pmap compiles its function as `jit(_fun)`; the step is the only pmap.
  step_compiles = [m for m in handler.messages
                   if m.startswith("Compiling jit(_fun)")]
  assert len(step_compiles) == 1, step_compiles


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
  workdir = str(tmp_path)
  config = tiny_config(total_steps=2, checkpoint_every_steps=2)
  train.train_and_evaluate(config, workdir)
  # An absurd learning rate blows the parameters up at step 3, so the loss of
  # step 4 is not finite (step 3's loss was computed before the update).
  config.total_steps, config.warmup_steps = 6, 0
  config.optimizer.base_lr = 1e35
  with pytest.raises(FloatingPointError,
                     match=r"not finite at step 4.*step 2\) .* is intact"):
    train.train_and_evaluate(config, workdir)
  checkpointer = train.checkpointing.Checkpointer(workdir, 3)
  assert checkpointer.all_steps() == [2]
  state, _ = _step_fn(config)
  restored, step = checkpointer.restore_latest(
      train.checkpoint_tree(state, config, digest=None))
  assert step == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored))


def test_parameters_overflowed_by_the_last_step_are_not_saved(tmp_path):
  workdir = str(tmp_path)
  config = tiny_config(total_steps=2, checkpoint_every_steps=2)
  train.train_and_evaluate(config, workdir)
  # An infinite lr makes step 3's update non-finite while its loss is finite;
  # step 3 is the last step, so only the parameter check catches it.
  config.total_steps, config.warmup_steps = 3, 0
  config.optimizer.base_lr = float("inf")
  with pytest.raises(FloatingPointError, match=r"not finite at step 3"):
    train.train_and_evaluate(config, workdir)
  assert train.checkpointing.Checkpointer(workdir, 3).all_steps() == [2]


def test_a_run_in_epochs_trains_the_steps_they_make(tmp_path):
  # 1497 training digits at batch 16: 93 steps an epoch; 0.05 epochs -> 5.
  config = tiny_config(total_steps=0, total_epochs=0.05, warmup_steps=0,
                       warmup_epochs=0.02, log_every_steps=1)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 5
  records = _read_metrics(tmp_path)
  assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
  # Warm-up of round(0.02 * 93) = 2 steps: lr 0 at step 1, the peak at 3.
  peak = optim.peak_learning_rate(config)
  lrs = [r["train/lr"] for r in records]
  np.testing.assert_allclose(lrs[:3], [0.0, peak / 2, peak], rtol=1e-6)
