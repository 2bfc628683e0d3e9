"""MAE ViT-Base/16 pretraining on ImageNet-1k, the paper's recipe (MAE A.1).

  python -m mae_jax.main --config=configs/mae_vit_base_pretrain.py \
      --workdir=gs://BUCKET/mae_base --config.data.data_dir=gs://BUCKET/tfds
"""

from configs import common


def get_config():
  config = common.pretrain_config("base/16")
  return config
