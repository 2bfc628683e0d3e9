"""Decisions that every process of a run shares, with waits that end.

A failure on one process must stop all of them with its reason, and a
decision about the shared workdir (which checkpoint to restore, whether one
is damaged, who holds the lock) must be the same everywhere. A collective
(an all-gather) would wait forever for a process that failed or hangs; the
coordination service of `jax.distributed` has a key-value store whose reads
take a timeout, so here a missing process is named in an error instead.
(The client is reached through orbax's public `multihost` module.)

Every process must make the same calls in the same order: each call is
matched across processes by its position in that order. With one process
everything is local.
"""

import itertools
from typing import Callable

import jax
from orbax.checkpoint import multihost as ocp_multihost

# How long a process waits for the others at one decision. Generous: a
# process may be saving figures or compiling while the others wait.
TIMEOUT_S = 600

_calls = itertools.count()
# Errors that keep their type on the processes that receive them, so that
# the command line reports them alike everywhere.
_SHARED_TYPES = {t.__name__: t for t in (
    ValueError, FileNotFoundError, FloatingPointError, RuntimeError,
    TimeoutError, PermissionError)}


# A long message (tensorstore quotes whole specs) is cut to this length.
_MAX_MESSAGE = 1000


def describe(error: BaseException, causes: bool = True) -> str:
  """'Type: message', followed (with `causes`) by what caused it ('<- Type:
  message'), where the type is the nearest of _SHARED_TYPES it derives
  from."""
  parts = []
  while error is not None and len(parts) < (4 if causes else 1):
    name = next((t.__name__ for t in type(error).__mro__
                 if t.__name__ in _SHARED_TYPES), type(error).__name__)
    message = str(error)
    if len(message) > _MAX_MESSAGE:
      message = message[:_MAX_MESSAGE] + " [...]"
    parts.append(f"{name}: {message}")
    error = error.__cause__ or error.__context__
  return " <- ".join(parts)


def _rebuild(description: str) -> Exception:
  """The error `describe` described, as one of _SHARED_TYPES if it was."""
  name, _, message = description.partition(": ")
  if name in _SHARED_TYPES:
    return _SHARED_TYPES[name](message)
  return RuntimeError(description)


def _key(name: str) -> str:
  return f"mae_jax/{next(_calls)}/{name}"


def _get(client, key: str, process: int, name: str, timeout_s: float) -> str:
  try:
    return client.blocking_key_value_get(key, int(timeout_s * 1000))
  except Exception as e:  # pylint: disable=broad-except
    if "DEADLINE_EXCEEDED" in str(e):
      raise TimeoutError(
          f"{name}: process {process} did not report within {timeout_s:.0f} "
          f"s; it may have stopped or hung (see its log) ({e})") from e
    raise RuntimeError(
        f"{name}: lost the coordination service (run by process 0) while "
        f"waiting for process {process}; process 0 may have stopped (see its "
        f"log) ({e})") from e


def gather(name: str, value: str, timeout_s: float = TIMEOUT_S) -> list[str]:
  """Every process's `value` of this call, in process order."""
  if jax.process_count() == 1:
    return [value]
  client = ocp_multihost.get_jax_distributed_client()
  key = _key(name)
  client.key_value_set(f"{key}/{jax.process_index()}", value)
  return [_get(client, f"{key}/{process}", process, name, timeout_s)
          for process in range(jax.process_count())]


def gather_errors(name: str, error: BaseException | None,
                  timeout_s: float = TIMEOUT_S) -> list[str]:
  """Every process's `error` of this call, as 'process i: Type: message';
  empty when no process failed."""
  values = gather(name, "" if error is None else describe(error), timeout_s)
  return [f"process {process}: {value}"
          for process, value in enumerate(values) if value]


def raise_if_failed_anywhere(name: str, error: BaseException | None,
                             timeout_s: float = TIMEOUT_S):
  """Raises on every process if `error` is set on any: this process's own
  error where it has one, else a RuntimeError with the others'."""
  errors = gather_errors(name, error, timeout_s)
  if error is not None:
    raise error
  if errors:
    raise RuntimeError(f"{name} failed on another process: "
                       + "; ".join(errors))


def on_process_0(name: str, decide: Callable[[], str],
                 timeout_s: float = TIMEOUT_S) -> str:
  """`decide()` run on process 0 only; its result on every process.

  If it raises, every process raises: process 0 its own error, the others
  the same type and message (for the common types), so that all stop alike.
  """
  if jax.process_count() == 1:
    return decide()
  client = ocp_multihost.get_jax_distributed_client()
  key = _key(name)
  if jax.process_index() == 0:
    try:
      result = decide()
    except Exception as e:
      client.key_value_set(key, "error:" + describe(e, causes=False))
      raise
    client.key_value_set(key, "ok:" + result)
    return result
  outcome, _, value = _get(client, key, 0, name, timeout_s).partition(":")
  if outcome == "error":
    raise _rebuild(value)
  return value
