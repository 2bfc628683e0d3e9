"""Linear probe of the demo's encoder on the digits, minutes on a CPU.

  python -m mae_jax.main --config=configs/demo_linear_probe.py \
      --workdir=workdirs/demo_linear_probe --config.init_from=workdirs/demo

Without --config.init_from the encoder is random: the baseline that shows
what pretraining adds.
"""

from configs import common
from configs import demo


def get_config():
  config = common.linear_probe_config("tiny/4")
  pretrain = demo.get_config()
  config.model.update(
      {k: v for k, v in pretrain.model.items() if k in config.model},
      num_classes=10)
  config.data.update(source="digits", name="digits", split="train",
                     eval_split="test", crop_scale=(0.5, 1.0),
                     horizontal_flip=False)
  config.batch_size = 128
  config.total_steps = 600
  config.warmup_steps = 60
  config.optimizer.base_lr = 4.0
  config.log_every_steps = 50
  config.checkpoint_every_steps = 300
  config.eval_every_steps = 200
  return config
