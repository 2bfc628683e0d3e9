"""Attentive probe of a MAE ViT-L/16 on ImageNet-1k (CAE repo: 78.8% top-1).

  python -m mae_jax.main --config=configs/mae_vit_large_attentive_probe.py \
      --workdir=DIR --config.init_from=PRETRAIN_WORKDIR
"""

from configs import common


def get_config():
  return common.attentive_probe_config("large/16")
