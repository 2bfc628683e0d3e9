"""Deterministic, per-process, prefetched training batches, and evaluation
batches that cover a split exactly once.

Batch `s` is a pure function of (seed, s): the global stream of examples is
epoch after epoch of seeded permutations, step `s` takes stream positions
[s*B, (s+1)*B), and each example's augmentation is seeded by (seed, s, its
position in the batch). So a resumed run sees exactly what an uninterrupted
one would, and every process computes only its own slice of the batch.

Decoding runs in worker processes (grain's `mp_prefetch`): at the TPU target
a host must decode ~2,750 ViT-L images/s, beyond what threads sharing one
interpreter lock can do (`benchmarks/input_pipeline.py` measures both).
Workers compute chunks of at most `MAX_CHUNK` consecutive examples of a step,
which the main process joins into the step's batch; as every example is a
pure function of its position, the batches do not depend on the number of
workers, threads or chunks.
"""

import dataclasses
import os
import threading
from typing import Callable, Iterator

from absl import flags
from absl import logging
import grain
import ml_collections
import numpy as np

from mae_jax.data import randaugment
from mae_jax.data import sources
from mae_jax.data import transforms

Batch = dict[str, np.ndarray]
# (step, first local position, count) -> (the count examples' arrays, how
# many unreadable images were skipped for them).
ChunkFn = Callable[[int, int, int], tuple[Batch, int]]

# Examples a worker computes at a time: small enough that a few in flight per
# worker stay in memory, large enough that handing them over costs little.
MAX_CHUNK = 32
_ENDLESS = 2 ** 40  # steps: training ends when the loop stops asking
CORRUPT_IMAGE_POLICIES = ("fail", "skip")


class ShuffledStream:
  """Stream position -> example index: a fresh permutation every epoch."""

  def __init__(self, num_examples: int, seed: int):
    if num_examples <= 0:
      raise ValueError("the data source is empty")
    self.num_examples = num_examples
    self._seed = seed
    self._cache: dict[int, np.ndarray] = {}  # a batch spans <= 2 epochs

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._cache:
      if len(self._cache) >= 2:
        del self._cache[min(self._cache)]
      self._cache[epoch] = np.random.default_rng(
          (self._seed, epoch)).permutation(self.num_examples)
    return self._cache[epoch]

  def __call__(self, positions: np.ndarray) -> np.ndarray:
    epochs, offsets = np.divmod(positions, self.num_examples)
    return np.asarray([self._permutation(int(e))[o]
                       for e, o in zip(epochs, offsets)])


def local_batch_layout(batch_size: int, process_index: int, process_count: int,
                       local_device_count: int) -> tuple[int, int]:
  """(first global position of this process, examples per local device).

  Raises the error a user needs before anything is compiled or loaded.
  """
  devices = process_count * local_device_count
  if batch_size % devices:
    raise ValueError(
        f"batch_size={batch_size} is not divisible by the {devices} devices "
        f"({process_count} process(es) x {local_device_count}); use a multiple "
        f"of {devices}, e.g. --config.batch_size={devices * max(1, batch_size // devices)}")
  local = batch_size // process_count
  return process_index * local, local // local_device_count


def worker_processes(data_config: ml_collections.ConfigDict,
                     source: sources.Source) -> int:
  """`data.num_workers`, with -1 resolved: one process per CPU core but the
  main one's for sources that decode files, none for in-memory sources."""
  if data_config.num_workers >= 0:
    return data_config.num_workers
  if source.in_memory:
    return 0
  return max(1, (os.cpu_count() or 2) - 1)


def threads_per_process(data_config: ml_collections.ConfigDict,
                        workers: int) -> int:
  """`data.num_threads`, with 0 resolved: without workers, one per CPU core;
  with workers, two each, so that one computes while the other reads."""
  if data_config.num_threads > 0:
    return data_config.num_threads
  return 2 if workers else (os.cpu_count() or 1)


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_skipped(error: sources.CorruptImageError):
  """Logs each unreadable image once per process."""
  with _warned_lock:
    if error.where in _warned:
      return
    _warned.add(error.where)
  logging.warning("Skipping unreadable image %s", error.where)


