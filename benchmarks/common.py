"""Shared helpers of the benchmark scripts: platform flag, timing, JSON and plots."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
_RESULT = "RESULT "  # the line a benchmark's child process reports its measurements on


def report_to_parent(payload) -> None:
  """A child process's measurements, for `run_child` in the parent."""
  print(_RESULT + json.dumps(payload), flush=True)


def run_child(cmd: list[str], what: str, env: dict | None = None):
  """Runs a benchmark's child process and returns what it reported (`report_to_parent`); exits
  with its stderr's tail when it failed or reported nothing."""
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT)]
  if proc.returncode or not lines:
    sys.exit(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1].removeprefix(_RESULT))


SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def single_thread_flags(env) -> str:
  """`env`'s XLA_FLAGS with XLA:CPU on one thread (the segment sweep's cells, two at a time on two
  cores, and what times their steps)."""
  return (env.get("XLA_FLAGS", "") + " " + SINGLE_THREAD).strip()


def huge_pages_env(env: dict, on: bool = True) -> dict:
  """A child process's environment with glibc's malloc on huge pages set (`on`) or unset, the
  benchmark's own choice: host_malloc's re-execution is told to leave it as given."""
  from srformer_jax import host_malloc
  env = dict(env, **{host_malloc.OPT_OUT: "0"})
  tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and not t.startswith(host_malloc.TUNABLE)]
  env["GLIBC_TUNABLES"] = ":".join(tunables + ([f"{host_malloc.TUNABLE}=1"] if on else []))
  return env


def interleaved_rounds(rounds: int, settings: list, run) -> list[dict]:
  """`rounds` rounds of `run(setting)` (a child process's report: {"rows": {name: {"step_s": ..}}})
  for every setting, the order reversed every other round so a drift of the machine touches every
  setting alike; each child's step times are printed as it finishes. Returns one {setting: report}
  per round."""
  out = []
  for i in range(rounds):
    result = {}
    for setting in (settings if i % 2 == 0 else list(reversed(settings))):
      result[setting] = run(setting)
      print(f"round {i + 1}/{rounds}, {setting}: " + ", ".join(
          f"{n} {m['step_s'] * 1e3:.0f} ms" for n, m in result[setting]["rows"].items()), flush=True)
    out.append(result)
  return out


def parser(description: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--platform", default="cpu", choices=["cpu", "gpu", "tpu"],
                 help="JAX platform to run on (the same script runs unchanged on each)")
  p.add_argument("--out", default=RESULTS, help="directory for the JSON and PNG results")
  p.add_argument("--repeats", type=int, default=5, help="timed repeats after compilation")
  p.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
  return p


def setup_platform(name: str):
  os.environ["JAX_PLATFORMS"] = name if name != "gpu" else "cuda"
  import jax
  return jax


def machine(jax) -> dict:
  from srformer_jax import host_malloc
  dev = jax.devices()[0]
  info = {"platform": dev.platform, "device": getattr(dev, "device_kind", str(dev)),
          "device_count": jax.device_count(), "jax": jax.__version__,
          "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
          "malloc_huge_pages": host_malloc.in_force()}  # glibc's malloc on huge pages: faster CPU steps
  return info


def block(x):
  import jax
  return jax.block_until_ready(x)


def greedy_decode_fns(model, batch: int, new_tokens: int):
  """Greedy decoding in two jitted parts, timed apart: `init(params, encoder_out, mask) -> cache`
  (the per-input work) and `steps(params, cache) -> (tokens, cache)` (`decoding.greedy_from_cache`,
  EOS banned so every call decodes `new_tokens`). The cache is donated to `steps`, which updates it
  in place: make a fresh one for each call."""
  import jax
  from srformer_jax import DecodeConfig
  from srformer_jax.decoding import greedy_from_cache
  dc = DecodeConfig(max_len=new_tokens, min_len=new_tokens)
  init = jax.jit(lambda p, e, m: model.apply({"params": p}, e, m, new_tokens, method=model.init_cache))
  steps = jax.jit(lambda p, cache: greedy_from_cache(model, {"params": p}, cache, batch, dc)[::2],
                  donate_argnums=(1,))
  return init, steps


def time_fn(fn, repeats: int, setup=None) -> dict:
  """Compile time (first call) and the median / min of `repeats` later calls, in seconds. `setup`:
  made (and waited for) before each call's clock starts, and passed to it: `fn(setup())`, e.g. a
  fresh buffer for a call that donates its argument."""
  def call():
    if setup is None:
      return 0.0, fn()
    arg = block(setup())
    t0 = time.perf_counter()
    return t0, fn(arg)

  t0 = time.perf_counter()
  block(call()[1])
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    start, out = call()
    block(out)
    times.append(time.perf_counter() - max(t0, start))
    del out  # before the next call's setup: a large output (e.g. a decoding cache) is not held twice
  return {"first_call_s": compile_s, "median_s": statistics.median(times), "min_s": min(times),
          "repeats": repeats}


# What a benchmark's numbers depend on: the library, configs, entry points and benchmark scripts
# (not their results), so results committed later do not move a measurement's commit.
CODE = ("srformer_jax", "configs", "train.py", "eval.py", "train_lm.py", ":(glob)benchmarks/*.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def code_commit(code=CODE) -> str:
  """The last commit that changed `code` (full hash, as the grid's cells record theirs), with
  '-dirty' when the code on disk differs from it (edited or untracked files); 'unknown' outside a
  git checkout."""
  try:
    head = subprocess.run(["git", "log", "-1", "--format=%H", "HEAD", "--", *code], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *code], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return (head or "unknown") + ("-dirty" if dirty else "")


def write(out_dir: str, name: str, payload: dict) -> str:
  """`<out_dir>/<name>.json`; a dict without a `git_commit` key is stamped with `code_commit()`."""
  if isinstance(payload, dict) and "git_commit" not in payload:
    payload = {**payload, "git_commit": code_commit()}
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{name}.json")
  with open(path + ".tmp", "w") as f:  # whole or not at all: other processes read these files
    json.dump(payload, f, indent=2)
  os.replace(path + ".tmp", path)
  print(f"wrote {path}")
  return path


def plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as pyplot
  return pyplot


def save_figure(fig, path: str, dpi: int = 110):
  """Writes a matplotlib figure as PNG, closes it and says where it went."""
  fig.savefig(path, dpi=dpi)
  plt().close(fig)
  print(f"wrote {path}")
