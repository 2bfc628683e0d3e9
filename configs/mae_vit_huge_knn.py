"""Weighted k-NN (k=20) of a MAE ViT-H/14's frozen features on ImageNet-1k.

  python -m mae_jax.main --config=configs/mae_vit_huge_knn.py \
      --workdir=DIR --config.init_from=PRETRAIN_WORKDIR
"""

from configs import common


def get_config():
  return common.knn_config("huge/14")
