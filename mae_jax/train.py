"""MAE pretraining: one pure train step, pmapped once, and the loop around it.

Randomness enters the step as a key folded with the step number and each
example's global position in the batch (`masking.example_keys`), so the
trajectory does not depend on how many devices share the batch.
"""

import functools
from absl import logging
import time
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics
from clu import periodic_actions
from etils import epath
from flax.training import train_state

from mae_jax import checkpointing
from mae_jax import devices as devices_lib
from mae_jax import masking
from mae_jax import models
from mae_jax import optim
from mae_jax import visualize
from mae_jax import writers
from mae_jax.data import pipeline
from mae_jax.data import sources
from mae_jax.data import transforms

AXIS = devices_lib.AXIS
TrainState = train_state.TrainState


@flax.struct.dataclass
class NonFiniteStep(metrics.Metric):
  """The first step whose loss was not finite; -1 while all were finite."""
  step: jnp.ndarray

  @classmethod
  def from_model_output(cls, loss, step, **_):
    return cls(jnp.where(jnp.isfinite(loss), -1, step).astype(jnp.int32))

  def merge(self, other):
    return type(self)(jnp.where(self.step >= 0, self.step, other.step))

  def compute(self):
    return self.step


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  grad_norm: metrics.Average.from_output("grad_norm")
  lr: metrics.LastValue.from_output("lr")
  nonfinite_step: NonFiniteStep


def validate_config(config: ml_collections.ConfigDict, process_count: int,
                    local_device_count: int):
  """Checks what would otherwise fail late, with the fix in the message."""
  if config.batch_size <= 0:
    raise ValueError(f"batch_size={config.batch_size} must be positive")
  if config.mode != "pretrain":
    raise ValueError(f"mode={config.mode!r} is not known; use 'pretrain'")
  _, per_device = pipeline.local_batch_layout(
      config.batch_size, 0, process_count, local_device_count)
  if per_device % config.grad_accum_steps:
    raise ValueError(
        f"the per-device batch ({per_device}) is not divisible by "
        f"grad_accum_steps={config.grad_accum_steps}; choose a divisor of "
        f"{per_device}")
  if config.total_steps <= 0 or not 0 <= config.warmup_steps <= config.total_steps:
    raise ValueError(f"need 0 <= warmup_steps ({config.warmup_steps}) <= "
                     f"total_steps ({config.total_steps}) and total_steps > 0")
  for name in ("log_every_steps", "checkpoint_every_steps",
               "figure_every_steps"):
    if config[name] <= 0:
      raise ValueError(f"{name}={config[name]} must be positive")


def create_train_state(model: models.MAE, config: ml_collections.ConfigDict,
                       rng: jax.Array, schedule: optax.Schedule) -> TrainState:
  """Fresh parameters and optimizer state (unreplicated)."""
  images = jnp.zeros((1, model.image_size, model.image_size, 3), jnp.float32)
  noise = jnp.zeros((1, model.num_patches), jnp.float32)
  params = jax.jit(model.init)(rng, images, noise)["params"]
  state = TrainState.create(apply_fn=model.apply, params=params,
                            tx=optim.make_optimizer(config, schedule))
  return state.replace(step=jnp.zeros((), jnp.int32))


def accumulate_gradients(loss_fn: Callable, params, inputs: tuple,
                         accum_steps: int):
  """Mean loss and gradient over `accum_steps` equal micro-batches.

  Splitting the batch inside the step gives the same update as the whole
  batch at once (the losses are means over equal-sized parts), in less
  memory.
  """
  grad_fn = jax.value_and_grad(loss_fn)
  if accum_steps == 1:
    return grad_fn(params, *inputs)
  micro = jax.tree.map(
      lambda x: x.reshape((accum_steps, -1) + x.shape[1:]), inputs)

  def add(carry, micro_inputs):
    loss, grads = grad_fn(params, *micro_inputs)
    return jax.tree.map(jnp.add, carry, (loss, grads)), None

  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
  (loss, grads), _ = jax.lax.scan(add, zeros, micro)
  return jax.tree.map(lambda x: x / accum_steps, (loss, grads))


