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
  demo.adapt_classifier(config)
  common.in_steps(config, total=600, warmup=60)
  config.optimizer.base_lr = 4.0
  config.checkpoint_every_steps = 300
  return config
