"""How the command lines end on a mistake: one or two lines that say what was
wrong and what to do, not a library's traceback (`--verbosity=1` shows it).

`mae_jax.main` and `mae_jax.benchmark` (absl flags) run through `run_absl`,
`mae_jax.convert` and `mae_jax.visualize` (argparse) through `run` with
this module's `ArgumentParser`. After an error the process ends at once
(`os._exit`): orbax's threads, waiting on a save that failed on this or on
another process, would otherwise keep the interpreter from exiting for many
minutes.

In a run of several processes it first leaves the run with the others
(`jax.distributed.shutdown`, bounded): process 0 hosts the coordination
service, and a process still connected to it when it ends is aborted by the
runtime ("another task died") before it can report its own error.
"""

import argparse
import ast
import os
import sys
import threading
import traceback
from typing import Callable, NoReturn

from absl import app
from absl import flags
from absl import logging

# Errors that carry a message meant for a person: bad input, a missing or
# unwritable file, a diverged run, a failed save or restore. Anything else is
# a bug, and its traceback is shown.
EXPECTED_ERRORS = (ValueError, OSError, FloatingPointError, RuntimeError,
                   ImportError, app.UsageError)
# What ml_collections raises for a mistake in --config or --config.<field>.
_CONFIG_FLAG_ERRORS = (AttributeError, KeyError, OSError, ValueError,
                       TypeError, SyntaxError)


def _program() -> str:
  """'mae_jax.main' for `python -m mae_jax.main`; the script's file name for
  a script outside the package (`python benchmarks/run_all.py`)."""
  path = sys.argv[0] if sys.argv else ""
  if path in ("", "-c"):  # python -c, or an interactive session
    return "mae_jax"
  if os.path.dirname(os.path.abspath(path)) != os.path.dirname(
      os.path.abspath(__file__)):
    return os.path.basename(path)
  return f"mae_jax.{os.path.splitext(os.path.basename(path))[0]}"


def _verbose() -> bool:
  return logging.get_verbosity() >= 1


# How long an ending process waits at `jax.distributed.shutdown` for the
# others to end too.
LEAVE_TIMEOUT_S = 60


def _leave_distributed_run():
  """`jax.distributed.shutdown()` if this process is part of a multi-process
  run, giving up after LEAVE_TIMEOUT_S (another process may hang)."""
  jax = sys.modules.get("jax")
  if jax is None or not jax.distributed.is_initialized():
    return

  def leave():
    try:
      jax.distributed.shutdown()
    except Exception as e:  # pylint: disable=broad-except
      # The others may have gone first; this process ends either way.
      logging.warning("leaving the multi-process run: %s", e)

  leaving = threading.Thread(target=leave, daemon=True)
  leaving.start()
  leaving.join(LEAVE_TIMEOUT_S)


def _exit(code: int, leave_distributed_run: bool = True) -> NoReturn:
  if leave_distributed_run:
    _leave_distributed_run()
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def exit_with_error(message: str) -> NoReturn:
  """Prints 'program: error: message' and ends the process at once, from any
  thread: for a watchdog whose main thread is stuck in a library call."""
  print(f"{_program()}: error: {message}", file=sys.stderr)
  _exit(1, leave_distributed_run=False)


def _config_flag_message(error: BaseException) -> str:
  """What ml_collections raised for a --config mistake, for a person: an
  unknown field arrives as a KeyError's quoted message (with a did-you-mean
  hint) inside an AttributeError."""
  message = str(error)
  if "has no attribute 'get_config'" in message:
    return ("the --config file defines no get_config(); give one of the "
            "configs/*.py files that do, e.g. --config=configs/demo.py")
  if isinstance(error, (KeyError, AttributeError)):
    try:
      message = ast.literal_eval(message)
    except (ValueError, SyntaxError):
      pass
    name, _, hint = str(message).partition("\n")
    message = f"unknown config field {name}. {hint}".strip()
  return message


def report(error: BaseException) -> NoReturn:
  """Prints `error` for a person and ends the process: exit code 1, or 130
  after Ctrl-C."""
  if isinstance(error, KeyboardInterrupt):
    print(f"{_program()}: stopped by Ctrl-C", file=sys.stderr)
    # At once: the other processes, not interrupted, would keep it waiting.
    _exit(130, leave_distributed_run=False)
  if isinstance(error, SystemExit):
    if error.code is None or isinstance(error.code, int):
      _exit(error.code or 0)
    # SystemExit("message"): Python would print the message, so do we.
    print(f"{_program()}: error: {error.code}", file=sys.stderr)
    _exit(1)
  if _verbose() or not isinstance(error, EXPECTED_ERRORS):
    traceback.print_exception(error)
  else:
    print(f"{_program()}: error: {error}\n"
          "(run again with --verbosity=1 to see where it happened)",
          file=sys.stderr)
  _exit(1)


def run(main: Callable[[], object]):
  """Runs an argparse `main()`; an error ends the process as `report` says."""
  try:
    main()
  except BaseException as e:  # pylint: disable=broad-except
    report(e)


def _missing_config_file(argv: list[str]) -> str:
  """The message for a --config file that does not exist; '' otherwise.
  (ml_collections reports it as a failure to load, deep in another flag.)"""
  # In command-line order: absl takes the last one.
  paths = [arg.split("=", 1)[1] if arg.startswith("--config=") else following
           for arg, following in zip(argv, argv[1:] + [""])
           if arg.startswith("--config=") or arg == "--config"]
  if not paths or os.path.exists(paths[-1].split(":")[0]):
    return ""
  return (f"--config={paths[-1]}: no such file; give one of the configs/*.py "
          "files, e.g. --config=configs/demo.py")


def _parse_absl_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with the mistakes that ml_collections raises as
  plain exceptions (an unknown config field, a config file that does not
  exist or does not load) reported like absl's own flag errors."""
  message = _missing_config_file(argv)
  try:
    if not message:
      args = flags.FLAGS(argv)
      if "config" in flags.FLAGS:
        # A config file that fails to load raises only when first used.
        getattr(flags.FLAGS.config, "keys")
      return args
  except flags.Error as e:
    message = str(e)
  except _CONFIG_FLAG_ERRORS as e:  # pylint: disable=broad-except
    if "--verbosity=1" in argv:
      traceback.print_exception(e)
    message = _config_flag_message(e)
  print(f"{_program()}: error: {message}\nPass --helpshort for the flags.",
        file=sys.stderr)
  _exit(1)


def run_absl(main: Callable[[list[str]], object]):
  """`app.run(main)`, with errors reported as `report` does."""

  def guarded(argv: list[str]):
    try:
      main(argv)
    except BaseException as e:  # pylint: disable=broad-except
      report(e)

  app.run(guarded, flags_parser=_parse_absl_flags)


class ArgumentParser(argparse.ArgumentParser):
  """argparse with `--verbosity`, as the absl command lines have: 1 shows
  a failure's traceback and debug logs."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.add_argument("--verbosity", type=int, default=0,
                      help="1: on an error, show its traceback too")

  def parse_args(self, args=None, namespace=None):  # pylint: disable=signature-differs
    parsed = super().parse_args(args, namespace)
    logging.set_verbosity(parsed.verbosity)
    return parsed
