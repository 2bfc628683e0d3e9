"""Command line: python -m mae_jax.main --config=configs/x.py --workdir=DIR.

Every config value can be overridden, e.g. `--config.batch_size=1024`; an
unknown key is an error. Running the same command again resumes from the
latest checkpoint in DIR.

Several processes (one per host of a TPU pod) run the same command. On the
hosts of a TPU slice they find each other on their own; elsewhere (a GPU or
CPU cluster, the tests) each is told `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`, with the address of process 0, and
`--num_processes=1` alone runs one process where that cannot be told.

A mistake in the input ends the run with a line saying what to do
(`mae_jax/cli.py`); `--verbosity=1` shows the traceback too.
"""

# pylint: disable=g-import-not-at-top,wrong-import-position
if __name__ == "__main__":
  # glibc's huge-page malloc (mae_jax/huge_pages.py) needs a re-execution,
  # done before the heavy imports, which the new process repeats.
  from mae_jax import huge_pages
  huge_pages.reexec_with_huge_page_malloc()

import logging as py_logging

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mae_jax import cli
from mae_jax import cluster

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None,
                    "Directory for checkpoints, metrics and figures; the run "
                    "resumes from it (local path or gs://...). With several "
                    "processes, one directory that all of them can reach.")
config_flags.DEFINE_config_file(
    "config", None, "A configs/*.py file; override fields with "
    "--config.<field>=<value>.", lock_config=True)
flags.DEFINE_string("coordinator_address", None,
                    "HOST:PORT of process 0, for a run of several processes "
                    "outside Cloud TPU (where they are found automatically).")
flags.DEFINE_integer("num_processes", None,
                     "How many processes run together (with "
                     "--coordinator_address); 1 alone: this process runs "
                     "alone, whatever the machine.")
flags.DEFINE_integer("process_id", None,
                     "This process's index in 0..num_processes-1 (with "
                     "--coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  # Imported here rather than at the top: the input pipeline's worker
  # processes (started by spawn) import this module again, and need none of
  # the trainer's libraries (TensorFlow alone is ~0.6 GB per worker).
  from mae_jax import train  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cluster.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                     FLAGS.process_id)
  # orbax narrates every checkpoint at INFO; keep its warnings only.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= py_logging.WARNING or "/orbax/" not in r.pathname)
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  logging.info("Config:\n%s", FLAGS.config)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run_absl(main)
