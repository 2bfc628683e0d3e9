"""Small configs shared by the tests."""

import ml_collections

from configs import common


def tiny_model(**overrides) -> ml_collections.ConfigDict:
  """A 16x16-image MAE with 16 patches: compiles in seconds on a CPU."""
  fields = dict(image_size=16, width=32, depth=2, num_heads=2, mlp_dim=64,
                decoder_width=32, decoder_depth=1, decoder_num_heads=2,
                decoder_mlp_dim=64, dtype="float32")
  fields.update(overrides)
  return common.mae_model("tiny/4", **fields)


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """A pretraining run on digits that takes a few seconds."""
  config = common.pretrain_config("tiny/4")
  config.model = tiny_model()
  config.data.update(source="digits", split="train", crop_scale=(0.5, 1.0),
                     num_workers=2)
  config.batch_size = 16
  config.total_steps = 6
  config.warmup_steps = 2
  config.optimizer.base_lr = 1e-3
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  config.figure_every_steps = 3
  config.figure_images = 2
  config.update(overrides)
  return config
