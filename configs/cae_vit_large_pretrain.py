"""CAE ViT-Large/16 pretraining on ImageNet-1k, the paper's recipe (CAE §5.2;
Atten4Vis/CAE scripts/cae_large_1600e.sh).

  python -m mae_jax.main --config=configs/cae_vit_large_pretrain.py:1600 \
      --workdir=gs://BUCKET/cae_large --config.data.data_dir=gs://BUCKET/tfds \
      --config.model.tokenizer_path=gs://BUCKET/dalle

As the official script means it: layer scale 1e-5, a regressor and decoder
of the encoder's width (1024) and heads (16), BEiT's init
(`--fix_init_weight`). The script loses those last three flags to a missing
line continuation and so runs a 768-wide, 12-head decoder with xavier init
instead; that slip is not copied. The argument after ':' is the length:
300, 800 or 1600 (the default) epochs.
"""

from configs import common


def get_config(epochs: str = "1600"):
  config = common.cae_pretrain_config("large/16", epochs)
  config.model.weight_init = "beit"
  return config
