"""One pure train step, pmapped once, and the loop around it, for every mode.

The mode's task (tasks.py) supplies the model, the loss, the initial
parameters and its evaluators (evaluators.py); this module trains it:
durations, optimizer, accumulation, checkpoints, logging, and running the
evaluators at their intervals. Randomness enters the step as a key that the
task folds with the step and each example's global position in the batch, so
the trajectory does not depend on how many devices share it.
"""

from absl import logging
import functools
import hashlib
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
from mae_jax import durations
from mae_jax import evaluators as evaluators_lib
from mae_jax import initialization
from mae_jax import multihost
from mae_jax import optim
from mae_jax import preemption
from mae_jax import tasks
from mae_jax import visualize
from mae_jax import workdir_lock
from mae_jax import writers
from mae_jax.data import pipeline
from mae_jax.data import sources

AXIS = devices_lib.AXIS


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and the model's other variables (the
  linear probe's BatchNorm statistics; empty otherwise)."""
  model_state: Any = flax.struct.field(default_factory=dict)


@flax.struct.dataclass
class NonFiniteStep(metrics.Metric):
  """The first step whose loss, gradient or update was not finite; -1 while
  all were finite. The norms catch a step whose loss was still finite but
  whose update ruined the parameters, before they are saved."""
  step: jnp.ndarray

  @classmethod
  def from_model_output(cls, loss, grad_norm, update_norm, step, **_):
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
              & jnp.isfinite(update_norm))
    return cls(jnp.where(finite, -1, step).astype(jnp.int32))

  def merge(self, other):
    return type(self)(jnp.where(self.step >= 0, self.step, other.step))

  def compute(self):
    return self.step


@flax.struct.dataclass
class Averages(metrics.Metric):
  """Means over steps of the task's extra scalars (e.g. the terms of a
  composite loss), whatever their names."""
  totals: dict
  count: jnp.ndarray

  @classmethod
  def from_model_output(cls, extra, **_):
    return cls(extra, jnp.ones((), jnp.int32))

  def merge(self, other):
    return type(self)(jax.tree.map(jnp.add, self.totals, other.totals),
                      self.count + other.count)

  def compute(self):
    return {name: total / self.count for name, total in self.totals.items()}


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output("loss")
  grad_norm: metrics.Average.from_output("grad_norm")
  update_norm: metrics.Average.from_output("update_norm")
  lr: metrics.LastValue.from_output("lr")
  nonfinite_step: NonFiniteStep
  extra: Averages


def require_a_train_step(config: ml_collections.ConfigDict):
  """Raises for a config whose run has no train step (k-NN, `eval_only`),
  for the tools that time or estimate that step."""
  if config.get("eval_only", False):
    raise ValueError(f"mode={config.mode} with eval_only trains nothing: "
                     "time or estimate a pretraining or classification "
                     "config")


