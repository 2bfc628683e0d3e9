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
import jax.numpy as jnp
import ml_collections
import numpy as np

from mae_jax import devices as devices_lib
from mae_jax import losses
from mae_jax import masking
from mae_jax import patches
from mae_jax import visualize
from mae_jax.data import pipeline
from mae_jax.data import sources
from mae_jax.data import transforms

AXIS = devices_lib.AXIS
ALL_PATCHES_COLUMNS = ("all patches: encoder -> decoder, no regressor",
                       "original")


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


def figure_noise(model, masking_kind: str, count: int, seed: int
                 ) -> jnp.ndarray:
  """(count, L) masking noise of the run's kind of masking for `count`
  figure images, the same at every evaluation."""
  grid = patches.grid_size(model.image_size, model.patch_size)
  keys = jax.random.split(jax.random.key(seed), count)
  return masking.make_noise(masking_kind, keys, (grid, grid),
                            masking.num_kept(grid * grid, model.mask_ratio))


class ReconstructionFigures:
  """An MAE's reconstructions of a fixed set of images with a fixed masking,
  so that figures of successive steps can be compared."""

  def __init__(self, model, masking_kind: str, source: sources.Source,
               count: int, seed: int, every_steps: int,
               corrupt_images: str = "fail"):
    images = pipeline.eval_images(source, count, model.image_size,
                                  corrupt_images)
    self._images = transforms.normalize(images)
    self._noise = figure_noise(model, masking_kind, len(images), seed)
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


class CAEReconstructionFigures:
  """A CAE's figures of a fixed set of images with a fixed masking (target
  'pixels'):
  - 'reconstruction': masked input | the decoder's prediction of the masked
    patches | with the visible patches | original;
  - 'all_patches': every patch through the encoder and straight to the
    decoder, skipping the regressor | original (the CAE paper's Fig. 4:
    with the alignment, the regressor's outputs lie in the encoder's space,
    so the decoder reads the encoder's latents too), and its error as the
    scalar 'eval/all_patches_mse' (per-patch MSE in the loss's target
    space, over all patches of these images).
  """

  def __init__(self, model, masking_kind: str, source: sources.Source,
               count: int, seed: int, every_steps: int,
               corrupt_images: str = "fail"):
    images = pipeline.eval_images(source, count, model.image_size,
                                  corrupt_images)
    self._images = transforms.normalize(images)
    self._noise = figure_noise(model, masking_kind, len(images), seed)
    self._model = model
    self._apply = jax.jit(model.apply)
    self._all_patches = jax.jit(functools.partial(
        model.apply, method=model.decode_all_patches))
    self.every_steps = every_steps

  def __call__(self, state) -> Report:
    params = {"params": devices_lib.unreplicate(state.params)}
    model, images = self._model, self._images
    out = self._apply(params, images, self._noise)
    pred = np.zeros((len(images), model.num_patches, out.pred.shape[-1]),
                    np.float32)
    np.put_along_axis(pred, np.asarray(out.ids_masked)[..., None],
                      np.asarray(out.pred), axis=1)
    figure = visualize.reconstruction_figure(
        images, pred, np.asarray(out.mask), model.patch_size,
        model.norm_pix_loss, visible_predicted=False)
    all_pred = np.asarray(self._all_patches(params, images))
    target = np.asarray(patches.patchify(images, model.patch_size))
    if model.norm_pix_loss:
      target = np.asarray(losses.normalize_patches(target))
    pixels = visualize.prediction_to_pixels(all_pred, images,
                                            model.patch_size,
                                            model.norm_pix_loss)
    grid_hw = (model.grid, model.grid)
    all_figure = visualize.panels_figure(
        [np.asarray(patches.unpatchify(pixels, model.patch_size, grid_hw)),
         images])
    return Report(
        scalars={"eval/all_patches_mse": float(np.mean(
            (all_pred - target) ** 2))},
        images={
            "reconstruction": visualize.annotate(
                visualize.upscale(figure, model.image_size)),
            "all_patches": visualize.annotate(
                visualize.upscale(all_figure, model.image_size),
                ALL_PATCHES_COLUMNS)})


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
    scalars = {"eval/top1": float(100 * totals["top1"] / totals["count"]),
               "eval/top5": float(100 * totals["top5"] / totals["count"])}
    if skipped:
      scalars["eval/skipped_images"] = skipped
    return Report(scalars=scalars)
