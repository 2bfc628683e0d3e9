"""What the train loop runs every so often besides training: evaluations and
figures, each a small object that the task chooses (tasks.py): top-1/top-5
of a classifier, weighted k-NN accuracy of an encoder's frozen features,
reconstruction figures.

An evaluator has `every_steps` and is called with the replicated train state;
it returns a `Report` of scalars (for metrics.jsonl and TensorBoard) and
figures (TensorBoard and PNG files), which the loop writes. The loop runs
every evaluator at its interval and after the last step, and knows nothing
else about them (big_vision's evaluators are the model for this).
"""

import collections
import dataclasses
import functools
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mae_jax import devices as devices_lib
from mae_jax import knn
from mae_jax import losses
from mae_jax import masking
from mae_jax import models
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


def in_top_k(logits: jnp.ndarray, labels: jnp.ndarray, k: int) -> jnp.ndarray:
  """(B,) whether the true class is among the k highest logits.

  The true class's rank is how many other classes score at least as high:
  ties count against the model, and a NaN logit is never correct.
  """
  true_logit = jnp.take_along_axis(logits, labels[:, None], axis=1)
  rank = jnp.sum(~(logits < true_logit), axis=1) - 1
  return rank < k


class CAEReconstructionFigures(ReconstructionFigures):
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
    super().__init__(model, masking_kind, source, count, seed, every_steps,
                     corrupt_images)
    self._all_patches = jax.jit(functools.partial(
        model.apply, method=model.decode_all_patches))

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
    # The train state unmapped, as the train step takes it; the counts are
    # summed over the devices.
    self._eval_step = jax.pmap(functools.partial(eval_step, task=task),
                               axis_name=AXIS, in_axes=(None, 0),
                               out_axes=None, devices=pmap_devices(devices))
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


# An encoder as the k-NN sees it: (params, normalised images (B, H, W, 3)) ->
# tokens after the final norm (B, 1 + L, D), every patch, nothing masked.
Encode = Callable[[Any, jnp.ndarray], jnp.ndarray]


def embed_step(params, bank: jnp.ndarray, images: jnp.ndarray,
               offset: jnp.ndarray, *, encode: Encode,
               pooling: str) -> jnp.ndarray:
  """Writes the features of this device's images into its bank shard,
  rows [offset, offset + b) (under pmap; the bank is donated)."""
  tokens = encode(params, transforms.normalize(images, xp=jnp))
  rows = knn.features(tokens, pooling).astype(bank.dtype)
  return jax.lax.dynamic_update_slice(bank, rows, (offset, 0))


def knn_step(params, bank: jnp.ndarray, bank_labels: jnp.ndarray,
             bank_index: jnp.ndarray, batch: dict, *, encode: Encode,
             settings: ml_collections.ConfigDict, num_classes: int) -> dict:
  """Correct k-NN top-1/top-5 and example counts over all devices (under
  pmap), padding excluded."""
  tokens = encode(params, transforms.normalize(batch["image"], xp=jnp))
  queries = knn.features(tokens, settings.pooling).astype(bank.dtype)
  similarity, labels = knn.neighbours(queries, bank, bank_labels, bank_index,
                                      settings.k, AXIS)
  votes = knn.class_votes(similarity, labels, num_classes,
                          settings.temperature)
  valid = batch["mask"]
  counts = {"top1": jnp.sum(in_top_k(votes, batch["label"], 1) * valid),
            "top5": jnp.sum(in_top_k(votes, batch["label"], 5) * valid),
            "count": jnp.sum(valid)}
  return jax.lax.psum(counts, AXIS)


