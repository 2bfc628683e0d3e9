"""Linear probe of a MAE ViT-H/14 on ImageNet-1k (paper: 76.6% top-1).

  python -m mae_jax.main --config=configs/mae_vit_huge_linear_probe.py \
      --workdir=DIR --config.init_from=PRETRAIN_WORKDIR
"""

from configs import common


def get_config():
  return common.linear_probe_config("huge/14")
