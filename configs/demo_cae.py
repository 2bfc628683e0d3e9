"""The offline CAE demo: a tiny CAE on scikit-learn's digits with pixel
targets, minutes on a CPU.

  python -m mae_jax.main --config=configs/demo_cae.py \
      --workdir=workdirs/demo_cae

Its encoder has the MAE demo's sizes, so the demo's classifiers take it:
  python -m mae_jax.main --config=configs/demo_linear_probe.py \
      --workdir=workdirs/demo_cae_linear_probe \
      --config.init_from=workdirs/demo_cae
(they adopt its layer scale, q/v biases and sin-cos order from the
checkpoint). The ablation without alignment: --config.model.align_weight=0.
"""

from configs import common
from configs import demo


def get_config():
  config = common.cae_pretrain_config("tiny/4", 300)
  mae_demo = demo.get_config()
  config.model.update(
      {k: mae_demo.model[k] for k in demo.ENCODER_SIZE_FIELDS},
      # One block each: the recipe's 4 + 4 per 12 encoder blocks, scaled to
      # the demo's 4.
      regressor_depth=1, decoder_depth=1,
      decoder_num_heads=mae_demo.model.num_heads, target="pixels",
      norm_pix_loss=mae_demo.model.norm_pix_loss)
  config.data = mae_demo.data
  config.data.second_view_size = 0
  config.batch_size = mae_demo.batch_size
  common.in_steps(config, total=mae_demo.total_steps,
                  warmup=mae_demo.warmup_steps)
  config.optimizer.base_lr = 1e-3  # not scaled by the batch, as CAE's
  for name in ("log_every_steps", "checkpoint_every_steps",
               "figure_every_steps", "knn_every_steps", "knn"):
    config[name] = mae_demo[name]
  return config
