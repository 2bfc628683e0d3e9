"""The input pipeline's img/s, as `mae_jax.benchmark --input_only` prints it."""

from configs import common
from mae_jax.data import throughput


def test_images_per_second_times_the_configs_training_pipeline():
  config = common.data_config(source="digits", split="train", num_workers=-1,
                              num_threads=2)
  result = throughput.images_per_second(config, batch_size=8, image_size=16,
                                        steps=3, warmup=1)
  assert result["data"] == "digits"
  assert result["workers"] == 0  # in-memory digits need no worker processes
  assert result["threads"] == 2
  assert (result["batch"], result["image_size"]) == (8, 16)
  assert result["img_per_s"] > 0 and result["warmup_s"] > 0
