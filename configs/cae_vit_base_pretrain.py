"""CAE ViT-Base/16 pretraining on ImageNet-1k, the paper's recipe (CAE §5.2;
Atten4Vis/CAE scripts/cae_base_800e.sh).

  python -m mae_jax.convert --src=encoder.pkl --dst=gs://BUCKET/dalle  # once
  python -m mae_jax.main --config=configs/cae_vit_base_pretrain.py:800 \
      --workdir=gs://BUCKET/cae_base --config.data.data_dir=gs://BUCKET/tfds \
      --config.model.tokenizer_path=gs://BUCKET/dalle

The argument after ':' is the length: 300, 800 (the default) or 1600 epochs,
with 10, 20 or 40 of warm-up. Pixel targets instead of DALL-E tokens (no
tokenizer): --config.model.target=pixels --config.data.second_view_size=0.
"""

from configs import common


def get_config(epochs: str = "800"):
  return common.cae_pretrain_config("base/16", epochs)
