"""What the train loop runs every so often besides training: evaluations and
figures, each a small object that the task chooses (tasks.py).

An evaluator has `every_steps` and is called with the replicated train state;
it returns a `Report` of scalars (for metrics.jsonl and TensorBoard) and
figures (TensorBoard and PNG files), which the loop writes. The loop runs
every evaluator at its interval and after the last step, and knows nothing
else about them (big_vision's evaluators are the model for this).
"""

import collections
import dataclasses
import functools
from typing import Any, Protocol, Sequence

import jax
import ml_collections
import numpy as np

from mae_jax import devices as devices_lib
from mae_jax import visualize
from mae_jax.data import pipeline
from mae_jax.data import sources
from mae_jax.data import transforms

AXIS = devices_lib.AXIS


@dataclasses.dataclass
class Report:
  scalars: dict[str, float] = dataclasses.field(default_factory=dict)
  # name -> uint8 (H, W, 3) figure, written as <name>_<step>.png too.
  images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


class Evaluator(Protocol):
  every_steps: int

  def __call__(self, state) -> Report:
    """`state`: the train state, replicated over the run's local devices."""
    ...


def pmap_devices(devices: Sequence[Any]) -> Sequence[Any] | None:
  """pmap's `devices` argument: None for all local devices."""
  return devices if len(devices) != jax.local_device_count() else None


class ReconstructionFigures:
  """An MAE's reconstructions of a fixed set of images with a fixed masking,
  so that figures of successive steps can be compared."""

  def __init__(self, model, source: sources.Source, count: int, seed: int,
               every_steps: int, corrupt_images: str = "fail"):
    images = pipeline.eval_images(source, count, model.image_size,
                                  corrupt_images)
    self._images = transforms.normalize(images)
    self._noise = jax.random.uniform(jax.random.key(seed),
                                     (len(images), model.num_patches))
    self._model = model
    self._apply = jax.jit(model.apply)
    self.every_steps = every_steps

  def __call__(self, state) -> Report:
    params = devices_lib.unreplicate(state.params)
    out = self._apply({"params": params}, self._images, self._noise)
    figure = visualize.reconstruction_figure(
        self._images, np.asarray(out.pred), np.asarray(out.mask),
        self._model.patch_size, self._model.norm_pix_loss)
    return Report(images={"reconstruction": visualize.annotate(
        visualize.upscale(figure, self._model.image_size))})


def eval_step(state, batch: dict, *, task) -> dict:
  """Correct top-1/top-5 and example counts over all devices (under pmap)."""
  counts = task.eval_counts(state.params, state.model_state, batch)
  return jax.lax.psum(counts, AXIS)


class TopKAccuracy:
  """Top-1/top-5 (in %) of a classifier over the whole evaluation split:
  every example exactly once, the last batch padded and the padding masked
  out."""

  def __init__(self, task, config: ml_collections.ConfigDict,
               devices: Sequence[Any]):
    self._source = sources.open_source(config.data, config.data.eval_split,
                                       config.model.image_size)
    self._config = config
    self._devices = devices
    self._eval_step = jax.pmap(functools.partial(eval_step, task=task),
                               axis_name=AXIS, devices=pmap_devices(devices))
    self.every_steps = config.eval_every_steps

  def __call__(self, state) -> Report:
    totals = collections.Counter()
    # Evaluated in the micro-batches of training: what fits in memory there.
    batches = pipeline.EvalBatches(
        self._source, self._config.data,
        batch_size=self._config.batch_size // self._config.grad_accum_steps,
        image_size=self._config.model.image_size,
        local_device_count=len(self._devices),
        process_index=jax.process_index(), process_count=jax.process_count())
    for batch in batches:
      counts = self._eval_step(state, devices_lib.shard(batch, self._devices))
      totals.update(jax.device_get(devices_lib.unreplicate(counts)))
    # Unreadable images (with corrupt_images='skip') are left out, counted.
    skipped = devices_lib.summed_over_processes(batches.skipped_images)
    if totals["count"] + skipped != len(self._source):
      raise RuntimeError(f"evaluated {totals['count']} examples and skipped "
                         f"{skipped} of {len(self._source)}")
    # In Python floats: the counts come back as float32, whose quotient is
    # off in the 7th digit.
    count = float(totals["count"])
    scalars = {"eval/top1": 100 * float(totals["top1"]) / count,
               "eval/top5": 100 * float(totals["top5"]) / count}
    if skipped:
      scalars["eval/skipped_images"] = skipped
    return Report(scalars=scalars)
