import socket

import pytest

from mae_jax import cluster


def _never_called():
  raise AssertionError("the metadata server must not be asked")


@pytest.mark.parametrize("flags, tpu_host, workers, expected", [
    # A CPU or GPU machine without flags runs alone.
    ((None, None, None), False, None, "alone"),
    # The flags name the others, on any machine.
    (("host:1234", 2, 1), False, None, "explicit"),
    (("host:1234", 2, 0), True, 4, "explicit"),
    # The hosts of a TPU slice find each other; a single host runs alone.
    ((None, None, None), True, 4, "tpu_slice"),
    ((None, None, None), True, 1, "alone"),
    # --num_processes=1 runs alone where the slice cannot be told.
    ((None, 1, None), True, None, "alone"),
])
def test_process_setup(flags, tpu_host, workers, expected):
  assert cluster.process_setup(*flags, tpu_host, workers) == expected


def test_a_tpu_host_whose_slice_cannot_be_told_is_an_error():
  # Guessing 'alone' on a pod would have every host train on its own into
  # the same workdir.
  with pytest.raises(ValueError, match="TPU chips.*--num_processes=1"):
    cluster.process_setup(None, None, None, tpu_host=True, tpu_workers=None)


@pytest.mark.parametrize("flags, message", [
    (("host:1234", None, None), "--num_processes, --process_id missing"),
    (("host:1234", 2, 2), "--process_id=2 must be in 0..1"),
])
def test_incomplete_flags_name_the_fix(flags, message):
  with pytest.raises(ValueError, match=message):
    cluster.process_setup(*flags, tpu_host=False, tpu_workers=None)


def test_worker_count_from_the_environment_or_the_metadata_server():
  env = {"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1,t1k-w-2,t1k-w-3"}
  assert cluster.tpu_worker_count(env, _never_called) == 4
  # Cloud TPU VMs: name:id:ip triples, or host names.
  assert cluster.tpu_worker_count(
      {}, lambda: "a:0:10.0.0.2,b:1:10.0.0.3") == 2
  assert cluster.tpu_worker_count({}, lambda: "10.0.0.2") == 1
  assert cluster.tpu_worker_count({}, lambda: None) is None
  assert cluster.tpu_worker_count({}, lambda: " ") is None


def test_a_coordinator_port_in_use_is_refused_before_connecting():
  # The coordination service listens with SO_REUSEPORT, as another run's
  # would: jax would start a second service on the same port.
  with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as listener:
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("", 0))
    listener.listen()
    port = listener.getsockname()[1]
    with pytest.raises(RuntimeError, match=f"port {port} is in use on this "
                       "host .*another process with --process_id=0"):
      cluster.initialize(f"localhost:{port}", 2, 0)
