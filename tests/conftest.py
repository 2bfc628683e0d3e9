"""Test setup: 8 emulated CPU devices, set before JAX initialises."""

import atexit
import os
import shutil
import sys
import tempfile

import pytest

# XLA:CPU's LLVM optimisation level 0: the tests' programs are tiny, so
# compiling them is most of their time, and level 0 compiles them 1.3-5x
# faster (a tiny train step 7.6 s against 9.9 s, the DALL-E tokenizer's init
# 1.4 s against 7.6 s). It changes the machine code, not XLA's program;
# float32 results can differ from the default level's in the last bits, as
# between two CPUs, so every process of a test must use it: subprocesses
# inherit it, and testing_utils.xla_flags keeps it where a test sets the
# device count.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = " ".join(filter(None, (
    os.environ.get("XLA_FLAGS"), TEST_XLA_FLAGS,
    "--xla_force_host_platform_device_count=8")))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile the same tiny models again and again, in this process and in
# the runs they start: JAX's persistent compilation cache, one per test
# session and shared by its xdist workers and their subprocesses (all inherit
# the environment), compiles each once. Its entries are keyed by the program,
# the devices and the versions, so a hit is the same executable.
if ("PYTEST_XDIST_WORKER" not in os.environ
    and "JAX_COMPILATION_CACHE_DIR" not in os.environ):
  _cache = tempfile.mkdtemp(prefix="mae_jax_tests_jit_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Configs import `configs.common`, resolved from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
  """Skips (or in CI fails) a test marked `needs_modules` whose modules are
  missing, before its fixtures import them."""
  for marker in item.iter_markers(name="needs_modules"):
    import testing_utils  # pylint: disable=g-import-not-at-top
    testing_utils.require_modules(*marker.args)
