"""How fast the input pipeline makes training batches on this host.

What `python -m mae_jax.benchmark --input_only` and
`benchmarks/input_pipeline.py` print: the training pipeline of a data config,
timed alone (no model), so that its img/s can be set against what the
accelerators consume.
"""

import os
import time

import ml_collections

from mae_jax.data import pipeline
from mae_jax.data import sources


def images_per_second(data_config: ml_collections.ConfigDict, *,
                      batch_size: int, image_size: int, steps: int = 20,
                      warmup: int = 3) -> dict:
  """Times `steps` batches of the training pipeline after `warmup` ones.

  The warm-up batches absorb the start of the worker processes; the timed
  ones include whatever the prefetch buffers held, so ask for many more
  steps than `data.prefetch_batches` to measure the steady rate.
  """
  if steps < 1 or warmup < 0:
    raise ValueError(f"steps={steps}, warmup={warmup}: time at least one "
                     "batch (steps >= 1) after warmup >= 0 untimed ones")
  source = sources.open_source(data_config, data_config.split, image_size)
  workers = pipeline.worker_processes(data_config, source)
  batches = pipeline.TrainPipeline(
      source, data_config, batch_size=batch_size, image_size=image_size,
      seed=0, start_step=0, local_device_count=1)
  try:
    start = time.perf_counter()
    for _ in range(warmup):
      next(batches)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
      next(batches)
    seconds = time.perf_counter() - start
  finally:
    batches.close()
  return {
      "data": f"{data_config.source}:{data_config.name}"
              if data_config.source == "tfds" else data_config.source,
      "workers": workers,
      "threads": pipeline.threads_per_process(data_config, workers),
      "batch": batch_size,
      "image_size": image_size,
      "img_per_s": steps * batch_size / seconds,
      "warmup_s": warmup_s,
      "cpus": os.cpu_count(),
  }
