import os
import subprocess
import sys

import pytest

from mae_jax import huge_pages


def test_linux_without_tunables_re_executes_with_them_and_keeps_the_rest():
  env = huge_pages.environment_for_reexec("linux", {"PATH": "/bin", "X": "1"})
  assert env == {"PATH": "/bin", "X": "1",
                 "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


@pytest.mark.parametrize("platform, environ", [
    ("darwin", {}),
    ("win32", {}),
    # The re-executed child, or the user's own tunables: never overridden,
    # so the re-execution cannot loop.
    ("linux", {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),
    ("linux", {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}),
    ("linux", {"MAE_JAX_NO_REEXEC": "1"}),
    ("linux", {"MAE_JAX_NO_REEXEC": "yes"}),
])
def test_no_reexec_off_linux_when_set_or_opted_out(platform, environ):
  assert huge_pages.environment_for_reexec(platform, environ) is None


def test_reexec_keeps_interpreter_options_and_arguments(monkeypatch):
  calls = []
  monkeypatch.setattr(os, "execve", lambda *a: calls.append(a))
  monkeypatch.setattr(sys, "platform", "linux")
  monkeypatch.setattr(sys, "orig_argv",
                      ["python3", "-X", "dev", "-m", "mae_jax.main", "--a=1"])
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.delenv("MAE_JAX_NO_REEXEC", raising=False)
  huge_pages.reexec_with_huge_page_malloc()
  (path, argv, env), = calls
  assert path == sys.executable
  assert argv == [sys.executable, "-X", "dev", "-m", "mae_jax.main", "--a=1"]
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("value", ["0", "false", "No", "off", " "])
def test_a_false_opt_out_still_re_executes(value):
  env = huge_pages.environment_for_reexec("linux",
                                          {"MAE_JAX_NO_REEXEC": value})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_a_failed_reexec_carries_on_with_a_warning(monkeypatch, capsys):
  def fail(*_):
    raise FileNotFoundError("no such interpreter")
  monkeypatch.setattr(os, "execve", fail)
  monkeypatch.setattr(sys, "platform", "linux")
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.delenv("MAE_JAX_NO_REEXEC", raising=False)
  huge_pages.reexec_with_huge_page_malloc()
  assert "carrying on with glibc's default malloc" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_the_reexecuted_process_sees_the_variable_and_runs_once():
  script = ("import os; from mae_jax import huge_pages; print('start'); "
            "huge_pages.reexec_with_huge_page_malloc(); "
            "print(os.environ['GLIBC_TUNABLES'])")
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", "MAE_JAX_NO_REEXEC")}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", script], env=env, cwd=root,
                       capture_output=True, text=True, check=True,
                       timeout=60).stdout
  assert out.split() == ["start", "start", "glibc.malloc.hugetlb=1"]


def test_usage_per_step_divides_the_faults_and_kernel_time_by_the_steps():
  import types
  before = types.SimpleNamespace(ru_minflt=1_000, ru_stime=2.0)
  after = types.SimpleNamespace(ru_minflt=61_000, ru_stime=5.0)
  assert huge_pages.usage_per_step(before, after, steps=10) == {
      "minor_page_faults_per_step": 6_000.0, "kernel_s_per_step": 0.3}
  with pytest.raises(ValueError, match="steps=0"):
    huge_pages.usage_per_step(before, after, steps=0)