def validate_config(config: ml_collections.ConfigDict, process_count: int,
                    local_device_count: int):
  """Checks what would otherwise fail late, with the fix in the message.

  A run that only evaluates (`eval_only`; k-NN always) is not asked for the
  training settings it does not use.
  """
  if config.mode not in tasks.MODES:
    raise ValueError(f"mode={config.mode!r} is not known; use one of "
                     f"{tasks.MODES}")
  task = tasks.make_task(config, AXIS)
  if config.get("eval_only", False):
    task.validate(micro_batch=None)
    return
  if config.batch_size <= 0:
    raise ValueError(f"batch_size={config.batch_size} must be positive")
  _, per_device = pipeline.local_batch_layout(
      config.batch_size, 0, process_count, local_device_count)
  if per_device % config.grad_accum_steps:
    raise ValueError(
        f"the per-device batch ({per_device}) is not divisible by "
        f"grad_accum_steps={config.grad_accum_steps}; choose a divisor of "
        f"{per_device}")
  durations.check(config)
  for name in ("log_every_steps", "checkpoint_every_steps"):
    if config[name] <= 0:
      raise ValueError(f"{name}={config[name]} must be positive")
  if config.resume_step < 0:
    raise ValueError(f"resume_step={config.resume_step}: use 0 (the newest "
                     "checkpoint) or a kept step")
  task.validate(per_device // config.grad_accum_steps)


def create_train_state(task, config: ml_collections.ConfigDict,
                       rng: jax.Array, schedule: optax.Schedule,
                       load_init_from: bool = True) -> TrainState:
  """Initial parameters and optimizer state, unreplicated.

  With `load_init_from`, the task loads what `config.init_from` names (a
  resumed run restores what it trained from its own checkpoint instead).
  """
  params, model_state = task.init_variables(rng, load_init_from)
  state = TrainState.create(
      apply_fn=task.model.apply, params=params, model_state=model_state,
      tx=optim.make_optimizer(config, schedule, params))
  return state.replace(step=jnp.zeros((), jnp.int32))


def accumulate_gradients(loss_fn: Callable, params, model_state, batch,
                         accum_steps: int):
  """(mean loss, mean gradient, (model state, mean extra scalars)) over
  `accum_steps` equal micro-batches of `batch`.

  `loss_fn(params, model_state, batch) -> (loss, (new model_state, extra
  scalars))`. Splitting the batch inside the step gives the same update as
  the whole batch at once (the losses are means over equal-sized parts), in
  less memory; the model state (BatchNorm statistics) is threaded through
  the micro-batches.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:
    (loss, (model_state, extra)), grads = grad_fn(params, model_state, batch)
    return loss, grads, (model_state, extra)
  micro = jax.tree.map(
      lambda x: x.reshape((accum_steps, -1) + x.shape[1:]), batch)

  def add(carry, micro_batch):
    sums, model_state = carry
    (loss, (model_state, extra)), grads = grad_fn(params, model_state,
                                                  micro_batch)
    return (jax.tree.map(jnp.add, sums, (loss, grads, extra)),
            model_state), None

  # The sums start at zero in the shapes of (loss, gradients, extra).
  (loss, (_, extra)), grads = jax.eval_shape(
      grad_fn, params, model_state, jax.tree.map(lambda x: x[0], micro))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       (loss, grads, extra))
  (sums, model_state), _ = jax.lax.scan(add, (zeros, model_state), micro)
  loss, grads, extra = jax.tree.map(lambda s: s / accum_steps, sums)
  return loss, grads, (model_state, extra)


def mean_over_devices(tree: Any) -> Any:
  """`tree` averaged over the devices of the pmapped step; itself when the
  step runs on one device.

  XLA still emits the all-reduce for a single device, and on CPU it is not
  free: a copy of every gradient, and the update's loops that read them ran
  slower after it. Skipping it made the MAE ViT-B step on one 2-core CPU
  device 2-3% faster (benchmarks/cpu_step_forms.py, two runs). The axis
  size is the global one (all processes' devices), so a multi-host run
  still averages.
  """
  if jax.lax.axis_size(AXIS) == 1:
    return tree
  return jax.lax.pmean(tree, AXIS)


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, task,
               schedule: optax.Schedule,
               grad_accum_steps: int) -> tuple[TrainState, TrainMetrics]:
  """One optimizer step on this device's share of the batch (under pmap).

  Only the trainable parameters are differentiated, accumulated and averaged
  over devices; frozen ones (a probe's encoder) enter the loss as
  constants, so no backward pass runs through them and no gradient buffer of
  their size exists.
  """
  trained, frozen = optim.split_frozen(task.config, state.params)

  def loss_fn(trained, model_state, batch):
    params = flax.traverse_util.unflatten_dict({**frozen, **trained})
    return task.loss(params, model_state, batch, rng, state.step)

  loss, grads, (model_state, extra) = accumulate_gradients(
      loss_fn, trained, state.model_state, batch, grad_accum_steps)
  loss, grads, extra = mean_over_devices((loss, grads, extra))
  grad_norm = optax.global_norm(grads)
  # The optimizer gives frozen parameters no update (optim.make_optimizer).
  grads = flax.traverse_util.unflatten_dict(
      {**{k: jnp.zeros_like(v) for k, v in frozen.items()}, **grads})
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state, model_state=model_state)
  step_metrics = TrainMetrics.single_from_model_output(
      loss=loss, grad_norm=grad_norm,
      update_norm=_change_norm(params, state.params),
      lr=schedule(state.step), step=state.step + 1, extra=extra)
  return new_state, step_metrics


# How the pmapped step maps its arguments, (state, batch, step key), and its
# outputs, (new state, metrics): only the batch is split over the devices.
# The state and the key are unmapped (devices.replicate), so XLA:CPU updates
# the donated state in place (mae_jax/devices.py); the metrics are already
# averaged over the devices.
STEP_IN_AXES = (None, 0, None)
STEP_OUT_AXES = (None, None)


def pmap_train_step(task, config: ml_collections.ConfigDict,
                    schedule: optax.Schedule, devices: Sequence[Any]):
  """`train_step` pmapped over `devices`, the state donated."""
  return jax.pmap(
      functools.partial(train_step, task=task, schedule=schedule,
                        grad_accum_steps=config.grad_accum_steps),
      axis_name=AXIS, in_axes=STEP_IN_AXES, out_axes=STEP_OUT_AXES,
      donate_argnums=(0,), devices=evaluators_lib.pmap_devices(devices))


def _change_norm(new_params, old_params) -> jnp.ndarray:
  """The global norm of what the step changed in the parameters.

  That is the norm of the optimizer's update as applied (float32 rounding
  aside), taken from the old and the new parameters rather than from the
  update tree: XLA:TPU then computes it in the same fused loop that writes
  the new parameters and moments. Taking the norm of the update tree made
  XLA write the update out and read it back, 5% of the MAE ViT-B step on a
  v3 core by XLA's estimate (BENCHMARKS.md).
  """
  return optax.global_norm(jax.tree.map(jnp.subtract, new_params,
                                        old_params))


def frozen_digest(config: ml_collections.ConfigDict, params
                  ) -> np.ndarray | None:
  """SHA-256 (32 uint8) of the parameters `config.mode` does not train (a
  probe's encoder), names, shapes and bytes; None when it trains all."""
  _, frozen = optim.split_frozen(config, params)
  if not frozen:
    return None
  digest = hashlib.sha256()
  for path in sorted(frozen):
    value = np.asarray(jax.device_get(frozen[path]))
    digest.update(f"{'/'.join(path)}:{value.dtype}:{value.shape}".encode())
    digest.update(np.ascontiguousarray(value).tobytes())
  return np.frombuffer(digest.digest(), np.uint8)


def checkpoint_tree(state: TrainState, config: ml_collections.ConfigDict,
                    digest: np.ndarray | None) -> dict:
  """What a checkpoint holds: the step, the trained parameters, optimizer
  state and, when there is one, the model state.

  Frozen parameters (a probe's encoder: most of the model) are not saved;
  a resumed or evaluated run loads them from `init_from` again, and their
  `digest` (`frozen_digest`) in the checkpoint tells whether they are still
  the ones it was trained with.
  """
  trained, _ = optim.split_frozen(config, state.params)
  tree = {"step": state.step,
          "params": flax.traverse_util.unflatten_dict(trained),
          "opt_state": state.opt_state}
  if state.model_state:
    tree["model_state"] = state.model_state
  if digest is not None:
    tree["frozen_digest"] = digest
  return tree


def _check_frozen_digest(stored: np.ndarray | None,
                         digest: np.ndarray | None,
                         config: ml_collections.ConfigDict, where: str):
  if stored is not None and not np.array_equal(stored, digest):
    raise ValueError(
        f"the checkpoint in {where} was trained on other frozen parameters "
        f"than those of init_from={config.init_from!r}; they are not saved "
        "with the run. Use the checkpoint the run was started with (a "
        "workdir stands for its newest checkpoint, which changes while its "
        "pretraining goes on: name the step, init_from=DIR/checkpoints/STEP),"
        " or a new --workdir.")


def _with_trained(params, trained) -> dict:
  """`params` with the entries of `trained` (a subtree) replaced."""
  flat = flax.traverse_util.flatten_dict(params)
  flat.update(flax.traverse_util.flatten_dict(trained))
  return flax.traverse_util.unflatten_dict(flat)


@jax.jit
def _all_finite(tree) -> jnp.ndarray:
  return jnp.all(jnp.asarray([jnp.isfinite(x).all()
                              for x in jax.tree.leaves(tree)]))


def _raise_if_diverged(train_metrics: TrainMetrics | None, params, step: int,
                       checkpointer: checkpointing.Checkpointer,
                       config: ml_collections.ConfigDict):
  """Stops the run, naming the step, if the loss, a gradient, an update or
  `params` are not finite, with the ways out.

  Called before anything is written. The loss and the norms are tracked at
  every step for free; the parameters, which finite updates can still
  overflow, are checked here only (`params` is None when nothing of them is
  written).
  """
  bad_step = -1 if train_metrics is None else int(
      train_metrics.nonfinite_step.compute())
  if bad_step < 0 and params is not None and not _all_finite(params):
    bad_step = step
  if bad_step < 0:
    return
  kept = checkpointer.all_steps()
  if not kept:
    raise FloatingPointError(
        f"the training diverged: the loss, a gradient or an update is not "
        f"finite at step {bad_step}; stopped before any checkpoint was "
        "written. Lower --config.optimizer.base_lr or set "
        "--config.optimizer.grad_clip_norm, then run again.")
  fresh = "start again in a new --workdir" + (
      " (with the same --config.init_from)" if config.get("init_from") else "")
  if len(kept) > 1:
    fresh = (f"add --config.resume_step={kept[-2]} (or an earlier kept step; "
             f"the later ones are moved aside, not deleted), or {fresh}")
  raise FloatingPointError(
      f"the training diverged: the loss, a gradient or an update is not "
      f"finite at step {bad_step}; stopped without saving. Checkpoints kept "
      f"in {checkpointer.directory}: steps {kept}. Lower "
      "--config.optimizer.base_lr or set --config.optimizer.grad_clip_norm, "
      f"then run again to resume from step {kept[-1]}. If the run was already "
      f"diverging there, {fresh}.")


def _summary(train_metrics: TrainMetrics, steps: int, batch_size: int,
             seconds: float) -> dict[str, float]:
  """The scalars of one log line; img/s over the steps since the last one."""
  summary = train_metrics.compute()
  summary.pop("nonfinite_step")
  summary.update(summary.pop("extra"))
  scalars = {f"train/{k}": v for k, v in summary.items()}
  if steps > 0 and seconds > 0:
    scalars["train/img_per_s"] = steps * batch_size / seconds
  return scalars


def _write_report(writer, workdir: str, step: int,
                  report: evaluators_lib.Report):
  """An evaluator's scalars to the metrics, its figures to TensorBoard and
  to `<name>_<step>.png` in the workdir (process 0)."""
  if report.scalars:
    logging.info("Evaluation at step %d: %s", step, report.scalars)
    writer.write_scalars(step, report.scalars)
  if report.images and jax.process_index() == 0:
    writer.write_images(step, {name: image[None]
                               for name, image in report.images.items()})
    for name, image in report.images.items():
      visualize.save_png(image,
                         str(epath.Path(workdir) / f"{name}_{step:07d}.png"))


def _evaluated_checkpoint(config: ml_collections.ConfigDict,
                          workdir: str) -> dict:
  """{'step', 'params', ...} of the newest checkpoint in `workdir`, which
  must hold a run with a classifier."""
  stored_config, variables = checkpointing.load_variables(workdir)
  if stored_config.get("mode") == "pretrain":
    raise ValueError(
        f"{workdir} holds a pretraining checkpoint, which has no classifier "
        "to evaluate; evaluate a linear_probe, attentive_probe or finetune "
        f"workdir, or train one with --config.init_from={workdir}")
  if dict(stored_config.model) != dict(config.model):
    logging.warning("The checkpoint's model config differs from the given "
                    "one; evaluating with the given one:\n%s",
                    stored_config.model)
  return variables


def _evaluate(task, config: ml_collections.ConfigDict, workdir: str,
              devices: Sequence[Any]) -> TrainState:
  """`eval_only`: runs the task's evaluators once, writes their results and
  returns the evaluated state.

  What is evaluated: the newest checkpoint in `workdir`, at its step, with
  its frozen parameters loaded from `init_from` again; a model with nothing
  to train (k-NN) has no checkpoint and is evaluated as `init_from` gives
  it, at step 0.
  """
  rng, _ = _rngs(config)
  params, model_state = task.init_variables(rng, load_pretrained=False)
  trained, frozen = optim.split_frozen(config, params)
  stored = _evaluated_checkpoint(config, workdir) if trained else {"step": 0}
  if frozen:  # not in the checkpoint: init_from has them
    params, model_state = task.init_variables(rng, load_pretrained=True)
    _check_frozen_digest(stored.get("frozen_digest"),
                         frozen_digest(config, params), config, workdir)
  params = _with_trained(params, stored.get("params", {}))
  model_state = stored.get("model_state", model_state)
  step = int(stored["step"])
  state = TrainState(step=step, apply_fn=task.model.apply, params=params,
                     model_state=model_state, tx=None, opt_state=None)
  replicated = devices_lib.replicate(state, devices)
  writer = writers.create_writer(workdir)
  for evaluator in task.evaluators(devices, train_source=None):
    _write_report(writer, workdir, step, evaluator(replicated))
  writer.flush()
  return state


def _rngs(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """The run's keys: of the initial parameters (a random frozen encoder
  among them, which `eval_only` makes again) and the one the steps fold."""
  init_rng, step_rng = jax.random.split(jax.random.key(config.seed))
  return init_rng, step_rng


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: Sequence[Any] | None = None) -> TrainState:
  """Runs (or resumes) training of `config.mode` in `workdir`; returns the
  final state, unreplicated.

  `devices` restricts the run to some local devices (tests compare 1 and 8).
  """
  devices = list(devices or jax.local_devices())
  config = initialization.adopt_encoder_options(config, workdir)
  validate_config(config, jax.process_count(), len(devices))
  try:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise PermissionError(f"cannot create --workdir={workdir} ({e}); use a "
                          "directory this process can write to") from e
  if config.get("eval_only", False):
    return _evaluate(tasks.make_task(config, AXIS), config, workdir, devices)
  # One run per workdir (workdir_lock.py); process 0 holds the lock.
  lock = workdir_lock.WorkdirLock(workdir)
  multihost.on_process_0("locking the workdir", lock.acquire)
  try:
    return _train(config, workdir, devices, lock)
  finally:
    lock.release()


def _train(config: ml_collections.ConfigDict, workdir: str,
           devices: Sequence[Any],
           lock: workdir_lock.WorkdirLock) -> TrainState:
  """`train_and_evaluate` in a workdir that this run holds."""
  source = sources.open_source(config.data, config.data.split,
                               config.model.image_size)
  config = durations.resolve(config, len(source))
  logging.info("Schedule: %s; peak lr %.4g.",
               durations.describe(config, len(source)),
               optim.peak_learning_rate(config))
  task = tasks.make_task(config, AXIS)
  schedule = optim.make_schedule(config)
  init_rng, step_rng = _rngs(config)
  checkpointer = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  checkpointer.check_model_config(config)  # a workdir holds one run
  resuming = checkpointer.latest_step() is not None
  state = create_train_state(task, config, init_rng, schedule,
                             load_init_from=not resuming)
  if resuming and optim.split_frozen(config, state.params)[1]:
    # Frozen parameters are not in the checkpoint: init_from has them.
    state = create_train_state(task, config, init_rng, schedule)
  digest = frozen_digest(config, state.params)
  restored, start_step = checkpointer.restore(
      checkpoint_tree(state, config, digest), config.resume_step)
  _check_frozen_digest(restored.pop("frozen_digest", None), digest, config,
                       checkpointer.directory)
  restored["params"] = _with_trained(state.params, restored["params"])
  state = state.replace(**restored)
  if start_step:
    logging.info("Resuming from step %d", start_step)
  if start_step >= config.total_steps:
    logging.info("Nothing to do: step %d >= total_steps %d", start_step,
                 config.total_steps)
    checkpointer.close()
    return state

  batches = pipeline.TrainPipeline(
      source, config.data, batch_size=config.batch_size,
      image_size=config.model.image_size, seed=config.seed,
      start_step=start_step, local_device_count=len(devices),
      process_index=jax.process_index(), process_count=jax.process_count())
  evaluators = task.evaluators(devices, source)
  writer = writers.create_writer(workdir, resumed_at=start_step)
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=config.total_steps, every_steps=config.log_every_steps)

  p_train_step = pmap_train_step(task, config, schedule, devices)
  state = devices_lib.replicate(state, devices)
  step_rngs = devices_lib.replicate(step_rng, devices)
  device_batches = devices_lib.prefetch_to_devices(batches, devices)

  notice = preemption.PreemptionNotice()
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

      # Asked at every step by every process: a SIGTERM to any of them
      # stops all at the same step, which is saved.
      # Counted from this run's start: jax's sync point stops every process
      # at (the highest count reported) + 1, so a notice that came before the
      # first call (during restore or compilation) stops at the first step.
      preempted = notice.reached(step - start_step)
      is_last = step == config.total_steps
      # Step 1 is logged too, so that the initial loss is on record.
      log = (step % config.log_every_steps == 0 or is_last or step == 1
             or preempted)
      # An interval of 0 means: after the last step only.
      due = [e for e in evaluators if is_last or (
          e.every_steps > 0 and step % e.every_steps == 0)]
      save = step % config.checkpoint_every_steps == 0 or is_last or preempted
      if not (log or due or save):
        continue
      params = (devices_lib.unreplicate(state.params) if due or save
                else None)
      # Nothing is written from a state that has diverged.
      _raise_if_diverged(train_metrics, params, step, checkpointer, config)
      if log:
        # A failed save, or another run in this workdir, stops every process.
        multihost.raise_if_failed_anywhere(
            f"training in {workdir}", checkpointer.save_error()
            or lock.error())
        scalars = _summary(train_metrics, step - interval_first_step,
                           config.batch_size, time.time() - interval_start)
        # A collective: every process calls it at every log step.
        skipped = devices_lib.summed_over_processes(batches.skipped_images)
        if skipped:
          scalars["data/skipped_images"] = skipped
        writer.write_scalars(step, scalars)
        train_metrics = None
        interval_start, interval_first_step = time.time(), step
      # Saved before the evaluators run, so that an evaluation that fails
      # does not lose the step.
      if save:
        checkpointer.save(
            step, checkpoint_tree(devices_lib.unreplicate(state), config,
                                  digest), config)
      for evaluator in due:
        _write_report(writer, workdir, step, evaluator(state))
      if due:
        interval_start = time.time()  # evaluation time is not training time
      if preempted:
        logging.warning("Preempted (SIGTERM or Ctrl-C): saved step %d in %s; "
                        "run the same command again to resume.", step,
                        workdir)
        break
    checkpointer.finish()  # the last save, on every process
  except KeyboardInterrupt:  # a second Ctrl-C: stop at once
    raise
  except BaseException:
    checkpointer.finish_locally()
    raise
  finally:
    notice.close()
    batches.close()
    writer.flush()
  checkpointer.close()
  return devices_lib.unreplicate(state)
