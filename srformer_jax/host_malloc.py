"""glibc's malloc on transparent huge pages for the command-line jobs, set by re-executing them once.

XLA:CPU allocates each step's temporary buffers afresh from malloc, which maps blocks this large
with their own mmap and returns them to the kernel when the step ends. With 4 KiB pages the kernel
then faults in and zeroes every page again in the next step: the segment sweep's train step took
~90,000 page faults (~350 MB) and about half a core of system time per step on a 2-core CPU.
glibc >= 2.35 can ask for transparent huge pages on its own mappings (the tunable
`glibc.malloc.hugetlb=1`, which madvises them), so the same bytes take a few hundred faults.
`benchmarks/cpu_allocator.py` measures the steps with and without it, side by side.

Tunables are read when the process starts, so the job re-executes itself (same interpreter, same
command line) with the tunable added to `GLIBC_TUNABLES`, before it has started any work. It does
nothing where that cannot help (not glibc >= 2.35 on Linux, huge pages disabled) or was already
decided: the tunable already present, or `SRFORMER_JAX_HUGE_PAGES=0` in the environment; and
never in an interactive session (no `__main__` script).
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "SRFORMER_JAX_HUGE_PAGES"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # e.g. "glibc 2.36"
  except (AttributeError, ValueError, OSError):
    return None
  if name != "glibc":
    return None
  try:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)
  except ValueError:
    return None


def _thp_available(path: str = THP_SETTING) -> bool:
  """Transparent huge pages are on for madvised memory ("always" or "madvise" selected)."""
  try:
    with open(path) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def in_force(environ=None) -> bool:
  """This process runs with glibc's malloc on huge pages (the tunable set to 1)."""
  environ = os.environ if environ is None else environ
  return f"{TUNABLE}=1" in environ.get("GLIBC_TUNABLES", "").split(":")


def reexec_plan(environ=None, glibc=..., thp=None) -> dict | None:
  """The environment to re-execute with, or None when there is nothing to do (see module doc).
  `environ`, `glibc` ((major, minor), None when the C library is not glibc) and `thp` (huge pages
  available) default to this process's."""
  environ = os.environ if environ is None else environ
  if environ.get(OPT_OUT, "1") == "0" or TUNABLE in environ.get("GLIBC_TUNABLES", ""):
    return None
  glibc = _glibc_version() if glibc is ... else glibc
  if not sys.platform.startswith("linux") or glibc is None or glibc < (2, 35):
    return None
  if not (_thp_available() if thp is None else thp):
    return None
  tunables = ":".join(t for t in (environ.get("GLIBC_TUNABLES", ""), f"{TUNABLE}=1") if t)
  return dict(environ, GLIBC_TUNABLES=tunables)


def reexec_with_huge_pages() -> None:
  """Re-executes this process with glibc's malloc on huge pages, or returns when there is nothing to
  do. Call it first thing in a command-line entry point (`if __name__ == "__main__":`), never from
  library code: the process is replaced."""
  main = sys.modules.get("__main__")
  if sys.flags.interactive or not getattr(main, "__file__", None):
    return  # an interactive session or notebook, not a script: never replace it
  env = reexec_plan()
  if env is None:
    return
  argv = list(getattr(sys, "orig_argv", [])) or [sys.executable, *sys.argv]
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)
  except OSError:
    return  # cannot re-execute (e.g. a frozen interpreter): run as is


__all__ = ["in_force", "reexec_plan", "reexec_with_huge_pages", "TUNABLE", "OPT_OUT"]