class KNNAccuracy:
  """Weighted k-NN top-1/top-5 (in %) of an encoder's frozen features
  (knn.py): the training split (`data.split`) is the bank, the evaluation
  split the queries, both centre-cropped, every image counted exactly once.

  The bank is built anew at every call, from the current parameters, in
  global batches of `knn.batch_size`; each device keeps the features of the
  images it embedded, in the model's compute dtype. Nothing of the train
  state is changed, so training goes on exactly as without it.
  """

  def __init__(self, encode: Encode, config: ml_collections.ConfigDict,
               devices: Sequence[Any], every_steps: int,
               bank_source: sources.Source | None = None):
    data, size = config.data, config.model.image_size
    self._bank_source = bank_source or sources.open_source(data, data.split,
                                                           size)
    self._query_source = sources.open_source(data, data.eval_split, size)
    for split, source in ((data.split, self._bank_source),
                          (data.eval_split, self._query_source)):
      if source.num_classes < 2:
        raise ValueError(
            f"k-NN needs labelled images, and split {split!r} of "
            f"data.source={data.source!r} has {source.num_classes} classes; "
            "use a labelled data set, or turn k-NN off "
            "(--config.knn_every_steps=0 --config.knn_every_epochs=0)")
    self._settings = settings = config.knn
    if settings.k > len(self._bank_source):
      raise ValueError(f"knn.k={settings.k} is more than the "
                       f"{len(self._bank_source)} bank images; lower knn.k")
    self._first, self._per_device = pipeline.local_batch_layout(
        settings.batch_size, jax.process_index(), jax.process_count(),
        len(devices))
    self._devices = devices
    self._bank_batches, self._query_batches = (pipeline.EvalBatches(
        source, data, batch_size=settings.batch_size, image_size=size,
        local_device_count=len(devices), process_index=jax.process_index(),
        process_count=jax.process_count())
        for source in (self._bank_source, self._query_source))
    self.every_steps = every_steps
    pmap = functools.partial(jax.pmap, axis_name=AXIS,
                             devices=pmap_devices(devices))
    rows = -(-len(self._bank_source) // settings.batch_size) * self._per_device
    shard_shape = (rows, config.model.width)
    dtype = models.compute_dtype(config.model.dtype)
    self._empty_bank = pmap(lambda _: jnp.zeros(shard_shape, dtype))
    # The parameters unmapped, as the train step takes them; the bank
    # sharded; the counts summed over the devices.
    self._embed_step = pmap(functools.partial(
        embed_step, encode=encode, pooling=settings.pooling),
                            in_axes=(None, 0, 0, 0), donate_argnums=(1,))
    self._knn_step = pmap(functools.partial(
        knn_step, encode=encode, settings=settings,
        num_classes=self._bank_source.num_classes),
                          in_axes=(None, 0, 0, 0, 0), out_axes=None)

  def _bank(self, params):
    """(features, labels, data-set indices) of the bank, sharded: (devices,
    rows, D) and (devices, rows); padding rows, and unreadable images left
    out, have PADDING_INDEX."""
    batch_size = self._settings.batch_size
    devices = len(self._devices)
    bank = self._empty_bank(np.zeros(devices))
    # The global position of each local example in a batch: see
    # pipeline.EvalBatches.
    positions = self._first + np.arange(devices * self._per_device).reshape(
        devices, self._per_device)
    labels, indices = [], []
    for i, batch in enumerate(self._bank_batches):
      offset = np.full(devices, i * self._per_device, np.int32)
      bank = self._embed_step(params, bank,
                              devices_lib.shard(batch["image"], self._devices),
                              devices_lib.shard(offset, self._devices))
      labels.append(batch["label"])
      indices.append(np.where(batch["mask"] > 0, i * batch_size + positions,
                              knn.PADDING_INDEX).astype(np.int32))
    return bank, *(devices_lib.shard(np.concatenate(x, axis=1), self._devices)
                   for x in (labels, indices))

  def __call__(self, state) -> Report:
    bank, bank_labels, bank_index = self._bank(state.params)
    totals = collections.Counter()
    for batch in self._query_batches:
      counts = self._knn_step(state.params, bank, bank_labels, bank_index,
                              devices_lib.shard(batch, self._devices))
      totals.update(jax.device_get(devices_lib.unreplicate(counts)))
    # Unreadable images (with corrupt_images='skip') are left out, counted.
    skipped_queries = devices_lib.summed_over_processes(
        self._query_batches.skipped_images)
    if totals["count"] + skipped_queries != len(self._query_source):
      raise RuntimeError(f"evaluated {totals['count']} examples and skipped "
                         f"{skipped_queries} of {len(self._query_source)}")
    scalars = {"eval/knn_top1": float(100 * totals["top1"] / totals["count"]),
               "eval/knn_top5": float(100 * totals["top5"] / totals["count"])}
    skipped = skipped_queries + devices_lib.summed_over_processes(
        self._bank_batches.skipped_images)
    if skipped:
      scalars["eval/knn_skipped_images"] = skipped
    return Report(scalars=scalars)
