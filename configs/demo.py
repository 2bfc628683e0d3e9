"""The offline demo: a tiny MAE on scikit-learn's digits, minutes on a CPU.

  python -m mae_jax.main --config=configs/demo.py --workdir=workdirs/demo

Every 100 steps, the k-NN accuracy of the encoder's features on the 300 test
digits (the 1497 training digits as the bank) shows what the loss does not:
whether the features learn to tell the digits apart.
"""

from configs import common


def get_config():
  config = common.pretrain_config("tiny/4")
  config.model.update(
      image_size=32, width=128, depth=4, num_heads=4, mlp_dim=512,
      decoder_width=64, decoder_depth=2, decoder_num_heads=4,
      decoder_mlp_dim=256, norm_pix_loss=False)
  config.data.update(source="digits", name="digits", split="train",
                     eval_split="test", crop_scale=(0.5, 1.0),
                     horizontal_flip=False)
  config.batch_size = 128
  common.in_steps(config, total=1000, warmup=100)
  config.optimizer.base_lr = 1e-3
  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.figure_every_steps = 500
  config.knn_every_steps = 100
  config.knn.batch_size = 256
  return config


# The encoder's sizes, which a classifier of the demo's encoder copies (its
# options come from the init_from checkpoint: mae_jax/initialization.py).
ENCODER_SIZE_FIELDS = ("image_size", "patch_size", "width", "depth",
                       "num_heads", "mlp_dim", "layer_norm_eps")


def adapt_classifier(config):
  """A classifier config (probe or fine-tuning) -> the demo's encoder on digits,
  so that `--config.init_from=<demo workdir>` fits (demo.py's or
  demo_cae.py's)."""
  pretrain = get_config()
  config.model.update({k: pretrain.model[k] for k in ENCODER_SIZE_FIELDS},
                      num_classes=10)
  config.data.update(source="digits", name="digits", split="train",
                     eval_split="test", crop_scale=(0.5, 1.0),
                     horizontal_flip=False)
  config.batch_size = 128
  config.log_every_steps = 50
  config.eval_every_epochs, config.eval_every_steps = 0.0, 200
  return config
