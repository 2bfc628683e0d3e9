"""The deterministic train pipeline, evaluation batches and figure images:
layout, resume, process slices, worker processes, unreadable images."""

import math
import multiprocessing
import os
import threading

import numpy as np
import pytest

from configs import common
from mae_jax.data import pipeline
from mae_jax.data import sources
from mae_jax.data import transforms
from tests import image_files


def _data_config(**overrides):
  """The recipe's data config, decoded on two threads of this process."""
  config = common.pretrain_config("tiny/4").data
  config.update(num_workers=0, num_threads=2, prefetch_batches=1)
  config.update(overrides)
  return config


class ListSource:
  """An in-memory source: example i has a solid image and label i."""
  in_memory = True

  def __init__(self, num_examples, size=12):
    self.num_classes = num_examples
    self._examples = [
        sources.Example(np.full((size, size, 3), i + 1, np.uint8), i)
        for i in range(num_examples)]

  def __len__(self):
    return len(self._examples)

  def __getitem__(self, index):
    return self._examples[index]


class UnreachableSource(ListSource):
  """Example 1 cannot be read (storage gone), which is not a corrupt image."""

  def __getitem__(self, index):
    if index == 1:
      raise sources.ReadError("bucket/1.jpg", 6, OSError("connection reset"))
    return super().__getitem__(index)


class DyingSource(ListSource):
  """Reading example 3 kills the process (as the kernel's OOM killer would)."""

  def __getitem__(self, index):
    if index == 3:
      os._exit(3)  # pylint: disable=protected-access
    return super().__getitem__(index)


@pytest.fixture
def make_pipeline():
  """Builds TrainPipelines and closes every one of them after the test."""
  made = []

  def make(source, *, batch_size=8, image_size=8, seed=0, start_step=0,
           local_device_count=2, process_index=0, process_count=1,
           data_config=None):
    p = pipeline.TrainPipeline(
        source, data_config or _data_config(), batch_size=batch_size,
        image_size=image_size, seed=seed, start_step=start_step,
        local_device_count=local_device_count, process_index=process_index,
        process_count=process_count)
    made.append(p)
    return p

  yield make
  for p in made:
    p.close()


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _synthetic():
  return sources.SyntheticSource(16, num_classes=10, num_examples=40)


# Layout and determinism.


def test_batches_have_local_layout_and_dtypes(make_pipeline):
  batch = next(make_pipeline(_synthetic(), batch_size=8, image_size=8,
                             local_device_count=4))
  assert batch.keys() == {"image", "label", "example_id"}
  assert batch["image"].shape == (4, 2, 8, 8, 3)
  assert batch["image"].dtype == np.uint8
  assert batch["label"].shape == (4, 2)
  assert batch["label"].dtype == np.int32
  np.testing.assert_array_equal(batch["example_id"],
                                np.arange(8, dtype=np.int32).reshape(4, 2))


def test_same_seed_gives_identical_batches(make_pipeline):
  a = make_pipeline(_synthetic(), seed=3)
  b = make_pipeline(_synthetic(), seed=3)
  for _ in range(3):
    _assert_batches_equal(next(a), next(b))


def test_different_seed_gives_different_batches(make_pipeline):
  a = next(make_pipeline(_synthetic(), seed=0))
  b = next(make_pipeline(_synthetic(), seed=1))
  assert not np.array_equal(a["image"], b["image"])


def test_resumed_pipeline_yields_identical_batches(make_pipeline):
  fresh = make_pipeline(_synthetic(), seed=5)
  resumed = make_pipeline(_synthetic(), seed=5, start_step=3)
  fresh_batches = [next(fresh) for _ in range(6)]
  _assert_batches_equal(next(resumed), fresh_batches[3])
  _assert_batches_equal(next(resumed), fresh_batches[4])
  _assert_batches_equal(fresh.batch(5), fresh_batches[5])