def _corrupt_image_policy(data_config: ml_collections.ConfigDict) -> bool:
  """True to skip unreadable images, False to fail on them."""
  if data_config.corrupt_images not in CORRUPT_IMAGE_POLICIES:
    raise ValueError(f"data.corrupt_images={data_config.corrupt_images!r}; "
                     "use 'fail' or 'skip'")
  return data_config.corrupt_images == "skip"


def _fail_on(error: sources.CorruptImageError) -> ValueError:
  return ValueError(
      f"{error}. Remove or replace the file, or set "
      "--config.data.corrupt_images=skip to go on without it.")


class _TrainChunks:
  """Examples of this process's slice of the training batch of a step.

  Runs in worker processes: holds only the source and plain settings.
  """

  def __init__(self, source: sources.Source,
               data_config: ml_collections.ConfigDict, *, batch_size: int,
               image_size: int, seed: int, first: int):
    self._source = source
    self._skip = _corrupt_image_policy(data_config)
    self._sampler = transforms.crop_sampler(data_config.crop_sampler)
    if data_config.second_view_size and data_config.rand_augment_num_ops:
      raise ValueError(
          "data.second_view_size and data.rand_augment_num_ops are both set; "
          "the second view must show the first one's pixels: set one to 0")
    self._config = ml_collections.FrozenConfigDict(data_config)
    self._batch_size = batch_size
    self._image_size = image_size
    self._seed = seed
    self._first = first
    self._stream = ShuffledStream(len(source), seed)

  def _load(self, index: int) -> tuple[sources.Example, int]:
    """source[index] and 0; with corrupt_images='skip', the next readable
    example in the source's own order (deterministic, so resuming is
    unaffected) and how many unreadable ones it passed."""
    for passed in range(len(self._source)):
      try:
        return self._source[(index + passed) % len(self._source)], passed
      except sources.CorruptImageError as e:
        if not self._skip:
          raise _fail_on(e) from e
        _warn_skipped(e)
    raise ValueError("no readable image in the data source")

  def _augment(self, image: np.ndarray, rng: np.random.Generator
               ) -> dict[str, np.ndarray]:
    config, size = self._config, self._image_size
    scale, ratio = tuple(config.crop_scale), tuple(config.crop_ratio)
    if config.second_view_size:
      view, second = transforms.two_view_crop(
          image, rng, size, config.second_view_size, scale, ratio,
          flip=config.horizontal_flip, sampler=self._sampler)
      return {"image": view, "second_view": second}
    box = self._sampler(*image.shape[:2], rng, scale, ratio)
    image = transforms.resized_crop(image, box, size)
    if config.horizontal_flip:
      image = transforms.random_horizontal_flip(image, rng)
    if config.rand_augment_num_ops:
      image = randaugment.rand_augment(
          image, rng, num_ops=config.rand_augment_num_ops,
          magnitude=config.rand_augment_magnitude)
    return {"image": image}

  def __call__(self, step: int, start: int, count: int) -> tuple[Batch, int]:
    example_ids = self._first + start + np.arange(count)
    indices = self._stream(step * self._batch_size + example_ids)
    views, labels, skipped = [], [], 0
    for example_id, index in zip(example_ids.tolist(), indices.tolist()):
      example, passed = self._load(index)
      skipped += passed
      views.append(self._augment(
          example.image, np.random.default_rng((self._seed, step, example_id))))
      labels.append(example.label)
    chunk = {key: np.stack([v[key] for v in views]) for key in views[0]}
    chunk["label"] = np.asarray(labels, np.int32)
    chunk["example_id"] = example_ids.astype(np.int32)
    return chunk, skipped


