"""Can the input pipeline feed a TPU host? Images/s of `TrainPipeline`.

Writes ImageNet-like data once (JPEGs of ~500x375, quality 90, made of crops
and rescales of scikit-learn's two sample photos, so that decoding costs what
natural images cost) as an image folder and as a tfds array_record copy, then
times the training pipeline on both (224 px, crop + flip) with 1 and 2
threads in one process and with 1 and 2 worker processes, in interleaved
rounds, and measures the share of an image's time that holds Python's GIL
(what limits threads). Prints one JSON line per measurement, then medians.

  python benchmarks/input_pipeline.py --data_dir=/tmp/bench_images --make_data
  python benchmarks/input_pipeline.py --data_dir=/tmp/bench_images
"""

import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image
from PIL import ImageFile
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from mae_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from mae_jax.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from mae_jax.data import sources  # pylint: disable=g-import-not-at-top,wrong-import-position
from mae_jax.data import throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

IMAGE_SIZE = (500, 375)  # ImageNet's median (width, height)
NUM_CLASSES = 8
TFDS_NAME = "bench_images"


def natural_jpegs(count: int, seed: int = 0):
  """(JPEG bytes, label) pairs: random crops of the two sample photos,
  rescaled to IMAGE_SIZE, some flipped, a few in portrait orientation."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  photos = datasets.load_sample_images().images  # two (427, 640, 3) photos
  rng = np.random.default_rng(seed)
  for i in range(count):
    photo = photos[i % len(photos)]
    height, width = photo.shape[:2]
    scale = rng.uniform(0.5, 1.0)
    crop_h, crop_w = int(height * scale), int(width * scale)
    top = rng.integers(0, height - crop_h + 1)
    left = rng.integers(0, width - crop_w + 1)
    size = IMAGE_SIZE if rng.random() < 0.8 else IMAGE_SIZE[::-1]
    image = Image.fromarray(photo[top:top + crop_h, left:left + crop_w])
    image = image.resize(size, Image.BICUBIC)
    if rng.random() < 0.5:
      image = image.transpose(Image.FLIP_LEFT_RIGHT)
    encoded = io.BytesIO()
    image.save(encoded, "JPEG", quality=90)
    yield encoded.getvalue(), i % NUM_CLASSES


class BenchImages(tfds.core.GeneratorBasedBuilder):
  """The benchmark's JPEGs as a tfds data set (array_record: random access)."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, count: int = 0, **kwargs):
    self._count = count
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, (jpeg, label) in enumerate(natural_jpegs(self._count)):
      # tfds re-encodes arrays; bytes of an encoded image are stored as is.
      yield i, {"image": io.BytesIO(jpeg), "label": label}


def make_data(data_dir: str, count: int):
  """`data_dir`/folder/train/<class>/*.jpg and `data_dir`/tfds/bench_images."""
  folder = os.path.join(data_dir, "folder", "train")
  for i, (jpeg, label) in enumerate(natural_jpegs(count)):
    os.makedirs(os.path.join(folder, f"class{label}"), exist_ok=True)
    with open(os.path.join(folder, f"class{label}", f"{i:05d}.jpg"), "wb") as f:
      f.write(jpeg)
  builder = BenchImages(count=count, data_dir=os.path.join(data_dir, "tfds"),
                        file_format="array_record")
  builder.download_and_prepare()
  # What the trainer does: random access by name, without the builder class.
  source = tfds.data_source(TFDS_NAME, split="train",
                            data_dir=os.path.join(data_dir, "tfds"))
  assert len(source) == count, (len(source), count)


def data_config(data_dir: str, kind: str, workers: int, threads: int):
  config = common.data_config(num_workers=workers, num_threads=threads)
  if kind == "folder":
    config.update(source="folder", data_dir=os.path.join(data_dir, "folder"))
  else:
    config.update(source="tfds", name=TFDS_NAME,
                  data_dir=os.path.join(data_dir, "tfds"))
  return config


class GilFreeTime:
  """Seconds spent inside the PIL calls that release the GIL while they
  work in C (decoding, mode conversion, resampling; Pillow's `decode.c`,
  `Convert.c`, `Resample.c`), counted once when they nest. Everything else
  an image costs holds the GIL, which makes the share an upper bound."""

  _CALLS = ((ImageFile.ImageFile, "load"), (Image.Image, "convert"),
            (Image.Image, "resize"))

  def __init__(self):
    self.seconds = 0.0
    self._depth = 0
    self._originals = []

  def _timed(self, function):
    def timed(*args, **kwargs):
      self._depth += 1
      start = time.perf_counter()
      try:
        return function(*args, **kwargs)
      finally:
        self._depth -= 1
        if not self._depth:
          self.seconds += time.perf_counter() - start
    return timed

  def __enter__(self):
    for owner, name in self._CALLS:
      original = getattr(owner, name)
      self._originals.append((owner, name, original))
      setattr(owner, name, self._timed(original))
    return self

  def __exit__(self, *exc):
    for owner, name, original in self._originals:
      setattr(owner, name, original)


