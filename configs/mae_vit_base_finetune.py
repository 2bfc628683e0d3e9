"""Fine-tuning of a MAE ViT-B/16 on ImageNet-1k (paper: 83.6% top-1).

  python -m mae_jax.main --config=configs/mae_vit_base_finetune.py \
      --workdir=DIR --config.init_from=PRETRAIN_WORKDIR

Partial fine-tuning of the last k blocks: --config.trainable_blocks=k.
"""

from configs import common


def get_config():
  return common.finetune_config("base/16", epochs=100, base_lr=5e-4,
                                layer_decay=0.65, drop_path_rate=0.1)