def test_process_slices_concatenate_to_the_single_process_batch(
    make_pipeline):
  single = make_pipeline(_synthetic(), batch_size=16, local_device_count=8)
  parts = [make_pipeline(_synthetic(), batch_size=16, local_device_count=4,
                         process_index=i, process_count=2) for i in (0, 1)]
  for _ in range(2):
    whole = next(single)
    halves = [next(p) for p in parts]
    for half, first in zip(halves, (0, 8)):
      assert half["image"].shape == (4, 2, 8, 8, 3)
      np.testing.assert_array_equal(half["example_id"].ravel(),
                                    np.arange(first, first + 8))
    for key in ("image", "label", "example_id"):
      joined = np.concatenate(
          [h[key].reshape((8,) + h[key].shape[2:]) for h in halves])
      np.testing.assert_array_equal(
          joined, whole[key].reshape((16,) + whole[key].shape[2:]),
          err_msg=key)


def test_batches_do_not_depend_on_how_they_are_chunked(make_pipeline):
  # 96 local examples are computed in chunks of 32, 24 in one chunk of 24.
  whole = make_pipeline(_synthetic(), batch_size=96, local_device_count=8,
                        seed=2).batch(1)
  part = make_pipeline(_synthetic(), batch_size=96, local_device_count=3,
                       process_index=1, process_count=4, seed=2).batch(1)
  np.testing.assert_array_equal(
      part["image"].reshape(-1, 8, 8, 3),
      whole["image"].reshape(-1, 8, 8, 3)[24:48])
  assert pipeline.MAX_CHUNK == 32


def test_worker_processes_give_the_same_batches_and_stop_on_close(tmp_path):
  image_files.folder_with_corrupt_image(tmp_path)
  source = sources.FolderSource(str(tmp_path), "train")
  config = _data_config(num_workers=2, num_threads=1,
                        corrupt_images="skip")
  in_workers = pipeline.TrainPipeline(
      source, config, batch_size=8, image_size=8, seed=1, start_step=2,
      local_device_count=2)
  try:
    batches = [next(in_workers) for _ in range(3)]
    assert multiprocessing.active_children()  # the workers are running
    skipped = in_workers.skipped_images
  finally:
    in_workers.close()
  assert not multiprocessing.active_children()
  here = pipeline.TrainPipeline(
      source, _data_config(corrupt_images="skip"), batch_size=8, image_size=8,
      seed=1, start_step=2, local_device_count=2)
  try:
    for got in batches:
      _assert_batches_equal(got, next(here))
    assert skipped == here.skipped_images > 0
  finally:
    here.close()


def test_worker_error_reaches_the_main_process_with_its_message(tmp_path):
  bad = image_files.folder_with_corrupt_image(tmp_path)
  source = sources.FolderSource(str(tmp_path), "train")
  batches = pipeline.TrainPipeline(
      source, _data_config(num_workers=1, num_threads=1), batch_size=8,
      image_size=8, seed=0, start_step=0, local_device_count=2)
  try:
    with pytest.raises(ValueError) as info:
      next(batches)  # 8 draws from 6 examples: the bad one is among them
    assert str(bad) in str(info.value) and "skip" in str(info.value)
  finally:
    batches.close()
  assert not multiprocessing.active_children()


def test_a_dead_worker_is_an_error_not_a_hang():
  batches = pipeline.TrainPipeline(
      DyingSource(8), _data_config(num_workers=1, num_threads=1),
      batch_size=8, image_size=8, seed=0, start_step=0, local_device_count=2)
  outcome = []

  def consume():
    try:
      next(batches)
    except Exception as e:  # pylint: disable=broad-except
      outcome.append(e)

  thread = threading.Thread(target=consume, daemon=True)
  thread.start()
  thread.join(timeout=120)
  batches.close()
  assert outcome, "next() is still waiting for the dead worker"
  assert "terminated unexpectedly" in str(outcome[0])


