"""Attentive probe of a MAE ViT-B/16 on ImageNet-1k (CAE paper: 74.2% top-1).

  python -m mae_jax.main --config=configs/mae_vit_base_attentive_probe.py \
      --workdir=DIR --config.init_from=PRETRAIN_WORKDIR
"""

from configs import common


def get_config():
  return common.attentive_probe_config("base/16")
