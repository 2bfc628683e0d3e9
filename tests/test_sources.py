"""Data sources: decoding, retried reads, errors that say what to do."""

import io
import pickle

import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds

from configs import common
from mae_jax.data import sources
from tests import image_files
from tests.image_files import BLUE, GREEN, RED, save, solid

NO_WAIT = sources.Retries(attempts=3, first_delay_s=0.0)


def _data_config(**overrides):
  config = common.data_config()
  config.update(overrides)
  return config


def _encoded(pixels: np.ndarray, file_format: str, **options) -> bytes:
  encoded = io.BytesIO()
  Image.fromarray(pixels).save(encoded, file_format, **options)
  return encoded.getvalue()


# Decoding.


def test_decode_image_scales_16_bit_greyscale_to_8_bits():
  # PIL's convert("RGB") clips I;16 pixels to 255: a white image.
  grey = np.random.default_rng(0).integers(0, 65536, (6, 9), dtype=np.uint16)
  for data in (_encoded(grey, "PNG"), image_files.png_bytes(grey, 16, 0)):
    pixels = sources.decode_image(data, "grey16.png")
    expected = np.round(grey / 257).astype(np.uint8)
    np.testing.assert_array_equal(pixels, np.stack([expected] * 3, -1))


@pytest.mark.parametrize("channels, color_type", [(3, 2), (4, 6), (2, 4)])
def test_decode_image_reads_16_bit_colour_and_alpha_pngs(channels, color_type):
  wide = np.random.default_rng(1).integers(0, 65536, (5, 7, channels),
                                           dtype=np.uint16)
  pixels = sources.decode_image(
      image_files.png_bytes(wide, 16, color_type), "wide.png")
  colour = wide[..., :3] if channels >= 3 else np.repeat(wide[..., :1], 3, -1)
  assert pixels.shape == (5, 7, 3) and pixels.dtype == np.uint8
  np.testing.assert_allclose(pixels, colour / 257, atol=1)  # not clipped


def test_decode_image_reads_palette_greyscale_alpha_and_cmyk():
  rgb = np.random.default_rng(2).integers(0, 256, (6, 8, 3), dtype=np.uint8)
  palette = Image.fromarray(rgb).quantize(16)
  encoded = io.BytesIO()
  palette.save(encoded, "PNG", transparency=0)
  np.testing.assert_array_equal(
      sources.decode_image(encoded.getvalue(), "palette.png"),
      np.asarray(palette.convert("RGB")))
  grey_alpha = np.stack([rgb[..., 0], rgb[..., 1]], -1)
  np.testing.assert_array_equal(
      sources.decode_image(image_files.png_bytes(grey_alpha, 8, 4), "la.png"),
      np.stack([rgb[..., 0]] * 3, -1))
  cmyk = Image.fromarray(rgb).convert("CMYK")
  encoded = io.BytesIO()
  cmyk.save(encoded, "TIFF")
  np.testing.assert_array_equal(
      sources.decode_image(encoded.getvalue(), "cmyk.tif"), rgb)


def test_decode_image_of_garbage_is_a_corrupt_image_naming_it():
  with pytest.raises(sources.CorruptImageError) as info:
    sources.decode_image(b"\xff\xd8 not a jpeg", "a/b.jpg")
  assert info.value.where == "a/b.jpg"
  assert "a/b.jpg" in str(info.value)


# Retried reads.


class _Flaky:
  """A read that fails `failures` times with an I/O error, then succeeds."""

  def __init__(self, failures: int):
    self.failures = failures
    self.calls = 0

  def __call__(self) -> bytes:
    self.calls += 1
    if self.calls <= self.failures:
      raise OSError(5, "Input/output error")
    return b"the bytes"


def test_read_is_retried_with_backoff_until_it_succeeds():
  sleeps = []
  read = _Flaky(failures=3)
  data = sources.read_with_retries(
      read, "gs://bucket/a.jpg", sources.Retries(attempts=4, first_delay_s=0.5),
      sleep=sleeps.append)
  assert data == b"the bytes"
  assert read.calls == 4
  assert sleeps == [0.5, 1.0, 2.0]


