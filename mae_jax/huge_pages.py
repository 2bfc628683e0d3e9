"""glibc's huge-page malloc for the command-line entry points.

XLA:CPU mallocs its ~1.3 GB buffer of activations at every step and frees it
at the end; glibc serves it with fresh mmaps of 4 KiB pages, and faulting
them in costs ~0.6 s of a 3.2 s ViT-B step (BENCHMARKS.md, "glibc and XLA's
temporary buffer"). `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc >= 2.35;
older versions ignore it) backs those mappings with transparent huge pages.
glibc reads the variable once, when the process starts, so an entry point
that wants it re-executes itself once with it set: same interpreter,
arguments and environment otherwise.

Nothing happens off Linux, when GLIBC_TUNABLES is already set (the user's
own tunables, or the re-executed child: it never loops), or with
MAE_JAX_NO_REEXEC=1 (any value but "", 0, false, no or off). If the
re-execution itself fails, the process carries on with the default malloc.
"""

import os
import sys
from typing import Any, Mapping

TUNABLES = "glibc.malloc.hugetlb=1"
OPT_OUT = "MAE_JAX_NO_REEXEC"
_NOT_OPTED_OUT = ("", "0", "false", "no", "off")


def environment_for_reexec(platform: str, environ: Mapping[str, str]
                           ) -> dict[str, str] | None:
  """The environment to re-execute with, or None to carry on as we are."""
  if (not platform.startswith("linux") or "GLIBC_TUNABLES" in environ
      or environ.get(OPT_OUT, "").strip().lower() not in _NOT_OPTED_OUT):
    return None
  return {**environ, "GLIBC_TUNABLES": TUNABLES}


def reexec_with_huge_page_malloc():
  """Replaces this process by itself with huge-page malloc, if it wants it.

  Call first thing in an entry point (`python -m mae_jax.main ...`), before
  heavy imports, which the new process repeats.
  """
  environ = environment_for_reexec(sys.platform, os.environ)
  if environ is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  # orig_argv holds the interpreter's own options and `-m module` too.
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
  except OSError as e:
    print(f"warning: could not re-execute with {TUNABLES} ({e}); carrying "
          f"on with glibc's default malloc ({OPT_OUT}=1 skips this)",
          file=sys.stderr)


def usage_per_step(before: Any, after: Any, steps: int) -> dict[str, float]:
  """Minor page faults and kernel seconds per step between two
  `resource.getrusage` readings around `steps` timed steps: what the malloc
  setting changes (BENCHMARKS.md, "glibc and XLA's temporary buffer").
  The caller imports `resource` (POSIX only), not this module, which every
  entry point imports first."""
  if steps < 1:
    raise ValueError(f"steps={steps}: usage per step needs timed steps")
  return {"minor_page_faults_per_step":
              (after.ru_minflt - before.ru_minflt) / steps,
          "kernel_s_per_step": (after.ru_stime - before.ru_stime) / steps}
