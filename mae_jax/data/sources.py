"""Random-access image sources: tfds, an image folder, digits, synthetic.

Every source is indexable (`len`, `source[i]`), which is what makes the input
pipeline a pure function of (seed, step): no stream position to lose, so a
resumed run reads exactly the examples an uninterrupted one would.

File-backed sources read and decode in two steps, because their failures
mean different things: a failed read (an I/O error, a storage hiccup) says
nothing about the image and is retried; bytes that were read but do not
decode are a corrupt image (`CorruptImageError`), which the pipeline may skip.
Sources are picklable, so that worker processes can each open their copy.
"""

import dataclasses
import difflib
import io
import time
from typing import Callable, Protocol, TypeVar

from absl import logging
import ml_collections
import numpy as np
from etils import epath

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# PIL modes of 16-bit greyscale, which `convert("RGB")` clips to white.
# ("I": how older Pillow versions open them.)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Example:
  image: np.ndarray  # (H, W, 3) uint8
  label: int


class CorruptImageError(ValueError):
  """An image that cannot be decoded; `where` names the file or record."""

  def __init__(self, where: str, cause: Exception):
    super().__init__(f"cannot decode image {where}: {cause}")
    self.where = where


class ReadError(OSError):
  """A file or record that could not be read, even after retries."""

  def __init__(self, where: str, attempts: int, cause: Exception):
    super().__init__(
        f"cannot read {where} ({attempts} attempts): "
        f"{type(cause).__name__}: {cause}. Check that the storage is "
        "reachable and the file is there, then resume the run.")
    self.where = where


@dataclasses.dataclass(frozen=True)
class Retries:
  """How often a failed read is tried again: after `first_delay_s`, then
  twice as long each time (0.5 + 1 + 2 + 4 + 8 s by default), enough to ride
  out a storage hiccup without hiding a storage that is gone."""
  attempts: int = 6
  first_delay_s: float = 0.5


def read_with_retries(read: Callable[[], T], where: str,
                      retries: Retries = Retries(),
                      sleep: Callable[[float], None] = time.sleep) -> T:
  """`read()`, tried `retries.attempts` times with exponential backoff.

  Any exception from `read` counts as transient: it only reads, so its
  failure is never a statement about the image's content.
  """
  delay = retries.first_delay_s
  for attempt in range(1, retries.attempts + 1):
    try:
      return read()
    except Exception as e:  # pylint: disable=broad-except
      if attempt == retries.attempts:
        raise ReadError(where, attempt, e) from e
      logging.warning("Reading %s failed (%s: %s); retry %d of %d in %.1fs",
                      where, type(e).__name__, e, attempt,
                      retries.attempts - 1, delay)
      sleep(delay)
      delay *= 2
  raise AssertionError("unreachable")