class _EvalChunks:
  """Centre crops of this process's slice of evaluation batch `step`;
  positions past the split are padding: blank, 'mask' 0."""

  def __init__(self, source: sources.Source,
               data_config: ml_collections.ConfigDict, *, batch_size: int,
               image_size: int, first: int):
    self._source = source
    self._skip = _corrupt_image_policy(data_config)
    self._batch_size = batch_size
    self._image_size = image_size
    self._first = first

  def _example(self, position: int) -> tuple[np.ndarray, int, float, int]:
    """(image, label, mask, skipped) of one position."""
    blank = np.zeros((self._image_size, self._image_size, 3), np.uint8)
    if position >= len(self._source):
      return blank, 0, 0.0, 0
    try:
      example = self._source[position]
    except sources.CorruptImageError as e:
      if not self._skip:
        raise _fail_on(e) from e
      _warn_skipped(e)
      # Excluded from the counts, not replaced: an evaluation image stands
      # for itself, and a neighbour in its place would be counted twice.
      return blank, 0, 0.0, 1
    return (transforms.center_crop(example.image, self._image_size),
            example.label, 1.0, 0)

  def __call__(self, step: int, start: int, count: int) -> tuple[Batch, int]:
    first = step * self._batch_size + self._first + start
    images, labels, mask, skipped = zip(
        *(self._example(p) for p in range(first, first + count)))
    return {"image": np.stack(images),
            "label": np.asarray(labels, np.int32),
            "mask": np.asarray(mask, np.float32)}, sum(skipped)


def _chunk_size(local: int) -> int:
  """The largest divisor of the local batch that is at most MAX_CHUNK."""
  return max(d for d in range(1, min(local, MAX_CHUNK) + 1) if local % d == 0)


@dataclasses.dataclass(frozen=True)
class _StepChunk:
  """Chunk index -> (step, start, count): the element grain maps over."""
  fn: ChunkFn
  chunks_per_step: int
  chunk: int

  def __call__(self, index: int) -> tuple[Batch, int]:
    step, part = divmod(index, self.chunks_per_step)
    return self.fn(step, part * self.chunk, self.chunk)


def _join(chunks) -> tuple[Batch, int]:
  batch = {key: np.concatenate([c[0][key] for c in chunks])
           for key in chunks[0][0]}
  return batch, sum(c[1] for c in chunks)


