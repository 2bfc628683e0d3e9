"""Fine-tuning of a MAE ViT-L/16 on ImageNet-1k (paper: 85.9% top-1).

  python -m mae_jax.main --config=configs/mae_vit_large_finetune.py \
      --workdir=DIR --config.init_from=PRETRAIN_WORKDIR

Partial fine-tuning of the last k blocks: --config.trainable_blocks=k.
"""

from configs import common


def get_config():
  return common.finetune_config("large/16", epochs=50, base_lr=1e-3,
                                layer_decay=0.75, drop_path_rate=0.2)
