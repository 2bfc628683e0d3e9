"""Test setup: 8 emulated CPU devices, set before JAX initialises."""

import os
import sys

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Configs import `configs.common`, resolved from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
  """Skips (or in CI fails) a test marked `needs_modules` whose modules are
  missing, before its fixtures import them."""
  for marker in item.iter_markers(name="needs_modules"):
    import testing_utils  # pylint: disable=g-import-not-at-top
    testing_utils.require_modules(*marker.args)