def test_worker_settings_resolve_by_source():
  config = _data_config(num_workers=-1, num_threads=0)
  assert pipeline.worker_processes(config, ListSource(3)) == 0
  folder_like = type("Files", (), {"in_memory": False})()
  assert pipeline.worker_processes(config, folder_like) >= 1
  assert pipeline.threads_per_process(config, workers=4) == 2
  assert pipeline.threads_per_process(config, workers=0) >= 1
  config.update(num_workers=3, num_threads=5)
  assert pipeline.worker_processes(config, ListSource(3)) == 3
  assert pipeline.threads_per_process(config, workers=3) == 5


# The stream and the layout.


def test_shuffled_stream_visits_every_example_once_per_epoch():
  stream = pipeline.ShuffledStream(10, seed=0)
  first = stream(np.arange(10))
  second = stream(np.arange(10, 20))
  np.testing.assert_array_equal(np.sort(first), np.arange(10))
  np.testing.assert_array_equal(np.sort(second), np.arange(10))
  assert not np.array_equal(first, second)  # a fresh permutation per epoch
  assert not np.array_equal(first, np.arange(10))  # shuffled at all
  np.testing.assert_array_equal(
      pipeline.ShuffledStream(10, seed=0)(np.arange(20)),
      np.concatenate([first, second]))


def test_shuffled_stream_rejects_empty_source():
  with pytest.raises(ValueError, match="empty"):
    pipeline.ShuffledStream(0, seed=0)


def test_pipeline_sees_every_example_once_per_epoch(make_pipeline):
  num_examples, batch_size = 10, 4
  batches = make_pipeline(ListSource(num_examples), batch_size=batch_size)
  steps = math.ceil(num_examples / batch_size)
  labels = np.concatenate([next(batches)["label"].ravel()
                           for _ in range(steps)])
  np.testing.assert_array_equal(np.sort(labels[:num_examples]),
                                np.arange(num_examples))


def test_local_batch_layout_splits_batch_over_processes():
  assert pipeline.local_batch_layout(16, 0, 1, 8) == (0, 2)
  assert pipeline.local_batch_layout(16, 1, 2, 4) == (8, 2)


def test_local_batch_layout_rejects_indivisible_batch():
  with pytest.raises(ValueError) as info:
    pipeline.local_batch_layout(100, 0, 1, 8)
  message = str(info.value)
  assert "batch_size=100" in message
  assert "8 devices" in message
  assert "multiple of 8" in message
  assert "--config.batch_size=96" in message


# Augmentations chosen by the config.


def _drawn(source, *, seed, step, example_id, batch_size):
  """The image an example of `step` shows and its augmentation's rng."""
  index = int(pipeline.ShuffledStream(len(source), seed)(
      np.asarray([step * batch_size + example_id]))[0])
  return source[index].image, np.random.default_rng((seed, step, example_id))


def test_clamped_crop_sampler_is_the_linear_probe_crop(make_pipeline):
  # Crops of 90-100% of the area often do not fit at the drawn aspect: the
  # samplers then differ (they agree whenever the first draw fits).
  source = sources.SyntheticSource(24, num_examples=40)
  config = _data_config(crop_sampler="clamped", crop_scale=(0.9, 1.0))
  batch = make_pipeline(source, data_config=config, image_size=8).batch(2)
  image, rng = _drawn(source, seed=0, step=2, example_id=5, batch_size=8)
  box = transforms.clamped_box(24, 24, rng, (0.9, 1.0),
                               tuple(config.crop_ratio))
  expected = transforms.random_horizontal_flip(
      transforms.resized_crop(image, box, 8), rng)
  np.testing.assert_array_equal(batch["image"][1, 1], expected)
  torchvision = make_pipeline(
      source, image_size=8,
      data_config=_data_config(crop_scale=(0.9, 1.0))).batch(2)
  assert not np.array_equal(torchvision["image"], batch["image"])


def test_unknown_crop_sampler_fails_when_the_pipeline_is_built():
  with pytest.raises(ValueError, match="data.crop_sampler='inception'"):
    pipeline.TrainPipeline(_synthetic(), _data_config(crop_sampler="inception"),
                           batch_size=8, image_size=8, seed=0, start_step=0,
                           local_device_count=2)


