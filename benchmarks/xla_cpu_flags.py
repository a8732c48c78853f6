"""XLA:CPU flags against the default build, on the steps the experiments pay for, in interleaved processes.

XLA reads XLA_FLAGS once per process, so each setting is a child process: every round runs one
child per setting (the order reversed every other round, so a drift of the machine's speed falls on
all), and each child times the same rows as cpu_efficiency.py builds them: the segment sweep's train
step (full and SRformer s = 8) and its beam-2 search on one batch of 50. Per row and setting: the
median step time over rounds, and the speed-up against the default flags (default / setting) per
round and its mean. The rule (issue 37): a flag is adopted on the CPU backend only where it wins by
>= 10% on the sweep step or the beam search in the same run; `adopt` in the JSON says which.

Settings:
  default                   no XLA_FLAGS
  ynn_fusion_empty          --xla_cpu_experimental_ynn_fusion_type=   (no YNNPACK fusions)
  vector_width_512          --xla_cpu_prefer_vector_width=512         (AVX-512 where the CPU has it)
  scheduler_concurrency     --xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED
  scheduler_memory          --xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED

Measure on an idle machine (nothing else running): the JSON records the load average.

  python benchmarks/xla_cpu_flags.py            # ~12 min on a 2-core CPU
  python benchmarks/xla_cpu_flags.py --quick    # smoke test (tiny shapes)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

ROWS = ("sweep/full", "sweep/srformer_s8", "decode/beam2")
SETTINGS = {
    "default": "",
    "ynn_fusion_empty": "--xla_cpu_experimental_ynn_fusion_type=",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
    "scheduler_concurrency": "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
    "scheduler_memory": "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
}
ADOPT_AT = 1.10  # a setting is adopted where its mean speed-up on a row reaches this


def child(args) -> None:
  from benchmarks import cpu_allocator, cpu_efficiency
  jax = common.setup_platform(args.platform)
  out = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": {}}
  for name in args.rows.split(","):
    fn = cpu_efficiency.row_step(jax, name, args.quick)
    repeats = max(2, args.repeats // 3) if name.startswith("decode/") else args.repeats
    out["rows"][name] = cpu_allocator.measure(fn, repeats)
  common.report_to_parent(out)


def run_child(args, setting: str) -> dict:
  # malloc on huge pages, as the jobs run (host_malloc.py)
  env = common.huge_pages_env(dict(os.environ, XLA_FLAGS=SETTINGS[setting]))
  cmd = [sys.executable, os.path.abspath(__file__), "--child", "--rows", args.rows, "--platform", args.platform,
         "--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
  return common.run_child(cmd, f"xla_cpu_flags: the child process ({setting})", env)


def summarize(rounds: list[dict]) -> list[dict]:
  """Per row: each setting's median step time over rounds; per other setting, the per-round speed-up
  (default step / setting's step) and its mean."""
  rows = []
  for name in rounds[0]["default"]["rows"]:
    row = {"name": name, "step_s": {}, "speedup": {}, "speedup_per_round": {}}
    for setting in SETTINGS:
      row["step_s"][setting] = statistics.median(r[setting]["rows"][name]["step_s"] for r in rounds)
      if setting != "default":
        ratios = [r["default"]["rows"][name]["step_s"] / r[setting]["rows"][name]["step_s"] for r in rounds]
        row["speedup_per_round"][setting] = ratios
        row["speedup"][setting] = statistics.fmean(ratios)
    rows.append(row)
  return rows


def adopt(rows: list[dict]) -> list[str]:
  """The settings whose mean speed-up reaches ADOPT_AT on some row (the rule of the module docstring)."""
  return [s for s in SETTINGS if s != "default" and any(r["speedup"][s] >= ADOPT_AT for r in rows)]


def plot(rows: list[dict], path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  others = [s for s in SETTINGS if s != "default"]
  y = np.arange(len(others))
  fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 0.5 * len(others) + 1.8), sharey=True)
  for ax, r in zip(np.atleast_1d(axes), rows):
    ax.barh(y, [r["speedup"][s] for s in others], color="tab:blue")
    for i, s in enumerate(others):
      ax.plot(r["speedup_per_round"][s], [i] * len(r["speedup_per_round"][s]), "k|", markersize=12)
      ax.text(0.02, i, f"{r['speedup'][s]:.2f}x", va="center", color="white", fontweight="bold")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axvline(ADOPT_AT, color="tab:red", lw=0.8, ls="--")
    ax.set(yticks=y, yticklabels=others, title=r["name"], xlabel="default step / setting's step")
    ax.invert_yaxis()
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main():
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=2, help="rounds of one child per setting (order alternating)")
  p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows: " + ", ".join(ROWS))
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.quick:
    args.repeats, args.rounds = min(args.repeats, 3), min(args.rounds, 1)
  if args.child:
    return child(args)
  unknown = set(args.rows.split(",")) - set(ROWS)
  if unknown:
    sys.exit(f"xla_cpu_flags: unknown row(s) {', '.join(sorted(unknown))}; rows: {', '.join(ROWS)}")
  load_before = os.getloadavg()
  rounds = common.interleaved_rounds(args.rounds, list(SETTINGS), lambda setting: run_child(args, setting))
  rows = summarize(rounds)
  jax = common.setup_platform(args.platform)
  name = "quick" if args.quick else args.platform
  payload = {"machine": common.machine(jax), "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
             "settings": SETTINGS, "adopt_at": ADOPT_AT, "adopt": adopt(rows), "rounds": rounds, "rows": rows,
             "note": "each round: one child process per setting (XLA_FLAGS as listed), the same rows; speedup = "
                     "step time with the default flags / with the setting, per round and mean; step_s: median "
                     "over rounds."}
  common.write(args.out, f"xla_cpu_flags_{name}", payload)
  plot(rows, os.path.join(args.out, f"xla_cpu_flags_{name}.png"),
       f"XLA:CPU flags, {payload['machine']['cpu']} x{payload['machine']['cpu_count']}")
  for r in rows:
    print(f"{r['name']}: " + ", ".join(f"{s} {v:.2f}x" for s, v in r["speedup"].items()))
  print("adopt (>= 10% on a row): " + (", ".join(payload["adopt"]) or "none"))


if __name__ == "__main__":
  main()
