"""Metric writers: TensorBoard + console from clu, and a JSON-lines file.

`metrics.jsonl` holds one JSON object per summary ({"step": ..., "train/loss":
...}), which anyone can grep or load with pandas. Only process 0 writes.
"""

import json
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers
from etils import epath


class JsonlWriter(metric_writers.MetricWriter):
  """Writes each `write_scalars` call as one line of `path`.

  Local files are appended to; object stores (gs://) cannot append, so there
  the file is rewritten whole at each flush (it holds a few thousand lines).
  """

  def __init__(self, path: str):
    self._path = epath.Path(path)
    self._local = self._path.is_absolute() and "://" not in path
    self._lines: list[str] = []
    if self._local:
      self._file = open(path, "a", encoding="utf-8")
    elif self._path.exists():
      self._lines = self._path.read_text().splitlines()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {"step": int(step)}
    record.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    line = json.dumps(record)
    if self._local:
      self._file.write(line + "\n")
    else:
      self._lines.append(line)
    self.flush()

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_images(self, step, images):
    del step, images  # figures go to TensorBoard and to PNG files

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    if self._local:
      self._file.flush()
    else:
      self._path.write_text("".join(line + "\n" for line in self._lines))

  def close(self):
    self.flush()
    if self._local:
      self._file.close()


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard, console and metrics.jsonl on process 0; console elsewhere."""
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(workdir, just_logging=True)
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(workdir, asynchronous=False),
      JsonlWriter(str(epath.Path(workdir) / "metrics.jsonl")),
  ])
