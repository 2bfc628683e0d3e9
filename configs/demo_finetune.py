"""Fine-tuning of the demo's encoder on the digits, minutes on a CPU.

  python -m mae_jax.main --config=configs/demo_finetune.py \
      --workdir=workdirs/demo_finetune --config.init_from=workdirs/demo

Without --config.init_from the model trains from a random initialisation.
"""

from configs import common
from configs import demo


def get_config():
  config = common.finetune_config("tiny/4", epochs=1, base_lr=1e-3,
                                  layer_decay=0.75, drop_path_rate=0.1)
  pretrain = demo.get_config()
  config.model.update(
      {k: v for k, v in pretrain.model.items() if k in config.model},
      num_classes=10)
  config.data.update(source="digits", name="digits", split="train",
                     eval_split="test", crop_scale=(0.5, 1.0),
                     horizontal_flip=False)
  config.batch_size = 128
  config.total_steps = 400
  config.warmup_steps = 40
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200
  config.eval_every_steps = 200
  return config
