"""The experiments' CPU steps with and without glibc's malloc on huge pages, in interleaved processes.

XLA:CPU takes each step's temporary buffers from malloc afresh; with 4 KiB pages the kernel faults in
and zeroes them again every step (`srformer_jax/host_malloc.py`). The command-line jobs therefore
re-execute themselves with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`. This measures what that buys:
each round runs one child process per setting (the tunable off, then on; the order alternates
between rounds, so a drift of the machine's speed falls on both), and each child times the same
rows: the segment sweep's train step (full and SRformer s = 8, cpu_efficiency.py's shapes), the
WordPTB CRT L/4 step, T5-small's step (batch 4, k 512) and the sweep model's beam-2 search on one
batch. Per row and setting: the median step time, CPU time per step (user, system) and minor page
faults per step; per row, the speed-up of each round (off / on) and their mean.

Measure on an idle machine (nothing else running): the JSON records the load average.

  python benchmarks/cpu_allocator.py            # ~8 min on a 2-core CPU
  python benchmarks/cpu_allocator.py --quick    # smoke test (tiny shapes)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

ROWS = ("sweep/full", "sweep/srformer_s8", "crt/crt_L/4", "t5_small", "decode/beam2")
SETTINGS = ("4 KiB pages", "huge pages")


def make_step(jax, name: str, quick: bool):
  """A zero-argument callable running one step of row `name` (its result to block on): the builders
  of cpu_efficiency.py, so both scripts time the same steps."""
  from benchmarks import cpu_efficiency as ce
  if name not in ROWS:
    raise ValueError(f"unknown row {name!r}; rows: {', '.join(ROWS)}")
  return ce.row_step(jax, name, quick)


def measure(fn, repeats: int) -> dict:
  """Median wall time of `repeats` calls after a warm-up, and per call: user and system CPU seconds
  and minor page faults of this process."""
  for _ in range(2):
    common.block(fn())
  times = []
  r0 = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(repeats):
    t0 = time.perf_counter()
    common.block(fn())
    times.append(time.perf_counter() - t0)
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  return {"step_s": statistics.median(times), "user_s": (r1.ru_utime - r0.ru_utime) / repeats,
          "sys_s": (r1.ru_stime - r0.ru_stime) / repeats, "minor_faults": (r1.ru_minflt - r0.ru_minflt) / repeats}


def child(args) -> None:
  jax = common.setup_platform(args.platform)
  out = {"glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "rows": {}}
  for name in args.rows.split(","):
    fn = make_step(jax, name, args.quick)
    out["rows"][name] = measure(fn, max(2, args.repeats // 3) if name in ("t5_small", "decode/beam2") else args.repeats)
  common.report_to_parent(out)


def run_child(args, huge: bool) -> dict:
  env = common.huge_pages_env(os.environ, huge)  # the setting is this benchmark's to choose
  cmd = [sys.executable, os.path.abspath(__file__), "--child", "--rows", args.rows, "--platform", args.platform,
         "--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
  return common.run_child(cmd, "cpu_allocator: the child process", env)


def summarize(rounds: list[dict]) -> list[dict]:
  """Per row: each setting's median over rounds of step time, CPU time and faults; the per-round
  speed-up (4 KiB step / huge-page step) and its mean."""
  rows = []
  for name in rounds[0][SETTINGS[0]]["rows"]:
    row = {"name": name}
    for setting in SETTINGS:
      ms = [r[setting]["rows"][name] for r in rounds]
      row[setting] = {k: statistics.median(m[k] for m in ms) for k in ms[0]}
    ratios = [r[SETTINGS[0]]["rows"][name]["step_s"] / r[SETTINGS[1]]["rows"][name]["step_s"] for r in rounds]
    row.update(speedup_per_round=ratios, speedup=statistics.fmean(ratios))
    rows.append(row)
  return rows


def plot(rows: list[dict], path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  names = [r["name"] for r in rows]
  y = np.arange(len(rows))
  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 0.6 * len(rows) + 1.8))
  a.barh(y, [r["speedup"] for r in rows], color="tab:green")
  for i, r in enumerate(rows):
    a.plot(r["speedup_per_round"], [i] * len(r["speedup_per_round"]), "k|", markersize=12)
    a.text(0.02, i, f"{r['speedup']:.2f}x", va="center", color="white", fontweight="bold")
  a.axvline(1.0, color="k", lw=0.8)
  a.set(yticks=y, yticklabels=names, xlabel="step time, 4 KiB pages / huge pages (bars: mean, ticks: rounds)")
  a.invert_yaxis()
  h = 0.38
  for k, (setting, color) in enumerate(zip(SETTINGS, ("tab:gray", "tab:green"))):
    b.barh(y + (k - 0.5) * h, [r[setting]["sys_s"] / r[setting]["step_s"] for r in rows], h, color=color,
           label=setting)
  b.set(yticks=y, yticklabels=[], xlabel="system CPU time per step / step time (cores)")
  b.invert_yaxis()
  b.legend(loc="lower right")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main():
  from srformer_jax import host_malloc
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=2, help="child-process pairs (off/on, order alternating)")
  p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows: " + ", ".join(ROWS))
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.quick:
    args.repeats, args.rounds = min(args.repeats, 3), min(args.rounds, 1)
  if args.child:
    return child(args)
  unknown = set(args.rows.split(",")) - set(ROWS)
  if unknown:
    sys.exit(f"cpu_allocator: unknown row(s) {', '.join(sorted(unknown))}; rows: {', '.join(ROWS)}")
  load_before = os.getloadavg()
  rounds = common.interleaved_rounds(args.rounds, list(SETTINGS), lambda setting: run_child(args, setting == SETTINGS[True]))
  rows = summarize(rounds)
  jax = common.setup_platform(args.platform)
  name = "quick" if args.quick else args.platform
  payload = {"machine": common.machine(jax), "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
             "tunable": f"{host_malloc.TUNABLE}=1", "rounds": rounds, "rows": rows,
             "note": "each round: one child process per setting, the same rows; speedup = step time with "
                     "4 KiB pages / with huge pages (glibc.malloc.hugetlb=1), per round and mean; step_s, "
                     "user_s, sys_s, minor_faults: per step, median over rounds."}
  common.write(args.out, f"cpu_allocator_{name}", payload)
  plot(rows, os.path.join(args.out, f"cpu_allocator_{name}.png"),
       f"glibc malloc on huge pages, {payload['machine']['cpu']} x{payload['machine']['cpu_count']}")
  for r in rows:
    print(f"{r['name']}: {r['speedup']:.2f}x ({', '.join(f'{x:.2f}' for x in r['speedup_per_round'])})")


if __name__ == "__main__":
  main()