def gil_share(config, image_size: int = 224, images: int = 256) -> dict:
  """One thread's time per image, and the part of it that holds the GIL:
  with N threads a process makes at most 1 / (GIL time) images/s."""
  source = sources.open_source(config, "train", image_size)
  batches = pipeline.TrainPipeline(
      source, config, batch_size=images, image_size=image_size, seed=0,
      start_step=0, local_device_count=1)
  try:
    batches.batch(0)  # files in the page cache, code warm
    with GilFreeTime() as free:
      start = time.perf_counter()
      batches.batch(1)
      total = time.perf_counter() - start
  finally:
    batches.close()
  held = total - free.seconds
  return {
      "measure": "gil",
      "ms_per_image": 1e3 * total / images,
      "gil_free_ms": 1e3 * free.seconds / images,
      "gil_held_ms": 1e3 * held / images,
      "gil_share": held / total,
      "one_thread_img_per_s": images / total,
      "thread_ceiling_img_per_s": images / held,
  }


def single_thread_loop(config, images: int, image_size: int = 224):
  """Batches of 32 computed in this thread, for a sampling profiler."""
  source = sources.open_source(config, "train", image_size)
  batches = pipeline.TrainPipeline(
      source, config, batch_size=32, image_size=image_size, seed=0,
      start_step=0, local_device_count=1)
  try:
    batches.batch(0)
    for step in range(1, 1 + images // 32):
      batches.batch(step)
  finally:
    batches.close()


def sampled_gil_share(data_dir: str, kind: str, images: int = 1280) -> dict:
  """The share of py-spy's samples of `single_thread_loop` in which the
  thread holds the GIL: two samplers attached to the same run, one keeping
  only GIL holders (`--gil`), one everything (`--idle`). No assumption
  about which calls release the GIL. Needs py-spy and ptrace."""
  loop = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), "--data_dir", data_dir,
       "--single_thread", kind, "--num_images", str(images)],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  with tempfile.TemporaryDirectory() as out:
    samplers = [subprocess.Popen(
        ["py-spy", "record", "--pid", str(loop.pid), "--nonblocking", mode,
         "--rate", "200", "--format", "raw", "-o", f"{out}/{mode[2:]}.txt"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for mode in ("--gil", "--idle")]
    loop.wait()
    counts = {}
    for sampler, mode in zip(samplers, ("gil", "idle")):
      sampler.wait()
      with open(f"{out}/{mode}.txt") as stacks:
        counts[mode] = sum(int(line.rsplit(" ", 1)[1]) for line in stacks
                           if "single_thread_loop" in line)
  return {"measure": "gil_sampled", "gil_share": counts["gil"] /
          counts["idle"], "samples": counts["idle"]}


# (worker processes, threads per process) to time.
SETTINGS = ((0, 1), (0, 2), (1, 1), (2, 1))


def main():
  parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--make_data", action="store_true",
                      help="write the images first")
  parser.add_argument("--num_images", type=int, default=512,
                      help="images to write, or to decode in --single_thread")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--steps", type=int, default=24)
  parser.add_argument("--rounds", type=int, default=3,
                      help="interleaved rounds; medians are reported")
  parser.add_argument("--py_spy", action="store_true",
                      help="also sample the GIL share with py-spy")
  parser.add_argument("--single_thread", choices=("folder", "tfds"),
                      help="only run the single-thread loop (for py-spy)")
  args = parser.parse_args()
  if min(args.steps, args.rounds, args.num_images, args.batch_size) < 1:
    parser.error("--steps, --rounds, --num_images and --batch_size must be "
                 "at least 1")
  if args.single_thread:
    single_thread_loop(data_config(args.data_dir, args.single_thread, 0, 1),
                       args.num_images)
    return
  if args.make_data:
    make_data(args.data_dir, args.num_images)
  elif not os.path.isdir(os.path.join(args.data_dir, "folder")):
    raise FileNotFoundError(f"--data_dir={args.data_dir} holds no benchmark "
                            "data; add --make_data to write it first")
  machine = {"cpus": os.cpu_count(), "processor": platform.processor()
             or platform.machine()}
  for kind in ("folder", "tfds"):
    print(json.dumps({"source": kind, **machine, **gil_share(
        data_config(args.data_dir, kind, 0, 1))}), flush=True)
    if args.py_spy:
      print(json.dumps({"source": kind, **sampled_gil_share(
          args.data_dir, kind)}), flush=True)
  rates = {}
  for _ in range(args.rounds):
    for kind in ("folder", "tfds"):
      for workers, threads in SETTINGS:
        result = throughput.images_per_second(
            data_config(args.data_dir, kind, workers, threads),
            batch_size=args.batch_size, image_size=224, steps=args.steps)
        rates.setdefault((kind, workers, threads), []).append(
            result["img_per_s"])
        print(json.dumps({"source": kind, **result}), flush=True)
  for (kind, workers, threads), values in rates.items():
    print(json.dumps({"measure": "median", "source": kind, "workers": workers,
                      "threads": threads,
                      "img_per_s": statistics.median(values),
                      "rounds": values}), flush=True)


if __name__ == "__main__":
  cli.run(main)