def _prefetched_steps(fn: ChunkFn, *, start: int, stop: int, local: int,
                      workers: int, threads: int, prefetch: int
                      ) -> grain.DatasetIterator:
  """An iterator of (this process's batch of step, skipped images) for steps
  start..stop-1, computed ahead on `threads` threads of `workers` processes
  (of this one if 0). About `prefetch` steps are held ready, spread over the
  workers (at least a chunk each): memory stays bounded with many workers."""
  chunk = _chunk_size(local)
  per_step = local // chunk
  dataset = grain.MapDataset.range(start * per_step, stop * per_step).map(
      _StepChunk(fn, per_step, chunk))
  ahead = max(1, prefetch) * per_step  # chunks
  dataset = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=threads,
      prefetch_buffer_size=threads if workers else max(threads, ahead)))
  if workers:
    if not flags.FLAGS.is_parsed():
      # grain reads its absl flags when it starts workers; outside an absl
      # app (tests, scripts) their defaults apply.
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=-(-ahead // workers)))
  return iter(dataset.batch(per_step, batch_fn=_join))


class TrainPipeline:
  """Iterator of augmented uint8 batches for steps start_step, start_step+1...

  Each batch holds 'image' (D, b, H, W, 3) uint8, 'label' (D, b) int32 and
  'example_id' (D, b) int32, the example's global position in the step's
  batch, from which the train step derives its per-example randomness; with
  `data.second_view_size` s > 0 also 'second_view' (D, b, s, s, 3) uint8, the
  same crop for the DALL-E tokenizer (CAE).

  `skipped_images` counts the unreadable images this process skipped (each
  time one is drawn); the run's total is the sum over processes.
  """

  def __init__(self, source: sources.Source,
               data_config: ml_collections.ConfigDict, *, batch_size: int,
               image_size: int, seed: int, start_step: int,
               local_device_count: int, process_index: int = 0,
               process_count: int = 1):
    first, per_device = local_batch_layout(
        batch_size, process_index, process_count, local_device_count)
    self._shape = (local_device_count, per_device)
    self._chunks = _TrainChunks(source, data_config, batch_size=batch_size,
                                image_size=image_size, seed=seed, first=first)
    workers = worker_processes(data_config, source)
    self._iterator = _prefetched_steps(
        self._chunks, start=start_step, stop=_ENDLESS,
        local=local_device_count * per_device, workers=workers,
        threads=threads_per_process(data_config, workers),
        prefetch=data_config.prefetch_batches)
    self._error: Exception | None = None
    self.skipped_images = 0

  def _reshape(self, batch: Batch) -> Batch:
    return {k: v.reshape(self._shape + v.shape[1:]) for k, v in batch.items()}

  def batch(self, step: int) -> Batch:
    """The local part of the global batch of `step`, computed here."""
    return self._reshape(self._chunks(step, 0, int(np.prod(self._shape)))[0])

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    if self._error is not None:
      raise self._error
    try:
      batch, skipped = next(self._iterator)
    except Exception as e:  # the first error, again on every later call
      self._error = e
      self.close()
      raise
    self.skipped_images += skipped
    return self._reshape(batch)

  def close(self):
    """Stops the worker processes and threads; safe to call twice."""
    self._iterator.close()


class EvalBatches:
  """Every example of a split exactly once, centre-cropped, in global batches
  of `batch_size`; this process's part of each. Iterable more than once.

  The last batch is padded (with blank images) to the full size, so that the
  compiled step keeps one shape and every process runs the same number of
  batches; 'mask' (D, b) is 1 for real examples, 0 for padding. With
  `data.corrupt_images='skip'` an unreadable image is masked out too, and
  counted in `skipped_images` (this process's, for the last pass): the
  examples counted plus the images skipped, summed over processes, make the
  split.
  """

  def __init__(self, source: sources.Source,
               data_config: ml_collections.ConfigDict, *, batch_size: int,
               image_size: int, local_device_count: int,
               process_index: int = 0, process_count: int = 1):
    first, per_device = local_batch_layout(batch_size, process_index,
                                           process_count, local_device_count)
    self._shape = (local_device_count, per_device)
    self._chunks = _EvalChunks(source, data_config, batch_size=batch_size,
                               image_size=image_size, first=first)
    self._num_batches = -(-len(source) // batch_size)
    self._workers = worker_processes(data_config, source)
    self._threads = threads_per_process(data_config, self._workers)
    self._prefetch = data_config.prefetch_batches
    self.skipped_images = 0

  def __len__(self) -> int:
    return self._num_batches

  def __iter__(self) -> Iterator[Batch]:
    self.skipped_images = 0
    iterator = _prefetched_steps(
        self._chunks, start=0, stop=self._num_batches,
        local=int(np.prod(self._shape)), workers=self._workers,
        threads=self._threads, prefetch=self._prefetch)
    try:
      for batch, skipped in iterator:
        self.skipped_images += skipped
        yield {k: v.reshape(self._shape + v.shape[1:])
               for k, v in batch.items()}
    finally:
      iterator.close()


def eval_images(source: sources.Source, count: int, image_size: int,
                corrupt_images: str = "fail") -> np.ndarray:
  """The first `count` readable images, centre-cropped: a fixed batch for
  figures (with corrupt_images='skip', unreadable ones are passed over)."""
  if corrupt_images not in CORRUPT_IMAGE_POLICIES:
    raise ValueError(f"corrupt_images={corrupt_images!r}; use 'fail' or 'skip'")
  skip = corrupt_images == "skip"
  images = []
  for index in range(len(source)):
    if len(images) == count:
      break
    try:
      example = source[index]
    except sources.CorruptImageError as e:
      if not skip:
        raise _fail_on(e) from e
      _warn_skipped(e)
      continue
    images.append(transforms.center_crop(example.image, image_size))
  if not images:
    raise ValueError("no readable image in the data source")
  return np.stack(images)
