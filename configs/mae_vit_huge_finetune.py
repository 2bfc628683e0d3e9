"""Fine-tuning of a MAE ViT-H/14 on ImageNet-1k (paper: 86.9% top-1 at 224,
87.8% at 448: --config.model.image_size=448).

  python -m mae_jax.main --config=configs/mae_vit_huge_finetune.py \
      --workdir=DIR --config.init_from=PRETRAIN_WORKDIR

Partial fine-tuning of the last k blocks: --config.trainable_blocks=k.
"""

from configs import common


def get_config():
  return common.finetune_config("huge/14", epochs=50, base_lr=1e-3,
                                layer_decay=0.75, drop_path_rate=0.3)
