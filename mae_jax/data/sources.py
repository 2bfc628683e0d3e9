"""Random-access image sources: tfds, an image folder, digits, synthetic.

Every source is indexable (`len`, `source[i]`), which is what makes the input
pipeline a pure function of (seed, step): no stream position to lose, so a
resumed run reads exactly the examples an uninterrupted one would.
"""

import dataclasses
import io
from typing import Protocol

import ml_collections
import numpy as np
from etils import epath

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclasses.dataclass(frozen=True)
class Example:
  image: np.ndarray  # (H, W, 3) uint8
  label: int


class CorruptImageError(ValueError):
  """An image that cannot be decoded; `where` names the file or record."""

  def __init__(self, where: str, cause: Exception):
    super().__init__(f"cannot decode image {where}: {cause}")
    self.where = where


class Source(Protocol):
  num_classes: int

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
  be a local path or a gs:// URL.
  """

  def __init__(self, root: str, split: str):
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
    self._files, labels = [], []
    for label, name in enumerate(classes):
      for path in sorted((directory / name).iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
          self._files.append(path)
          labels.append(label)
    if not self._files:
      raise FileNotFoundError(
          f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders of "
          f"{directory}; expected {directory}/<class name>/<images>")
    self._labels = np.asarray(labels, np.int32)
    self.classes = classes
    self.num_classes = len(classes)

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> Example:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    path = self._files[index]
    try:
      with Image.open(io.BytesIO(path.read_bytes())) as image:
        pixels = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:  # what PIL raises
      raise CorruptImageError(str(path), e) from e
    return Example(pixels, int(self._labels[index]))


class TfdsSource:
  """Any tfds image data set through tfds' random-access `data_source`.

  Random access needs the array_record file format (tfds' default for new
  builds of many data sets; ImageNet must be built with it, see the error).
  """

  def __init__(self, name: str, split: str, data_dir: str):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    how_to_build = (
        f"build it once with `tfds build {name} --data_dir={data_dir or '~/tensorflow_datasets'}"
        " --file_format=array_record` (ImageNet: add --manual_dir=<folder "
        "with the downloaded tars>)")
    try:
      self._data = tfds.data_source(name, split=split,
                                    data_dir=data_dir or None, download=False)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise ValueError(f"tfds has no data set named {name!r}; check "
                       "--config.data.name") from e
    except (NotImplementedError, AssertionError, FileNotFoundError,
            ValueError) as e:
      raise FileNotFoundError(
          f"tfds data set {name!r} (split {split!r}) cannot be read randomly "
          f"from data_dir={data_dir!r}.\ntfds says: {e}\nTo fix: "
          f"{how_to_build}.") from e
    self._name = name
    features = self._data.dataset_info.features
    self._has_label = "label" in features
    self.num_classes = (features["label"].num_classes if self._has_label
                        else 0)

  def __len__(self) -> int:
    return len(self._data)

  def __getitem__(self, index: int) -> Example:
    try:
      record = self._data[index]
    except Exception as e:  # tfds decode errors have no common type
      raise CorruptImageError(f"{self._name}[{index}]", e) from e
    label = int(record["label"]) if self._has_label else 0
    return Example(_as_rgb(record["image"]), label)


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
