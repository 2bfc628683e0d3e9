"""Fine-tuning of the demo's encoder on the digits, minutes on a CPU.

  python -m mae_jax.main --config=configs/demo_finetune.py \
      --workdir=workdirs/demo_finetune --config.init_from=workdirs/demo

Without --config.init_from the model trains from a random initialisation.
"""

from configs import common
from configs import demo


def get_config():
  # The ViT-B recipe's shape; the schedule is set in steps below.
  config = common.finetune_config("tiny/4", epochs=1, base_lr=1e-3,
                                  layer_decay=0.75, drop_path_rate=0.1)
  demo.adapt_classifier(config)
  config.augment.mix_group_size = 16  # divides the batch on up to 8 devices
  common.in_steps(config, total=400, warmup=40)
  config.checkpoint_every_steps = 200
  return config
