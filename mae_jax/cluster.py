"""Which processes make up a run, and how they connect.

One process per host: on the hosts of a TPU slice, `jax.distributed` finds
the others itself; elsewhere (GPU or CPU clusters, the tests) the command
line names them. The decision (`process_setup`) rests on public signals only:
the TPU device files, libtpu, and the slice's host list that libtpu and jax
read too (TPU_WORKER_HOSTNAMES, or the VM's metadata server). Where a TPU
host's slice cannot be told, it fails rather than guess.
"""

import contextlib
import glob
import importlib.util
import os
import socket
import threading
from typing import Callable, Mapping
import urllib.request

import jax

from mae_jax import cli

# Device files through which libtpu drives TPU chips: /dev/accel* (TPU v2-v4),
# /dev/vfio/<n> (v5e and later). Google's TPU VM documentation names them.
_TPU_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*")
# The metadata server of a Cloud TPU VM lists the slice's hosts here.
_WORKERS_METADATA_URL = ("http://metadata.google.internal/computeMetadata/v1/"
                         "instance/attributes/worker-network-endpoints")
# How long a process waits for all the others to connect. jax's own limit is
# set beyond it: when jax's runs out, it aborts the process (SIGABRT, a C++
# stack trace that says "another task died"); this one ends it with the fix.
JOIN_TIMEOUT_S = 300


def on_tpu_host() -> bool:
  """Whether this machine has TPU chips that JAX will use: their device files
  exist and libtpu is installed."""
  chips = any(glob.glob(pattern) for pattern in _TPU_DEVICE_FILES)
  return chips and importlib.util.find_spec("libtpu") is not None


def _read_workers_metadata() -> str | None:
  """The slice's host list from the metadata server; None if unreachable."""
  request = urllib.request.Request(_WORKERS_METADATA_URL,
                                    headers={"Metadata-Flavor": "Google"})
  for _ in range(3):
    try:
      with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()
    except OSError:
      continue
  return None


def tpu_worker_count(environ: Mapping[str, str],
                     read_metadata: Callable[[], str | None]) -> int | None:
  """How many hosts the TPU slice has, from what libtpu and jax read too:
  TPU_WORKER_HOSTNAMES (GKE sets it), else the metadata server's
  worker-network-endpoints (Cloud TPU VMs); None if neither says."""
  hosts = environ.get("TPU_WORKER_HOSTNAMES") or read_metadata()
  if not hosts or not hosts.strip():
    return None
  return len(hosts.strip().split(","))


def process_setup(coordinator_address: str | None, num_processes: int | None,
                  process_id: int | None, tpu_host: bool,
                  tpu_workers: int | None) -> str:
  """How this process joins the run: 'alone', 'explicit' (the flags name the
  others) or 'tpu_slice' (the hosts of a TPU slice, which jax.distributed
  finds itself).

  On a TPU host whose slice cannot be told, this raises rather than guess:
  a guess of 'alone' on a pod would have every host train on its own into
  the same workdir.
  """
  explicit = {"--coordinator_address": coordinator_address,
              "--num_processes": num_processes, "--process_id": process_id}
  if num_processes == 1 and coordinator_address is None and not process_id:
    return "alone"
  if any(v is not None for v in explicit.values()):
    missing = [name for name, v in explicit.items() if v is None]
    if missing:
      raise ValueError(
          f"{', '.join(missing)} missing: --coordinator_address, "
          "--num_processes and --process_id go together (every process gets "
          "the same address and count, and its own id)")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in 0.."
                           f"{num_processes - 1} (--num_processes="
                           f"{num_processes})")
    return "explicit"
  if not tpu_host:
    return "alone"
  if tpu_workers is None:
    raise ValueError(
        "this machine has TPU chips, but how many hosts its slice has cannot "
        "be read (no TPU_WORKER_HOSTNAMES, no answer from the metadata "
        "server). On a single-host TPU pass --num_processes=1; on a pod, "
        "--coordinator_address, --num_processes and --process_id.")
  return "alone" if tpu_workers == 1 else "tpu_slice"


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None):
  """Connects this process to the others of the run, if there are others
  (see `process_setup`). Must come before any other JAX call. On CPU,
  collectives between processes go through gloo (TCP)."""
  tpu_host = on_tpu_host()
  setup = process_setup(
      coordinator_address, num_processes, process_id, tpu_host,
      tpu_worker_count(os.environ, _read_workers_metadata) if tpu_host
      else None)
  if setup == "alone":
    return
  # gloo is the default in jax 0.10; set explicitly because without a CPU
  # collectives implementation, cross-process collectives on CPU fail.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax_timeout_s = JOIN_TIMEOUT_S + 60
  if setup == "tpu_slice":
    try:
      with _join_watchdog("the hosts of this TPU slice"):
        # jax reads the slice's hosts itself.
        jax.distributed.initialize(initialization_timeout=jax_timeout_s)
    except ValueError as e:
      raise RuntimeError(
          f"jax could not find the other hosts of this TPU slice ({e}); pass "
          "--coordinator_address, --num_processes and --process_id") from e
  else:
    if process_id == 0:
      _check_coordinator_port_is_free(coordinator_address)
    with _join_watchdog(
        f"the {num_processes} processes of the run (--num_processes="
        f"{num_processes}, --coordinator_address={coordinator_address})"):
      jax.distributed.initialize(coordinator_address, num_processes,
                                 process_id,
                                 initialization_timeout=jax_timeout_s)


def _check_coordinator_port_is_free(address: str):
  """Fails if another process listens on process 0's coordinator port.

  The coordination service binds with SO_REUSEPORT, so a second run (or a
  second process given --process_id=0) on the same port would start anyway,
  and the two runs' processes would knock each other out with an abort.
  (SO_REUSEADDR: a port whose last run's connections linger is free.)
  """
  port = int(address.rpartition(":")[2])
  with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET,
                     socket.SOCK_STREAM) as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      probe.bind(("", port))
    except OSError as e:
      raise RuntimeError(
          f"--coordinator_address={address}: port {port} is in use on this "
          f"host ({e.strerror}), by another run or another process with "
          "--process_id=0. Give every process of this run another, free "
          "port.") from e


@contextlib.contextmanager
def _join_watchdog(who: str):
  """Ends the process with a clear error if the block (connecting to the
  others) takes over JOIN_TIMEOUT_S: the main thread is inside jax's C++
  call and cannot be interrupted, so a watchdog thread ends the process."""
  done = threading.Event()

  def watch():
    if not done.wait(JOIN_TIMEOUT_S):
      cli.exit_with_error(
          f"{who} did not all connect within {JOIN_TIMEOUT_S} s. Start the "
          "same command on every host of the run, each with its own "
          "--process_id (0 on the coordinator's host), and check that the "
          "coordinator's host and port are reachable from every host.")

  threading.Thread(target=watch, daemon=True).start()
  try:
    yield
  finally:
    done.set()
