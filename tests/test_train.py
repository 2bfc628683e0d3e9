import functools
import json
import logging
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mae_jax import devices as devices_lib
from mae_jax import models
from mae_jax import optim
from mae_jax import tasks
from mae_jax import train
from mae_jax.data import sources
from testing_utils import assert_same_trajectory, tiny_classifier_config
from testing_utils import tiny_config


def _read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _fixed_batch(config, num_devices):
  """The first digits, as the pipeline would lay them out."""
  per_device = config.batch_size // num_devices
  size = config.model.image_size
  digits = sources.DigitsSource("train", size)
  examples = [digits[i] for i in range(config.batch_size)]
  images = np.stack([example.image for example in examples])
  labels = np.asarray([example.label for example in examples], np.int32)
  return {
      "image": images.reshape(num_devices, per_device, size, size, 3),
      "label": labels.reshape(num_devices, per_device),
      "example_id": np.arange(config.batch_size, dtype=np.int32).reshape(
          num_devices, per_device),
  }


def _step_fn(config, grad_accum_steps=1, devices=None):
  task = tasks.make_task(config, train.AXIS)
  schedule = optim.make_schedule(config)
  state = train.create_train_state(task, config, jax.random.key(0), schedule,
                                   load_init_from=False)
  step = jax.pmap(functools.partial(
      train.train_step, task=task, schedule=schedule,
      grad_accum_steps=grad_accum_steps), axis_name=train.AXIS,
                  in_axes=train.STEP_IN_AXES, out_axes=train.STEP_OUT_AXES,
                  devices=devices)
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


def _mixing_finetune_config():
  config = tiny_classifier_config("finetune", batch_size=16)
  config.augment.update(mixup_alpha=0.8, cutmix_alpha=1.0, mix_group_size=4,
                        label_smoothing=0.1, random_erasing=0.25)
  return config


@pytest.mark.parametrize("make_config", [tiny_config, _mixing_finetune_config],
                         ids=["pretrain", "finetune_with_mixup"])
def test_accumulating_two_micro_batches_is_the_whole_batch(make_config):
  # The pmapped step end to end: masking, drop path, random erasing and
  # mixup groups are keyed by example and step, so splitting each device's
  # 8 examples in two micro-batches leaves the gradient as it was.
  config = make_config()
  devices = jax.local_devices()[:2]
  batch = devices_lib.shard(_fixed_batch(config, 2), devices)
  rng = devices_lib.replicate(jax.random.key(1), devices)
  results = []
  for accum in (1, 2):
    state, step = _step_fn(config, accum, devices)
    new_state, metrics = step(devices_lib.replicate(state, devices), batch,
                              rng)
    # Adam's first moment after one step is (1 - b1) x the gradient.
    mu = optax.tree_utils.tree_get(
        devices_lib.unreplicate(new_state.opt_state), "mu")
    results.append((float(devices_lib.unreplicate(metrics).loss.compute()),
                    jax.tree.map(np.asarray, mu)))
  (loss_whole, mu_whole), (loss_split, mu_split) = results
  np.testing.assert_allclose(loss_split, loss_whole, rtol=1e-6)
  chex.assert_trees_all_close(mu_split, mu_whole, rtol=1e-4, atol=1e-9)
  # Not vacuous: the gradient is far from zero.
  assert optax.global_norm(mu_whole) > 1e-3


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


def test_the_mean_over_devices_is_skipped_on_a_single_device():
  values = np.arange(8, dtype=np.float32).reshape(8, 1)

  def mean(devices):
    return jax.pmap(train.mean_over_devices, axis_name=train.AXIS,
                    devices=devices)

  eight = mean(jax.local_devices())
  np.testing.assert_allclose(eight(values), np.full((8, 1), 3.5))
  assert "all-reduce" in eight.lower(values).compile().as_text()
  one = mean(jax.local_devices()[:1])
  np.testing.assert_array_equal(one(values[:1]), values[:1])
  # XLA would emit the all-reduce for one device too: a copy of every
  # gradient on CPU (train.mean_over_devices).
  assert "all-reduce" not in one.lower(values[:1]).compile().as_text()


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