def train_step(state: TrainState, batch: dict, rng: jax.Array, *,
               model: models.MAE, schedule: optax.Schedule,
               grad_accum_steps: int) -> tuple[TrainState, TrainMetrics]:
  """One optimizer step on this device's share of the batch (under pmap)."""
  images = transforms.normalize(batch["image"], xp=jnp)
  keys = masking.example_keys(rng, state.step, batch["example_id"])
  noise = masking.masking_noise(keys, model.num_patches)

  def loss_fn(params, images, noise):
    return model.apply({"params": params}, images, noise).loss

  loss, grads = accumulate_gradients(loss_fn, state.params, (images, noise),
                                     grad_accum_steps)
  loss, grads = jax.lax.pmean((loss, grads), AXIS)
  new_state = state.apply_gradients(grads=grads)
  step_metrics = TrainMetrics.single_from_model_output(
      loss=loss, grad_norm=optax.global_norm(grads), lr=schedule(state.step),
      step=state.step + 1)
  return new_state, step_metrics


def checkpoint_tree(state: TrainState) -> dict:
  """What a checkpoint holds: the step, parameters and optimizer state."""
  return {"step": state.step, "params": state.params,
          "opt_state": state.opt_state}


@jax.jit
def _all_finite(tree) -> jnp.ndarray:
  return jnp.all(jnp.asarray([jnp.isfinite(x).all()
                              for x in jax.tree.leaves(tree)]))


def _raise_if_diverged(train_metrics: TrainMetrics | None, params, step: int,
                       checkpointer: checkpointing.Checkpointer):
  """Stops the run, naming the step, if the loss or `params` are not finite.

  Called before anything is written. The loss is tracked at every step for
  free; the parameters, which a finite loss's update can still overflow, are
  checked here only (`params` is None when nothing of them is written).
  """
  bad_step = -1 if train_metrics is None else int(
      train_metrics.nonfinite_step.compute())
  if bad_step < 0 and params is not None and not _all_finite(params):
    bad_step = step
  if bad_step < 0:
    return
  last = checkpointer.latest_step()
  kept = (f"the last good checkpoint (step {last}) in {checkpointer.directory}"
          " is intact" if last is not None else "no checkpoint was written")
  raise FloatingPointError(
      f"the training diverged: the loss or the parameters are not finite at "
      f"step {bad_step}; stopped without saving, {kept}. Lower "
      "--config.optimizer.base_lr or set --config.optimizer.grad_clip_norm, "
      "then run again to resume.")


def _summary(train_metrics: TrainMetrics, steps: int, batch_size: int,
             seconds: float) -> dict[str, float]:
  """The scalars of one log line; img/s over the steps since the last one."""
  summary = train_metrics.compute()
  summary.pop("nonfinite_step")
  scalars = {f"train/{k}": v for k, v in summary.items()}
  if steps > 0 and seconds > 0:
    scalars["train/img_per_s"] = steps * batch_size / seconds
  return scalars


