"""The skip-or-fail rule for tests that need a test-only extra (torch,
transformers): skipped with the reason on a developer's machine, a failure in
CI, where .ci/run sets MAE_JAX_REQUIRE_TEST_EXTRAS=1."""

import os
import subprocess
import sys

import pytest

import testing_utils

ABSENT = "mae_jax_no_such_module"
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def test_missing_module_skips_naming_it_and_the_fix(monkeypatch):
  monkeypatch.delenv(testing_utils.REQUIRE_TEST_EXTRAS, raising=False)
  with pytest.raises(pytest.skip.Exception,
                     match=f"needs {ABSENT}.*requirements-test.txt"):
    testing_utils.require_modules("json", ABSENT)


def test_missing_module_fails_when_extras_are_required(monkeypatch):
  monkeypatch.setenv(testing_utils.REQUIRE_TEST_EXTRAS, "1")
  with pytest.raises(pytest.fail.Exception,
                     match=f"needs {ABSENT}.*forbids skipping"):
    testing_utils.require_modules(ABSENT)


def test_present_modules_neither_skip_nor_fail(monkeypatch):
  monkeypatch.setenv(testing_utils.REQUIRE_TEST_EXTRAS, "1")
  testing_utils.require_modules("json", "numpy")


@pytest.mark.parametrize("required, outcome", [(None, "1 skipped"),
                                                ("1", "1 error")])
def test_the_needs_modules_marker_applies_the_rule(tmp_path, required,
                                                   outcome):
  (tmp_path / "test_marked.py").write_text(
      "import pytest\n"
      f"@pytest.mark.needs_modules({ABSENT!r})\n"
      "def test_marked():\n"
      "  raise AssertionError('ran without its module')\n")
  env = {k: v for k, v in os.environ.items()
         if k != testing_utils.REQUIRE_TEST_EXTRAS}
  if required:
    env[testing_utils.REQUIRE_TEST_EXTRAS] = required
  # This directory's conftest.py, loaded as a plugin by a pytest run on the
  # new file alone.
  env["PYTHONPATH"] = os.pathsep.join(
      [TESTS_DIR] + [p for p in [env.get("PYTHONPATH")] if p])
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-p", "conftest", "-q",
       "-p", "no:cacheprovider", "test_marked.py"], cwd=tmp_path, env=env,
      capture_output=True, text=True, timeout=120, check=False)
  assert outcome in result.stdout, result.stdout + result.stderr
  assert "ran without its module" not in result.stdout