def test_read_that_keeps_failing_names_file_cause_and_attempts():
  sleeps = []
  read = _Flaky(failures=100)
  with pytest.raises(sources.ReadError) as info:
    sources.read_with_retries(read, "gs://bucket/a.jpg",
                              sources.Retries(attempts=3, first_delay_s=1.0),
                              sleep=sleeps.append)
  message = str(info.value)
  assert "gs://bucket/a.jpg" in message and "Input/output error" in message
  assert "3 attempts" in message
  assert read.calls == 3 and sleeps == [1.0, 2.0]
  assert not isinstance(info.value, sources.CorruptImageError)


def _fail_reads_of(monkeypatch, path, failures: int):
  """Makes the first `failures` reads of `path` raise an I/O error."""
  calls = []
  original = type(path).read_bytes

  def read_bytes(self):
    if str(self) == str(path):
      calls.append(1)
      if len(calls) <= failures:
        raise OSError(5, "Input/output error")
    return original(self)

  monkeypatch.setattr(type(path), "read_bytes", read_bytes)
  return calls


def test_folder_source_retries_a_transient_read_error(tmp_path, monkeypatch):
  save(tmp_path / "train" / "a" / "x.png", solid(4, 5, RED))
  source = sources.FolderSource(str(tmp_path), "train", retries=NO_WAIT)
  calls = _fail_reads_of(monkeypatch, source.path(0), failures=2)
  np.testing.assert_array_equal(source[0].image, solid(4, 5, RED))
  assert len(calls) == 3


def test_folder_source_read_error_after_retries_is_not_corrupt(
    tmp_path, monkeypatch):
  save(tmp_path / "train" / "a" / "x.png", solid(4, 5, RED))
  source = sources.FolderSource(str(tmp_path), "train", retries=NO_WAIT)
  _fail_reads_of(monkeypatch, source.path(0), failures=100)
  with pytest.raises(sources.ReadError) as info:
    source[0]  # pylint: disable=pointless-statement
  assert str(source.path(0)) in str(info.value)


# Small sources.


def test_digits_splits_have_documented_sizes_and_types():
  train = sources.DigitsSource("train", 16)
  test = sources.DigitsSource("test", 16)
  assert (len(train), len(test)) == (1497, 300)
  assert train.num_classes == 10
  for source in (train, test):
    for i in (0, len(source) - 1):
      example = source[i]
      assert example.image.shape == (16, 16, 3)
      assert example.image.dtype == np.uint8
      assert 0 <= example.label <= 9
      assert example.image.max() > example.image.min()  # not blank
  assert {train[i].label for i in range(50)} == set(range(10))


def test_digits_unknown_split_raises():
  with pytest.raises(ValueError, match="validation"):
    sources.DigitsSource("validation", 16)


def test_synthetic_source_is_a_pure_function_of_the_index():
  source = sources.SyntheticSource(10, num_classes=7, num_examples=20)
  again = sources.SyntheticSource(10, num_classes=7, num_examples=20)
  assert len(source) == 20
  assert source.num_classes == 7
  first = source[3]
  assert first.image.shape == (10, 10, 3)
  assert first.image.dtype == np.uint8
  np.testing.assert_array_equal(first.image, again[3].image)
  assert first.label == again[3].label
  assert not np.array_equal(first.image, source[4].image)
  assert all(0 <= source[i].label < 7 for i in range(20))


def test_open_source_unknown_kind_raises():
  with pytest.raises(ValueError, match="folder"):
    sources.open_source(_data_config(source="imagefolder"), "train", 8)


# The image folder.