def decode_image(data: bytes, where: str) -> np.ndarray:
  """Encoded image bytes -> (H, W, 3) uint8 RGB.

  PIL's `convert("RGB")`, which torchvision's ImageFolder loader uses, except
  for 16-bit greyscale (PNG), which it clips to white: that is scaled to 8 bits
  (v / 257). 16-bit colour PNGs need nothing: PIL reads them as 8-bit.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as image:
      if image.mode in _SIXTEEN_BIT_MODES:
        pixels = np.asarray(image).astype(np.float32)
        grey = np.round(np.clip(pixels, 0, 65535) / 257).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
      if image.mode != "RGB":
        image = image.convert("RGB")  # also decodes
      return np.asarray(image)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError
          ) as e:  # what PIL raises for bad bytes
    raise CorruptImageError(where, e) from e


class Source(Protocol):
  num_classes: int
  # True when examples come from memory: worker processes would not help.
  in_memory: bool

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> Example:
    ...


def _as_rgb(image: np.ndarray) -> np.ndarray:
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.asarray(image[..., :3], dtype=np.uint8)


class DigitsSource:
  """scikit-learn's 1797 bundled 8x8 digits, upsampled: the offline demo data.

  Every 6th image is the 'test' split (300 images), the rest 'train' (1497).
  """
  num_classes = 10
  in_memory = True

  def __init__(self, split: str, image_size: int):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    is_test = np.arange(len(digits.images)) % 6 == 0
    if split not in ("train", "test"):
      raise ValueError(f"digits has splits 'train' and 'test', not {split!r}")
    keep = is_test if split == "test" else ~is_test
    pixels = np.round(digits.images[keep] * (255 / 16)).astype(np.uint8)
    self._images = np.stack([
        _as_rgb(np.asarray(Image.fromarray(p).resize(
            (image_size, image_size), Image.BICUBIC))) for p in pixels])
    self._labels = digits.target[keep].astype(np.int32)

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> Example:
    return Example(self._images[index], int(self._labels[index]))


class SyntheticSource:
  """Random pixels, a pure function of the index: input with no I/O."""
  in_memory = True

  def __init__(self, image_size: int, num_classes: int = 1000,
               num_examples: int = 1_281_167):
    self.num_classes = num_classes
    self._size = image_size
    self._len = num_examples

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> Example:
    rng = np.random.default_rng(index)
    image = rng.integers(0, 256, (self._size, self._size, 3), dtype=np.uint8)
    return Example(image, int(rng.integers(self.num_classes)))


class FolderSource:
  """`root/split/<class>/<image>` files, labels by sorted class name.

  The layout of the official MAE repo (torchvision ImageFolder); `root` may
  be a local path or a gs:// URL. File names are kept as one bytes array, so
  that a worker process receives a million of them in a few tens of MB.
  """
  in_memory = False

  def __init__(self, root: str, split: str, retries: Retries = Retries()):
    if not root:
      raise ValueError("data.source='folder' needs the folder: set "
                       "--config.data.data_dir=/path/with/<split>/<class>/")
    directory = epath.Path(root) / split
    if not directory.is_dir():
      found = sorted(p.name for p in epath.Path(root).iterdir()) if epath.Path(
          root).is_dir() else "nothing (it does not exist)"
      raise FileNotFoundError(
          f"image folder {directory} not found; {root} holds {found}. "
          f"Expected {root}/{split}/<class name>/<images>.")
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir())
    names, labels = [], []
    for label, name in enumerate(classes):
      for path in sorted((directory / name).iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
          names.append(f"{name}/{path.name}".encode())
          labels.append(label)
    if not names:
      raise FileNotFoundError(
          f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders of "
          f"{directory}; expected {directory}/<class name>/<images>")
    self._directory = str(directory)
    self._names = np.asarray(names)
    self._labels = np.asarray(labels, np.int32)
    self._retries = retries
    self.classes = classes
    self.num_classes = len(classes)

  def __len__(self) -> int:
    return len(self._names)

  def path(self, index: int) -> epath.Path:
    return epath.Path(self._directory) / self._names[index].decode()

  def __getitem__(self, index: int) -> Example:
    path = self.path(index)
    data = read_with_retries(path.read_bytes, str(path), self._retries)
    return Example(decode_image(data, str(path)), int(self._labels[index]))


def _tfds_error(name: str, data_dir: str, error: Exception) -> Exception:
  """A one- or two-line error that says what is wrong with a tfds data set
  and what to do, instead of tfds' own (a list of every data set, or a
  guess about file formats)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  base_name = name.split(":")[0].split("/")[0]
  if data_dir and not epath.Path(data_dir).exists():
    return FileNotFoundError(
        f"tfds data_dir {data_dir} does not exist.\nSet "
        "--config.data.data_dir to the folder that holds "
        f"{base_name}/ (or '' for tfds' default).")
  root = epath.Path(data_dir or tfds.core.constants.DATA_DIR)
  in_root = ([p.name for p in root.iterdir() if p.is_dir()]
             if root.exists() else [])
  if isinstance(error, tfds.core.registered.DatasetNotFoundError):
    known = tfds.list_builders(with_community_datasets=False) + in_root
    close = difflib.get_close_matches(base_name, known, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(f"tfds has no data set named {name!r}.{hint} "
                      "Check --config.data.name.")
  if "Unknown split" in str(error):
    return ValueError(f"tfds data set {name!r}: {error} Set "
                      "--config.data.split (or eval_split).")
  build = (f"tfds build {base_name} --data_dir={root} "
           "--file_format=array_record")
  if base_name.startswith("imagenet"):
    build += " --manual_dir=<folder with the downloaded ImageNet tars>"
  # <name>/<version>/ or <name>/<config>/<version>/, finished.
  prepared = base_name in in_root and any(
      info for pattern in ("*/dataset_info.json", "*/*/dataset_info.json")
      for info in (root / base_name).glob(pattern))
  if not prepared:
    return FileNotFoundError(
        f"tfds data set {name!r} is not prepared in {root}.\n"
        f"Build it once: {build}")
  if isinstance(error, NotImplementedError):  # tfds: no random access
    return FileNotFoundError(
        f"tfds data set {name!r} in {root} is not stored as array_record, "
        f"which reading by index needs.\nRebuild it: {build}")
  cause = (str(error).splitlines() or [type(error).__name__])[0]
  return FileNotFoundError(f"tfds data set {name!r} in {root} cannot be "
                           f"opened: {cause}\nRebuild it: {build}")


class TfdsSource:
  """Any tfds image data set through tfds' random-access `data_source`.

  Random access needs the array_record file format (tfds' default for new
  builds of many data sets; ImageNet must be built with it, see the error).
  Records are read as bytes and the image decoded with PIL, like the folder's
  files: no TensorFlow in the loop, and the same decoding in both sources.
  """
  in_memory = False

  def __init__(self, name: str, split: str, data_dir: str,
               retries: Retries = Retries()):
    self._args = (name, split, data_dir, retries)
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
      self._data = tfds.data_source(
          name, split=split, data_dir=data_dir or None, download=False,
          deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    except (tfds.core.registered.DatasetNotFoundError, NotImplementedError,
            AssertionError, FileNotFoundError, KeyError, ValueError) as e:
      raise _tfds_error(name, data_dir, e) from e
    self._name = f"{name}[{split}]"
    self._features = self._data.dataset_info.features
    if "image" not in self._features:
      raise ValueError(f"tfds data set {name!r} has no 'image' feature "
                       f"(it has {', '.join(self._features)}); use an image "
                       "classification data set")
    self._has_label = "label" in self._features
    self.num_classes = (self._features["label"].num_classes
                        if self._has_label else 0)
    self._decoders = {"image": tfds.decode.SkipDecoding()}  # keep the bytes
    self._retries = retries

  def __getstate__(self):
    # A worker process opens the data set itself, from its files: the
    # builder class may live in a script that the worker cannot import.
    return self._args

  def __setstate__(self, args):
    self.__init__(*args)

  def __len__(self) -> int:
    return len(self._data)

  def __getitem__(self, index: int) -> Example:
    where = f"{self._name} record {index}"
    record = read_with_retries(lambda: self._data[index], where,
                               self._retries)
    try:
      example = self._features.deserialize_example_np(
          record, decoders=self._decoders)
    except Exception as e:  # pylint: disable=broad-except
      raise CorruptImageError(where, e) from e
    label = int(example["label"]) if self._has_label else 0
    return Example(decode_image(example["image"], where), label)


def open_source(data_config: ml_collections.ConfigDict, split: str,
                image_size: int) -> Source:
  """The source that `data_config.source` names, for `split`."""
  kind = data_config.source
  if kind == "tfds":
    return TfdsSource(data_config.name, split, data_config.data_dir)
  if kind == "folder":
    return FolderSource(data_config.data_dir, split)
  if kind == "digits":
    return DigitsSource(split, image_size)
  if kind == "synthetic":
    return SyntheticSource(image_size)
  raise ValueError(f"data.source={kind!r}; use one of 'tfds', 'folder', "
                   "'digits', 'synthetic'")
