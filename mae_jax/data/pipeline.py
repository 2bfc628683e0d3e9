"""Deterministic, per-process, prefetched training batches, and evaluation
batches that cover a split exactly once.

Batch `s` is a pure function of (seed, s): the global stream of examples is
epoch after epoch of seeded permutations, step `s` takes stream positions
[s*B, (s+1)*B), and each example's augmentation is seeded by (seed, s, its
position in the batch). So a resumed run sees exactly what an uninterrupted
one would, and every process computes only its own slice of the batch.
"""

import concurrent.futures
from absl import logging
import os
import queue
import threading
from typing import Iterator

import ml_collections
import numpy as np

from mae_jax.data import randaugment
from mae_jax.data import sources
from mae_jax.data import transforms

Batch = dict[str, np.ndarray]


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


class TrainPipeline:
  """Iterator of augmented uint8 batches for steps start_step, start_step+1...

  Each batch holds 'image' (D, b, H, W, 3) uint8, 'label' (D, b) int32 and
  'example_id' (D, b) int32, the example's global position in the step's
  batch, from which the train step derives its per-example randomness.
  """

  def __init__(self, source: sources.Source,
               data_config: ml_collections.ConfigDict, *, batch_size: int,
               image_size: int, seed: int, start_step: int,
               local_device_count: int, process_index: int = 0,
               process_count: int = 1):
    self._source = source
    self._config = data_config
    self._batch_size = batch_size
    self._image_size = image_size
    self._seed = seed
    self._stream = ShuffledStream(len(source), seed)
    self._first, self._per_device = local_batch_layout(
        batch_size, process_index, process_count, local_device_count)
    self._devices = local_device_count
    self._skipped: set[str] = set()
    self._skipped_lock = threading.Lock()
    self._error: Exception | None = None
    workers = data_config.num_workers or os.cpu_count() or 1
    self._pool = concurrent.futures.ThreadPoolExecutor(workers)
    self._queue = queue.Queue(maxsize=max(1, data_config.prefetch_batches))
    self._stop = threading.Event()
    self._producer = threading.Thread(target=self._produce, args=(start_step,),
                                      daemon=True)
    self._producer.start()

  def _example(self, step: int, example_id: int, index: int):
    """The augmented image and label of one example of `step`."""
    example = self._load(index)
    rng = np.random.default_rng((self._seed, step, example_id))
    image = transforms.random_resized_crop(
        example.image, rng, self._image_size, tuple(self._config.crop_scale),
        tuple(self._config.crop_ratio))
    if self._config.horizontal_flip:
      image = transforms.random_horizontal_flip(image, rng)
    if self._config.rand_augment_num_ops:
      image = randaugment.rand_augment(
          image, rng, num_ops=self._config.rand_augment_num_ops,
          magnitude=self._config.rand_augment_magnitude)
    return image, example.label

  @property
  def skipped_images(self) -> int:
    """How many distinct unreadable images were replaced so far."""
    return len(self._skipped)

  def _load(self, index: int) -> sources.Example:
    """source[index]; with corrupt_images='skip', the next readable example
    in the source's own order (deterministic, so resuming is unaffected)."""
    for attempt in range(len(self._source)):
      try:
        return self._source[(index + attempt) % len(self._source)]
      except sources.CorruptImageError as e:
        if self._config.corrupt_images != "skip":
          raise ValueError(
              f"{e}. Remove or replace the file, or set "
              "--config.data.corrupt_images=skip to train on without it.") from e
        with self._skipped_lock:
          if e.where not in self._skipped:
            self._skipped.add(e.where)
            logging.warning("Skipping unreadable image %s (%d so far)",
                            e.where, len(self._skipped))
    raise ValueError("no readable image in the data source")

  def batch(self, step: int) -> Batch:
    """The local part of the global batch of `step`."""
    local = self._devices * self._per_device
    example_ids = self._first + np.arange(local)
    indices = self._stream(step * self._batch_size + example_ids)
    results = list(self._pool.map(self._example, [step] * local,
                                  example_ids.tolist(), indices.tolist()))
    shape = (self._devices, self._per_device)
    return {
        "image": np.stack([r[0] for r in results]).reshape(
            shape + results[0][0].shape),
        "label": np.asarray([r[1] for r in results], np.int32).reshape(shape),
        "example_id": example_ids.astype(np.int32).reshape(shape),
    }

  def _produce(self, step: int):
    while not self._stop.is_set():
      try:
        item = self.batch(step)
      except Exception as e:  # re-raised in the consumer's thread
        item = e
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if isinstance(item, Exception):
        return
      step += 1

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    if self._error is None:
      item = self._queue.get()
      if not isinstance(item, Exception):
        return item
      self._error = item
      self.close()
    raise self._error

  def close(self):
    self._stop.set()
    self._producer.join(timeout=5)
    self._pool.shutdown(wait=False, cancel_futures=True)


def eval_images(source: sources.Source, count: int,
                image_size: int) -> np.ndarray:
  """The first `count` images, centre-cropped: a fixed batch for figures."""
  count = min(count, len(source))
  return np.stack([transforms.center_crop(source[i].image, image_size)
                   for i in range(count)])


def eval_batches(source: sources.Source, *, batch_size: int, image_size: int,
                 local_device_count: int, process_index: int = 0,
                 process_count: int = 1, num_workers: int = 0
                 ) -> Iterator[Batch]:
  """Every example of `source` exactly once, centre-cropped, in global
  batches of `batch_size`; this process's part of each.

  The last batch is padded (with example 0) to the full size, so that the
  compiled step keeps one shape and every process runs the same number of
  batches; 'mask' (D, b) is 1 for real examples, 0 for padding.
  """
  first, per_device = local_batch_layout(batch_size, process_index,
                                         process_count, local_device_count)
  local = local_device_count * per_device
  shape = (local_device_count, per_device)

  def load(index: int) -> tuple[np.ndarray, int]:
    example = source[index]
    return transforms.center_crop(example.image, image_size), example.label

  workers = num_workers or os.cpu_count() or 1
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for start in range(0, len(source), batch_size):
      positions = start + first + np.arange(local)
      valid = positions < len(source)
      results = list(pool.map(load, np.where(valid, positions, 0).tolist()))
      yield {
          "image": np.stack([r[0] for r in results]).reshape(
              shape + results[0][0].shape),
          "label": np.asarray([r[1] for r in results], np.int32).reshape(shape),
          "mask": valid.astype(np.float32).reshape(shape),
      }
