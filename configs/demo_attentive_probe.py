"""Attentive probe of the demo's encoder on the digits, minutes on a CPU.

  python -m mae_jax.main --config=configs/demo_attentive_probe.py \
      --workdir=workdirs/demo_attentive_probe --config.init_from=workdirs/demo

Without --config.init_from the encoder is random: the baseline that shows
what pretraining adds.
"""

from configs import common
from configs import demo


def get_config():
  config = common.attentive_probe_config("tiny/4")
  demo.adapt_classifier(config)
  common.in_steps(config, total=600, warmup=60)
  config.checkpoint_every_steps = 300
  return config
