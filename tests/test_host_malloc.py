"""The command-line jobs re-execute themselves once with glibc's malloc on huge pages."""

import os
import subprocess
import sys
import textwrap

import pytest

from srformer_jax import host_malloc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ON = f"{host_malloc.TUNABLE}=1"


def test_plan_adds_the_tunable_and_keeps_others():
  env = host_malloc.reexec_plan({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/h"}, glibc=(2, 36),
                                thp=True)
  assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{ON}"
  assert env["HOME"] == "/h"
  assert host_malloc.reexec_plan({}, glibc=(2, 35), thp=True)["GLIBC_TUNABLES"] == ON


@pytest.mark.parametrize("environ, glibc, thp", [
    ({"GLIBC_TUNABLES": ON}, (2, 36), True),               # already re-executed (or set by the user)
    ({"GLIBC_TUNABLES": f"{host_malloc.TUNABLE}=0"}, (2, 36), True),  # the user's own choice stands
    ({host_malloc.OPT_OUT: "0"}, (2, 36), True),           # turned off
    ({}, (2, 34), True),                                   # glibc without the tunable
    ({}, None, True),                                      # not glibc (e.g. musl)
    ({}, (2, 36), False),                                  # transparent huge pages disabled
])
def test_plan_does_nothing(environ, glibc, thp):
  assert host_malloc.reexec_plan(environ, glibc=glibc, thp=thp) is None


def _run(tmp_path, **env):
  script = tmp_path / "job.py"
  script.write_text(textwrap.dedent(f"""
      import os, sys
      sys.path.insert(0, {REPO!r})
      print("start", sys.argv[1:], flush=True)
      from srformer_jax import host_malloc
      host_malloc.reexec_with_huge_pages()
      print("tunables", os.environ.get("GLIBC_TUNABLES", ""), flush=True)
  """))
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_malloc.OPT_OUT)}
  out = subprocess.run([sys.executable, str(script), "--flag", "a b"], env=dict(base, **env), capture_output=True,
                       text=True, timeout=60, check=True).stdout.splitlines()
  return out


def test_reexecutes_once_with_the_same_arguments(tmp_path):
  if host_malloc.reexec_plan({}) is None:
    pytest.skip("this machine has no glibc >= 2.35 with transparent huge pages: nothing to re-execute")
  out = _run(tmp_path)
  # printed before the re-exec and again after it (same arguments), then the tunable is in force
  assert out == ["start ['--flag', 'a b']", "start ['--flag', 'a b']", f"tunables {ON}"]


def test_opt_out_runs_once(tmp_path):
  assert _run(tmp_path, **{host_malloc.OPT_OUT: "0"}) == ["start ['--flag', 'a b']", "tunables "]


def test_never_replaces_an_interactive_process():
  code = (f"import sys; sys.path.insert(0, {REPO!r}); from srformer_jax import host_malloc; "
          "print('start'); host_malloc.reexec_with_huge_pages(); print('still here')")
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_malloc.OPT_OUT)}
  out = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, timeout=60,
                       check=True).stdout.splitlines()
  assert out == ["start", "still here"]


def test_in_force_reads_the_tunable():
  assert host_malloc.in_force({"GLIBC_TUNABLES": f"glibc.malloc.arena_max=2:{ON}"})
  assert not host_malloc.in_force({"GLIBC_TUNABLES": f"{host_malloc.TUNABLE}=0"})
  assert not host_malloc.in_force({})