def test_second_view_is_the_same_crop_for_the_tokenizer(make_pipeline):
  source = sources.SyntheticSource(40, num_examples=40)
  config = _data_config(second_view_size=6, crop_scale=(0.08, 1.0))
  batches = make_pipeline(source, data_config=config, image_size=12,
                          start_step=1)
  batch = next(batches)
  assert batch["image"].shape == (2, 4, 12, 12, 3)
  assert batch["second_view"].shape == (2, 4, 6, 6, 3)
  assert batch["second_view"].dtype == np.uint8
  image, rng = _drawn(source, seed=0, step=1, example_id=6, batch_size=8)
  view, second = transforms.two_view_crop(image, rng, 12, 6, (0.08, 1.0),
                                          tuple(config.crop_ratio), True)
  np.testing.assert_array_equal(batch["image"][1, 2], view)
  np.testing.assert_array_equal(batch["second_view"][1, 2], second)
  resumed = make_pipeline(source, data_config=config, image_size=12,
                          start_step=2)
  _assert_batches_equal(next(resumed), next(batches))


def test_second_view_with_rand_augment_is_refused():
  config = _data_config(second_view_size=6, rand_augment_num_ops=2)
  with pytest.raises(ValueError, match="second_view_size"):
    pipeline.TrainPipeline(_synthetic(), config, batch_size=8, image_size=8,
                           seed=0, start_step=0, local_device_count=2)


# Unreadable images in training.


@pytest.fixture
def folder_with_corrupt_image(tmp_path):
  bad = image_files.folder_with_corrupt_image(tmp_path)
  return sources.FolderSource(str(tmp_path), "train"), bad


def test_corrupt_image_fails_the_pipeline_naming_file_and_fix(
    folder_with_corrupt_image, make_pipeline):
  source, bad = folder_with_corrupt_image
  assert len(source) == 6
  # One batch of 8 covers every example of the first epoch.
  batches = make_pipeline(source, batch_size=8,
                          data_config=_data_config(corrupt_images="fail"))
  with pytest.raises(ValueError) as info:
    next(batches)
  assert str(bad) in str(info.value)
  assert "skip" in str(info.value)
  # Asking again raises again instead of waiting for a batch that never
  # comes (checked from a thread, so a regression fails instead of hanging).
  second = []
  thread = threading.Thread(target=lambda: second.append(
      pytest.raises(ValueError, next, batches)), daemon=True)
  thread.start()
  thread.join(timeout=10)
  assert second and str(bad) in str(second[0].value)
  # A direct batch(step) call raises the same error.
  direct = make_pipeline(source, batch_size=8,
                         data_config=_data_config(corrupt_images="fail"))
  with pytest.raises(ValueError, match="skip") as info:
    direct.batch(0)
  assert str(bad) in str(info.value)


def test_corrupt_image_is_replaced_by_a_readable_one_with_skip(
    folder_with_corrupt_image, make_pipeline):
  source, _ = folder_with_corrupt_image
  # Batches of 6 = one epoch each: the broken image is drawn once a step.
  batches = make_pipeline(source, batch_size=6, image_size=8,
                          data_config=_data_config(corrupt_images="skip"))
  for _ in range(3):
    batch = next(batches)
    assert batch["image"].shape == (2, 3, 8, 8, 3)
    for image in batch["image"].reshape(-1, 8, 8, 3).astype(int):
      # Every image is one of the readable solid colours, nothing else.
      assert min(np.abs(image - c).max()
                 for c in image_files.FOLDER_COLOURS) <= 1
  assert batches.skipped_images == 3


def test_skips_are_counted_by_every_process(folder_with_corrupt_image,
                                            make_pipeline):
  source, _ = folder_with_corrupt_image
  config = _data_config(corrupt_images="skip")
  single = make_pipeline(source, batch_size=12, local_device_count=2,
                         data_config=config)
  parts = [make_pipeline(source, batch_size=12, local_device_count=1,
                         process_index=i, process_count=2, data_config=config)
           for i in (0, 1)]
  for _ in range(4):
    next(single)
    for part in parts:
      next(part)
  assert single.skipped_images == 8  # two epochs a step
  counts = [part.skipped_images for part in parts]
  assert sum(counts) == 8 and min(counts) > 0