@pytest.fixture
def image_folder(tmp_path):
  """root/train/{cat,dog}/ with PNG, JPEG, grayscale and a non-image file."""
  root = tmp_path / "images"
  save(root / "train" / "dog" / "a.png", solid(10, 14, RED))
  save(root / "train" / "dog" / "b.jpg", solid(9, 9, GREEN))
  save(root / "train" / "cat" / "c.png", solid(7, 12, BLUE))
  gray = np.arange(5 * 6, dtype=np.uint8).reshape(5, 6) * 8
  save(root / "train" / "cat" / "gray.PNG", gray)
  (root / "train" / "cat" / "notes.txt").write_text("not an image")
  return root


def test_folder_source_reads_images_with_labels_by_sorted_class(image_folder):
  source = sources.FolderSource(str(image_folder), "train")
  assert source.classes == ["cat", "dog"]
  assert source.num_classes == 2
  assert len(source) == 4  # notes.txt is not an image
  examples = [source[i] for i in range(len(source))]
  by_shape = {e.image.shape: e for e in examples}
  assert set(by_shape) == {(10, 14, 3), (9, 9, 3), (7, 12, 3), (5, 6, 3)}
  assert all(e.image.dtype == np.uint8 for e in examples)
  # cat (label 0): the blue PNG and the grayscale one.
  np.testing.assert_array_equal(by_shape[(7, 12, 3)].image, solid(7, 12, BLUE))
  assert by_shape[(7, 12, 3)].label == 0
  gray = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
  np.testing.assert_array_equal(by_shape[(5, 6, 3)].image,
                                np.stack([gray] * 3, axis=-1))
  assert by_shape[(5, 6, 3)].label == 0
  # dog (label 1): the red PNG and the green JPEG (lossy).
  np.testing.assert_array_equal(by_shape[(10, 14, 3)].image,
                                solid(10, 14, RED))
  assert by_shape[(10, 14, 3)].label == 1
  np.testing.assert_allclose(by_shape[(9, 9, 3)].image.mean(axis=(0, 1)),
                             GREEN, atol=8)
  assert by_shape[(9, 9, 3)].label == 1


def test_folder_source_pickles_for_worker_processes(image_folder):
  source = sources.FolderSource(str(image_folder), "train")
  copy = pickle.loads(pickle.dumps(source))
  assert len(copy) == len(source)
  for i in range(len(source)):
    np.testing.assert_array_equal(copy[i].image, source[i].image)


def test_folder_source_missing_split_names_path_and_contents(image_folder):
  with pytest.raises(FileNotFoundError) as info:
    sources.FolderSource(str(image_folder), "val")
  message = str(info.value)
  assert str(image_folder / "val") in message
  assert "'train'" in message  # what the root holds instead


