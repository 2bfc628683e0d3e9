"""Command line: python -m mae_jax.main --config=configs/x.py --workdir=DIR.

Every config value can be overridden, e.g. `--config.batch_size=1024`; an
unknown key is an error. Running the same command again resumes from the
latest checkpoint in DIR.
"""

import logging as py_logging

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mae_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None,
                    "Directory for checkpoints, metrics and figures; the run "
                    "resumes from it (local path or gs://...).")
config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file; override fields with "
    "--config.<field>=<value>.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # orbax narrates every checkpoint at INFO; keep its warnings only.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= py_logging.WARNING or "/orbax/" not in r.pathname)
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  logging.info("Config:\n%s", FLAGS.config)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
