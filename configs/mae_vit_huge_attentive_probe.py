"""Attentive probe of a MAE ViT-H/14 on ImageNet-1k (no published figure).

  python -m mae_jax.main --config=configs/mae_vit_huge_attentive_probe.py \
      --workdir=DIR --config.init_from=PRETRAIN_WORKDIR
"""

from configs import common


def get_config():
  return common.attentive_probe_config("huge/14")
