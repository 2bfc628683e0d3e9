"""Metric writers: TensorBoard + console from clu, and a JSON-lines file.

`metrics.jsonl` holds one JSON object per summary ({"step": ..., "train/loss":
...}), which anyone can grep or load with pandas. Only process 0 writes.
"""

import json
import os
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np
from clu import metric_writers
from etils import epath


def _rows_up_to(lines: list[str], step: int) -> list[str]:
  """The lines of `step` and before; a line that is not a JSON object with
  a step (cut short by a kill) is dropped too."""
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      continue
  return kept


def _can_append(path: str) -> bool:
  """Local files can be appended to; objects in a bucket (gs://) cannot."""
  return "://" not in path


class JsonlWriter(metric_writers.MetricWriter):
  """Writes each `write_scalars` call as one line of `path`.

  Local files are appended to; object stores (gs://) cannot append, so there
  the file is rewritten whole at each flush (it holds a few thousand lines).

  `resumed_at`: the step a run resumes from. A run killed after its last
  checkpoint had logged steps past it, which the resumed run logs again:
  their rows are dropped first, so every step has one row.
  """

  def __init__(self, path: str, resumed_at: int | None = None):
    self._path = epath.Path(path)
    self._local = _can_append(path)
    lines = (self._path.read_text().splitlines() if self._path.exists()
             else [])
    self._lines = lines if resumed_at is None else _rows_up_to(lines,
                                                               resumed_at)
    if len(self._lines) < len(lines):
      logging.info("%s: dropped %d rows past step %d, which the resumed run "
                   "writes again.", path, len(lines) - len(self._lines),
                   resumed_at)
      self._rewrite()
    if self._local:
      self._lines = []  # appended to the file as they come
      self._file = open(path, "a", encoding="utf-8")

  def _rewrite(self):
    """Writes `self._lines` as the whole file (locally, atomically)."""
    text = "".join(line + "\n" for line in self._lines)
    if not self._local:
      self._path.write_text(text)
      return
    partial = f"{self._path}.partial"
    with open(partial, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(partial, self._path)

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
      self._rewrite()

  def close(self):
    self.flush()
    if self._local:
      self._file.close()


def create_writer(workdir: str, resumed_at: int | None = None
                  ) -> metric_writers.MetricWriter:
  """TensorBoard, console and metrics.jsonl on process 0; console elsewhere.

  `resumed_at`: see `JsonlWriter`.
  """
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(workdir, just_logging=True)
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(workdir, asynchronous=False),
      JsonlWriter(str(epath.Path(workdir) / "metrics.jsonl"), resumed_at),
  ])
