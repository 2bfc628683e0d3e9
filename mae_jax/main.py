"""Command line: python -m mae_jax.main --config=configs/x.py --workdir=DIR.

Every config value can be overridden, e.g. `--config.batch_size=1024`; an
unknown key is an error. Running the same command again resumes from the
latest checkpoint in DIR.

Several processes (one per host of a TPU pod) run the same command. On Cloud
TPU VMs they find each other on their own; elsewhere (a GPU or CPU cluster,
the tests) each is told `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`, with the address of process 0.
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

from mae_jax import train

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
                     "--coordinator_address).")
flags.DEFINE_integer("process_id", None,
                     "This process's index in 0..num_processes-1 (with "
                     "--coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])


def _on_cloud_tpu_vm() -> bool:
  """True on a Cloud TPU VM, where `jax.distributed` reads the slice's hosts
  from the metadata server. jax sets this flag when it is imported, from the
  TPU chips it sees on the PCI bus."""
  from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def initialize_distributed(coordinator_address: str | None,
                           num_processes: int | None,
                           process_id: int | None,
                           on_cloud_tpu_vm: bool) -> bool:
  """Connects this process to the others of the run, if there are others.

  Must come before any other JAX call. Returns whether `jax.distributed` was
  initialised. On CPU, collectives between processes go through gloo (TCP).
  """
  explicit = {"--coordinator_address": coordinator_address,
              "--num_processes": num_processes, "--process_id": process_id}
  if any(v is not None for v in explicit.values()):
    missing = [name for name, v in explicit.items() if v is None]
    if missing:
      raise app.UsageError(
          f"{', '.join(missing)} missing: --coordinator_address, "
          "--num_processes and --process_id go together (every process gets "
          "the same address and count, and its own id)")
    if not 0 <= process_id < num_processes:
      raise app.UsageError(f"--process_id={process_id} must be in 0.."
                           f"{num_processes - 1} (--num_processes="
                           f"{num_processes})")
  elif not on_cloud_tpu_vm:
    return False  # one process: nothing to connect
  # gloo is the default in jax 0.10; set explicitly because without a CPU
  # collectives implementation, cross-process collectives on CPU fail.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  return True


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                         FLAGS.process_id, _on_cloud_tpu_vm())
  # orbax narrates every checkpoint at INFO; keep its warnings only.
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= py_logging.WARNING or "/orbax/" not in r.pathname)
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  logging.info("Config:\n%s", FLAGS.config)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