def test_folder_source_missing_root_says_it_does_not_exist(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    sources.FolderSource(str(tmp_path / "nowhere"), "train")


def test_folder_source_without_images_raises(tmp_path):
  (tmp_path / "train" / "cat").mkdir(parents=True)
  (tmp_path / "train" / "cat" / "readme.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match="no images") as info:
    sources.FolderSource(str(tmp_path), "train")
  assert str(tmp_path / "train") in str(info.value)


def test_folder_source_needs_data_dir():
  with pytest.raises(ValueError, match="--config.data.data_dir"):
    sources.open_source(_data_config(source="folder", data_dir=""), "train", 8)


def test_folder_source_corrupt_image_raises_with_its_path(tmp_path):
  bad = image_files.folder_with_corrupt_image(tmp_path)
  source = sources.FolderSource(str(tmp_path), "train")
  index = [str(source.path(i)) for i in range(len(source))].index(str(bad))
  with pytest.raises(sources.CorruptImageError) as info:
    source[index]  # pylint: disable=pointless-statement
  assert info.value.where == str(bad)


# tfds.


class MaeJaxTestImages(tfds.core.GeneratorBasedBuilder):
  """Three solid PNGs (grey levels 0, 40, 80; labels 0-2) and a record whose
  image bytes do not decode."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(),
            "label": tfds.features.ClassLabel(num_classes=3),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(3):
      png = _encoded(solid(5, 7, (40 * i,) * 3), "PNG")
      yield i, {"image": io.BytesIO(png), "label": i}
    yield 3, {"image": io.BytesIO(b"not an image"), "label": 0}


@pytest.fixture(scope="module")
def tfds_dirs(tmp_path_factory):
  """(array_record data_dir, tfrecord data_dir) holding the data set."""
  dirs = []
  for file_format in ("array_record", "tfrecord"):
    data_dir = tmp_path_factory.mktemp(file_format)
    MaeJaxTestImages(data_dir=str(data_dir),
                     file_format=file_format).download_and_prepare()
    dirs.append(str(data_dir))
  return dirs


def test_tfds_source_decodes_records_to_rgb_uint8(tfds_dirs):
  source = sources.open_source(
      _data_config(source="tfds", name="mae_jax_test_images",
                   data_dir=tfds_dirs[0]), "train", 8)
  assert len(source) == 4 and source.num_classes == 3
  by_label = {}
  for i in range(len(source)):
    try:
      example = source[i]
    except sources.CorruptImageError as e:
      assert "mae_jax_test_images[train] record" in e.where
      continue
    by_label[example.label] = example.image
  assert sorted(by_label) == [0, 1, 2]
  for label, image in by_label.items():
    np.testing.assert_array_equal(image, solid(5, 7, (40 * label,) * 3))
  copy = pickle.loads(pickle.dumps(source))  # for worker processes
  assert copy[0].label == source[0].label


def test_tfds_source_retries_a_transient_read_error(tfds_dirs):
  source = sources.TfdsSource("mae_jax_test_images", "train", tfds_dirs[0],
                              retries=NO_WAIT)
  readable = {}
  for i in range(len(source)):
    try:
      readable[i] = source[i].label
    except sources.CorruptImageError:
      pass
  index, label = next(iter(readable.items()))
  records = source._data  # pylint: disable=protected-access
  failures = []

  class FlakyRecords:
    def __len__(self):
      return len(records)

    def __getitem__(self, index):
      if len(failures) < 2:
        failures.append(index)
        raise OSError(5, "Input/output error")
      return records[index]

  source._data = FlakyRecords()  # pylint: disable=protected-access
  assert source[index].label == label
  assert len(failures) == 2


def _assert_short(message: str):
  assert len(message.splitlines()) <= 2, message
  assert len(message) < 400, message


def test_tfds_unknown_name_suggests_close_names():
  with pytest.raises(ValueError) as info:
    sources.TfdsSource("imagenet_2012_typo", "train", "")
  message = str(info.value)
  _assert_short(message)
  assert "'imagenet2012'" in message and "--config.data.name" in message


def test_tfds_missing_data_dir_says_so(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    sources.TfdsSource("imagenet2012", "train", str(tmp_path / "nowhere"))
  message = str(info.value)
  _assert_short(message)
  assert "does not exist" in message and "--config.data.data_dir" in message


def test_tfds_unprepared_data_set_gives_the_build_command(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    sources.TfdsSource("imagenet2012", "train", str(tmp_path))
  message = str(info.value)
  _assert_short(message)
  assert "not prepared" in message
  assert (f"tfds build imagenet2012 --data_dir={tmp_path} "
          "--file_format=array_record --manual_dir=") in message


def test_tfds_tfrecord_data_set_says_to_rebuild_as_array_record(tfds_dirs):
  with pytest.raises(FileNotFoundError) as info:
    sources.TfdsSource("mae_jax_test_images", "train", tfds_dirs[1])
  message = str(info.value)
  _assert_short(message)
  assert "array_record" in message and "tfds build mae_jax_test_images" in (
      message)


def test_tfds_unknown_split_lists_the_splits(tfds_dirs):
  with pytest.raises(ValueError) as info:
    sources.TfdsSource("mae_jax_test_images", "validation", tfds_dirs[0])
  message = str(info.value)
  _assert_short(message)
  assert "'train'" in message and "--config.data.split" in message
