"""k-NN accuracy of the demo's encoder on the digits, seconds on a CPU.

  python -m mae_jax.main --config=configs/demo_knn.py \
      --workdir=workdirs/demo_knn --config.init_from=workdirs/demo

The 1497 training digits are the bank, the 300 test digits the queries.
Without --config.init_from the encoder is random: the baseline.
"""

from configs import common
from configs import demo


def get_config():
  config = common.knn_config("tiny/4")
  pretrain = demo.get_config()
  config.model.update(
      {k: v for k, v in pretrain.model.items() if k in config.model})
  config.data.update(source="digits", name="digits", split="train",
                     eval_split="test")
  config.knn.batch_size = pretrain.knn.batch_size
  return config