def test_read_error_is_not_skipped_as_corrupt(make_pipeline):
  batches = make_pipeline(UnreachableSource(4), batch_size=4,
                          data_config=_data_config(corrupt_images="skip"))
  with pytest.raises(sources.ReadError, match="bucket/1.jpg"):
    next(batches)


# Evaluation.


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_every_example_exactly_once(process_count):
  source = sources.SyntheticSource(8, num_examples=45)
  seen = []
  for process in range(process_count):
    batches = list(pipeline.EvalBatches(
        source, _data_config(), batch_size=16, image_size=8,
        local_device_count=4 // process_count, process_index=process,
        process_count=process_count))
    assert len(batches) == 3  # every process runs the same number
    for batch in batches:
      assert batch["image"].shape == (4 // process_count, 4, 8, 8, 3)
      real = batch["mask"].reshape(-1) == 1
      seen.extend(image.tobytes()
                  for image in batch["image"].reshape(-1, 8, 8, 3)[real])
  expected = [transforms.center_crop(source[i].image, 8).tobytes()
              for i in range(45)]
  assert sorted(seen) == sorted(expected)


def test_eval_batches_are_centre_crops_in_order():
  source = sources.DigitsSource("test", 16)
  batches = pipeline.EvalBatches(source, _data_config(), batch_size=8,
                                 image_size=16, local_device_count=2)
  assert len(batches) == 38
  batch = next(iter(batches))
  np.testing.assert_array_equal(
      batch["image"][1, 0], transforms.center_crop(source[4].image, 16))
  np.testing.assert_array_equal(batch["mask"], 1.0)


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_leaves_unreadable_images_out_and_counts_them(
    folder_with_corrupt_image, process_count):
  source, bad_path = folder_with_corrupt_image
  bad = [str(source.path(i)) for i in range(len(source))].index(str(bad_path))
  readable = sorted(
      transforms.center_crop(source[i].image, 8).tobytes()
      for i in range(len(source)) if i != bad)
  seen, skipped = [], 0
  for process in range(process_count):
    batches = pipeline.EvalBatches(
        source, _data_config(corrupt_images="skip"), batch_size=4,
        image_size=8, local_device_count=2 // process_count,
        process_index=process, process_count=process_count)
    for batch in batches:
      real = batch["mask"].reshape(-1) == 1
      seen.extend(image.tobytes()
                  for image in batch["image"].reshape(-1, 8, 8, 3)[real])
    skipped += batches.skipped_images
  assert sorted(seen) == readable  # each readable image exactly once
  assert skipped == 1


def test_eval_with_corrupt_image_fails_naming_it_by_default(
    folder_with_corrupt_image):
  source, bad = folder_with_corrupt_image
  batches = pipeline.EvalBatches(source, _data_config(), batch_size=4,
                                 image_size=8, local_device_count=2)
  with pytest.raises(ValueError, match="corrupt_images=skip") as info:
    list(batches)
  assert str(bad) in str(info.value)


def test_figure_images_pass_over_unreadable_ones(folder_with_corrupt_image):
  source, bad = folder_with_corrupt_image
  images = pipeline.eval_images(source, 5, 8, corrupt_images="skip")
  assert images.shape == (5, 8, 8, 3)
  for image in images.astype(int):
    assert min(np.abs(image - c).max()
               for c in image_files.FOLDER_COLOURS) <= 1
  with pytest.raises(ValueError) as info:
    pipeline.eval_images(source, 5, 8)
  assert str(bad) in str(info.value)


def test_figure_images_are_the_first_centre_crops():
  source = sources.DigitsSource("test", 16)
  images = pipeline.eval_images(source, 3, 12)
  np.testing.assert_array_equal(
      images, np.stack([transforms.center_crop(source[i].image, 12)
                        for i in range(3)]))
