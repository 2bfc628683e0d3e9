"""MAE ViT-Huge/14 pretraining on ImageNet-1k, the paper's recipe (MAE A.1).

  python -m mae_jax.main --config=configs/mae_vit_huge_pretrain.py \
      --workdir=gs://BUCKET/mae_huge --config.data.data_dir=gs://BUCKET/tfds
"""

from configs import common


def get_config():
  config = common.pretrain_config("huge/14")
  return config