class FigureMaker:
  """Reconstructions of a fixed set of images with a fixed masking."""

  def __init__(self, model: models.MAE, source: sources.Source, count: int,
               seed: int):
    images = pipeline.eval_images(source, count, model.image_size)
    self._images = transforms.normalize(images)
    self._noise = jax.random.uniform(jax.random.key(seed),
                                     (len(images), model.num_patches))
    self._model = model
    self._apply = jax.jit(model.apply)

  def __call__(self, params) -> np.ndarray:
    out = self._apply({"params": params}, self._images, self._noise)
    return visualize.reconstruction_figure(
        self._images, np.asarray(out.pred), np.asarray(out.mask),
        self._model.patch_size, self._model.norm_pix_loss)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: Sequence[Any] | None = None) -> TrainState:
  """Runs (or resumes) pretraining in `workdir`; returns the final state.

  `devices` restricts the run to some local devices (tests compare 1 and 8).
  """
  devices = list(devices or jax.local_devices())
  validate_config(config, jax.process_count(), len(devices))
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  model = models.build(config.model)
  schedule = optim.warmup_cosine_schedule(
      optim.peak_learning_rate(config), config.warmup_steps,
      config.total_steps, config.optimizer.min_lr)
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))

  checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  state = create_train_state(model, config, init_rng, schedule)
  restored, start_step = checkpointer.restore_latest(checkpoint_tree(state))
  state = state.replace(**restored)
  if start_step:
    logging.info("Resuming from step %d", start_step)
  if start_step >= config.total_steps:
    logging.info("Nothing to do: step %d >= total_steps %d", start_step,
                 config.total_steps)
    checkpointer.close()
    return state

  source = sources.open_source(config.data, config.data.split,
                               config.model.image_size)
  batches = pipeline.TrainPipeline(
      source, config.data, batch_size=config.batch_size,
      image_size=config.model.image_size, seed=config.seed,
      start_step=start_step, local_device_count=len(devices),
      process_index=jax.process_index(), process_count=jax.process_count())
  make_figure = FigureMaker(model, source, config.figure_images, config.seed)
  writer = writers.create_writer(workdir)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.total_steps, every_steps=config.log_every_steps)

  p_train_step = jax.pmap(
      functools.partial(train_step, model=model, schedule=schedule,
                        grad_accum_steps=config.grad_accum_steps),
      axis_name=AXIS, donate_argnums=(0,),
      devices=devices if len(devices) != jax.local_device_count() else None)
  state = devices_lib.replicate(state, devices)
  step_rngs = devices_lib.replicate(step_rng, devices)
  device_batches = devices_lib.prefetch_to_devices(batches, devices)

  train_metrics = None
  run_start = time.time()
  try:
    for step in range(start_step + 1, config.total_steps + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, step_metrics = p_train_step(state, next(device_batches),
                                           step_rngs)
      step_metrics = devices_lib.unreplicate(step_metrics)
      train_metrics = (step_metrics if train_metrics is None
                       else train_metrics.merge(step_metrics))
      if step == start_step + 1:  # keep compilation out of img/s
        jax.block_until_ready(step_metrics)
        logging.info("First step (with compilation) took %.1fs",
                     time.time() - run_start)
        interval_start, interval_first_step = time.time(), step
      report_progress(step)

      is_last = step == config.total_steps
      # Step 1 is logged too, so that the initial loss is on record.
      log = step % config.log_every_steps == 0 or is_last or step == 1
      figure = step % config.figure_every_steps == 0 or is_last
      save = step % config.checkpoint_every_steps == 0 or is_last
      if not (log or figure or save):
        continue
      params = devices_lib.unreplicate(state.params) if figure or save else None
      # Nothing is written from a state that has diverged.
      _raise_if_diverged(train_metrics, params, step, checkpointer)
      if log:
        checkpointer.check_for_errors()  # a failed async save stops the run
        scalars = _summary(train_metrics, step - interval_first_step,
                           config.batch_size, time.time() - interval_start)
        if batches.skipped_images:
          scalars["data/skipped_images"] = batches.skipped_images
        writer.write_scalars(step, scalars)
        train_metrics = None
        interval_start, interval_first_step = time.time(), step
      if figure:
        image = make_figure(params)
        if jax.process_index() == 0:
          writer.write_images(step, {"reconstruction": image[None]})
          visualize.save_png(
              image, str(epath.Path(workdir) / f"reconstruction_{step:07d}.png"),
              model.image_size)
      if save:
        checkpointer.save(step, checkpoint_tree(devices_lib.unreplicate(state)),
                          config)
  finally:
    batches.close()
    checkpointer.wait()
    checkpointer.close()
    writer.flush()
  return devices_lib.unreplicate(state)