def test_a_diverging_update_stops_the_run_at_its_step(tmp_path):
  workdir = str(tmp_path)
  config = tiny_config(total_steps=2, checkpoint_every_steps=2)
  train.train_and_evaluate(config, workdir)
  # An absurd learning rate makes step 3's update overflow while its loss is
  # still finite: the update norm stops the run at step 3, not at step 4
  # where the loss would show it.
  config.total_steps, config.warmup_steps = 6, 0
  config.optimizer.base_lr = 1e35
  with pytest.raises(FloatingPointError,
                     match=r"not finite at step 3.*steps \[2\].*resume "
                     r"from step 2.*new --workdir"):
    train.train_and_evaluate(config, workdir)
  checkpointer = train.checkpointing.Checkpointer(workdir, 3)
  assert checkpointer.all_steps() == [2]
  state, _ = _step_fn(config)
  restored, step = checkpointer.restore(
      train.checkpoint_tree(state, config, digest=None))
  assert step == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored))


def test_update_norm_is_the_norm_of_the_change_of_the_parameters():
  config = tiny_config(warmup_steps=0)
  state, step = _step_fn(config)
  devices = jax.local_devices()
  replicated = devices_lib.replicate(state, devices)
  new_state, metrics = step(replicated, devices_lib.shard(
      _fixed_batch(config, 8), devices), devices_lib.replicate(
          jax.random.key(1), devices))
  new_params = devices_lib.unreplicate(new_state).params
  change = np.sqrt(sum(
      np.sum((np.float64(new) - np.float64(old))**2) for new, old in zip(
          jax.tree.leaves(new_params), jax.tree.leaves(state.params))))
  update_norm = float(devices_lib.unreplicate(metrics).update_norm.compute())
  assert update_norm > 0
  np.testing.assert_allclose(update_norm, float(change), rtol=1e-4)


@pytest.mark.parametrize("loss, grad_norm, update_norm, flagged", [
    (1.0, 2.0, 0.1, False),
    (np.nan, 2.0, 0.1, True),
    (1.0, np.inf, 0.1, True),  # the loss is still finite at this step
    (1.0, 2.0, np.inf, True),
])
def test_a_step_with_a_non_finite_loss_gradient_or_update_is_flagged(
    loss, grad_norm, update_norm, flagged):
  metric = train.NonFiniteStep.from_model_output(
      loss=jnp.float32(loss), grad_norm=jnp.float32(grad_norm),
      update_norm=jnp.float32(update_norm), step=jnp.int32(7))
  assert int(metric.merge(train.NonFiniteStep(jnp.int32(-1))).compute()) == (
      7 if flagged else -1)


def test_resume_step_rolls_back_once_and_keeps_the_later_steps(tmp_path):
  workdir = str(tmp_path)
  config = tiny_config(total_steps=4, checkpoint_every_steps=2,
                       log_every_steps=1)
  train.train_and_evaluate(config, workdir)
  # The way out of a run that diverged after step 2: resume from step 2.
  config.update(total_steps=6, resume_step=2)
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 6
  directory = os.path.join(workdir, "checkpoints")
  assert [name.split(".")[:2] for name in os.listdir(directory)
          if ".abandoned." in name] == [["4", "abandoned"]]
  assert [r["step"] for r in _read_metrics(workdir)] == [1, 2, 3, 4, 5, 6]
  # The same command again (after a preemption, say) resumes from the
  # newest step of the rolled-back run, not from step 2 again.
  config.total_steps = 8
  train.train_and_evaluate(config, workdir)
  assert train.checkpointing.Checkpointer(workdir, 3).all_steps() == [4, 6, 8]
  assert [r["step"] for r in _read_metrics(workdir)] == list(range(1, 9))


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
