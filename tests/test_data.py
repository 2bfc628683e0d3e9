"""The deterministic train pipeline and evaluation batches."""

import math
import threading

import numpy as np
import pytest
from PIL import Image

from configs import common
from mae_jax.data import pipeline
from mae_jax.data import sources
from mae_jax.data import transforms

RED = (200, 30, 40)
BLUE = (20, 40, 220)
GREEN = (30, 200, 60)


def _data_config(**overrides):
  """The recipe's data config with small, fast settings."""
  config = common.pretrain_config("tiny/4").data
  config.update(num_workers=2, prefetch_batches=1)
  config.update(overrides)
  return config


class ListSource:
  """An in-memory source: example i has a solid image and label i."""

  def __init__(self, num_examples, size=12):
    self.num_classes = num_examples
    self._examples = [
        sources.Example(np.full((size, size, 3), i + 1, np.uint8), i)
        for i in range(num_examples)]

  def __len__(self):
    return len(self._examples)

  def __getitem__(self, index):
    return self._examples[index]


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


def _save(path, pixels):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path)


def _solid(height, width, colour):
  return np.full((height, width, 3), colour, np.uint8)


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# Corrupt images.


@pytest.fixture
def folder_with_corrupt_image(tmp_path):
  """Five readable solid-colour images and one .jpg of garbage bytes."""
  colours = [RED, BLUE, GREEN, (250, 250, 10), (120, 20, 160)]
  for i, colour in enumerate(colours):
    _save(tmp_path / "train" / f"class{i % 2}" / f"img{i}.png",
          _solid(12 + i, 16, colour))
  bad = tmp_path / "train" / "class0" / "broken.jpg"
  bad.write_bytes(b"\xff\xd8 this is not a jpeg " * 7)
  return tmp_path, bad, colours


def test_corrupt_image_fails_the_pipeline_naming_file_and_fix(
    folder_with_corrupt_image, make_pipeline):
  root, bad, _ = folder_with_corrupt_image
  source = sources.FolderSource(str(root), "train")
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
  root, _, colours = folder_with_corrupt_image
  source = sources.FolderSource(str(root), "train")
  batches = make_pipeline(source, batch_size=8, image_size=8,
                          data_config=_data_config(corrupt_images="skip"))
  for _ in range(3):
    batch = next(batches)
    assert batch["image"].shape == (2, 4, 8, 8, 3)
    for image in batch["image"].reshape(-1, 8, 8, 3).astype(int):
      # Every image is one of the readable solid colours, nothing else.
      assert min(np.abs(image - c).max() for c in colours) <= 1
  assert batches.skipped_images > 0


# The train pipeline.


def _synthetic():
  return sources.SyntheticSource(16, num_classes=10, num_examples=40)


def test_batches_have_local_layout_and_dtypes(make_pipeline):
  batch = next(make_pipeline(_synthetic(), batch_size=8, image_size=8,
                             local_device_count=4))
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


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_every_example_exactly_once(process_count):
  source = sources.SyntheticSource(8, num_examples=45)
  seen = []
  for process in range(process_count):
    batches = list(pipeline.eval_batches(
        source, batch_size=16, image_size=8, local_device_count=4 // process_count,
        process_index=process, process_count=process_count))
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
  batch = next(pipeline.eval_batches(source, batch_size=8, image_size=16,
                                     local_device_count=2))
  np.testing.assert_array_equal(
      batch["image"][1, 0], transforms.center_crop(source[4].image, 16))
  np.testing.assert_array_equal(batch["mask"], 1.0)


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
