"""SRformer against the cheap cross-attentions a practitioner would try instead: quality against cost.

Reads what other scripts measured and writes `cross_attention_alternatives_<platform>.json` and
`.png` (the Pareto view):
  - quality: the cells of the 1500-step grid (`segment_sweep.py --preset cpu1500`, one result file
    per cell under `segment_sweep_cpu_steps1500/`): every kind at s = 8 (3 seeds) and s = 64, test
    and dev ROUGE-1, source gain;
  - cost: XLA flops of one cross-attention against full attention at the paper's Table 1 shapes
    (`cross_attention_cost.py`; for `gru_memory`, whose per-segment cell is a loop XLA counts once,
    the analytic matmul count is given beside it), and greedy decoding time per token at k = 16384,
    T5-small shapes (`decode_scaling.py --tag alternatives`).

  python benchmarks/alternatives.py            # after the three above
Needs no jax.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import common, stats, sweep_stats  # noqa: E402
from benchmarks.sweep_stats import aggregate, one_commit  # noqa: E402

KINDS = ("full", "segmented", "xl", "srformer", "pooled", "linear", "local_window", "gru_memory")
ALTERNATIVES = ("pooled", "linear", "local_window", "gru_memory")
SEGMENTLESS = ("full", "linear")
DECODE_K = 16384
GATE = {"source_gain": 0.5, "distinct_predictions": 450}  # full attention reads its dialogue


def records(cell_dir: str, cost: dict | None, decode: dict | None) -> tuple[list[dict], str | None, list[str]]:
  """(one record per grid cell of a kind compared here: 1500 steps, padded schedule, s in {8, 64},
  the cells of the one clean commit most of them ran at; that commit; the names of the cells left
  out as of another commit or an uncommitted tree)."""
  cells = []
  for path in sorted(glob.glob(os.path.join(cell_dir, "*.json"))):
    c = json.load(open(path))
    if c["kind"] not in KINDS or c.get("num_steps") or c["schedule"] != "padded" or c["s"] not in (None, 8, 64):
      continue
    cells.append(dict(c, name=c.get("name") or os.path.basename(path)[:-len(".json")]))
  commit, keep, other = one_commit(cells)
  out = []
  for c in keep:
    out.append(dict(name=c["name"], kind=c["kind"], s=c["s"], seed=c["seed"], rouge1=c["rouge1"], rouge1_dev=c.get("rouge1_dev"),
                    source_gain=c.get("source_gain"), distinct_predictions=c.get("distinct_predictions"),
                    rouge1_per_example=c.get("rouge1_per_example"),
                    rouge1_dev_per_example=c.get("rouge1_dev_per_example"),
                    **cost_of(c["kind"], c["s"], cost, decode), git_commit=c.get("git_commit"),
                    git_clean=c.get("git_clean"), steps=c["steps"]))
  return out, commit, sorted(c["name"] for c in other)


def cost_of(kind: str, s, cost: dict | None, decode: dict | None) -> dict:
  """flops vs full (XLA, and the analytic matmul count) and decode ms/token at k = DECODE_K."""
  size = 64 if s is None else s  # whole-input kinds have one cost row, filed under s = 64
  out = {"flops_vs_full": None, "flops_vs_full_analytic": None, "decode_ms_per_token_k16384": None,
         "decode_vs_full_k16384": None}
  if cost:
    row = [r for r in cost["rows"] if r["kind"] == kind and (kind in SEGMENTLESS or r["s"] == size)]
    if row:
      out["flops_vs_full"] = row[0]["ratio_to_full"]
      out["flops_vs_full_analytic"] = row[0].get("analytic_ratio_to_full")
  if decode:
    row = [r for r in decode["rows"] if r["kind"] == kind and r["k"] == DECODE_K
           and (kind in SEGMENTLESS or r.get("s") == size)]
    if row:
      out["decode_ms_per_token_k16384"] = row[0]["per_token_ms"]
      out["decode_vs_full_k16384"] = row[0].get("per_token_vs_full")
  return out


def groups(recs: list[dict]) -> list[dict]:
  """Per (kind, s): mean and 95% interval (t over seeds; one seed: bootstrap over examples), and cost."""
  gs = aggregate([dict(r, schedule="padded", group=f"{r['kind']}_s{r['s']}") for r in recs])
  for g in gs:
    g.update({k: next(r[k] for r in recs if (r["kind"], r["s"]) == (g["kind"], g["s"]))
              for k in ("flops_vs_full", "flops_vs_full_analytic", "decode_ms_per_token_k16384",
                        "decode_vs_full_k16384")})
  return sorted(gs, key=lambda g: (KINDS.index(g["kind"]), g["s"] or 0))


def verdict(gs: list[dict], s: int = 8, cells_planned: list[str] | None = None) -> dict:
  """At segment size s: the gate (full attention reads its input), then each alternative against
  SRformer on test and dev ROUGE-1: above / below with separated 95% intervals, or not separated.
  A group with fewer seeds than `cells_planned` holds for it gets no verdict yet: {"waits": "n of N"}."""
  by = {(g["kind"], g["s"]): g for g in gs}
  planned_by_group = sweep_stats.planned_seeds(cells_planned or [])
  full, srf = by.get(("full", None)), by.get(("srformer", s))
  out = {"s": s, "rule": "above / below SRformer: means differ and 95% intervals are separated; "
                         f"gate: full attention's source gain >= {GATE['source_gain']} nats/token and "
                         f">= {GATE['distinct_predictions']} distinct test predictions; a kind is judged once all "
                         "the seeds the grid plans for it are in"}
  if full:
    out["gate"] = bool(full["source_gain"]["mean"] >= GATE["source_gain"]
                       and full["distinct_predictions"]["mean"] >= GATE["distinct_predictions"])
  if not srf:
    return out
  for kind in ALTERNATIVES:
    ks = None if kind in SEGMENTLESS else s
    g = by.get((kind, ks))
    if not g:
      continue
    planned = planned_by_group.get(sweep_stats.name(kind, ks), 0)
    if len(g["seeds"]) < planned:
      out[kind] = {"waits": f"{len(g['seeds'])} of {planned} seeds"}
      continue
    out[kind] = {}
    for split, metric in (("test", "rouge1"), ("dev", "rouge1_dev")):
      a, b = g.get(metric), srf.get(metric)
      if not a or not b:
        continue
      side = "above" if a["mean"] > b["mean"] else "below"
      out[kind][split] = side if stats.separated(a, b) else "not separated"
  return out


def _dodge(points: list[tuple[float, float]], xlog: bool, min_dx: float = 0.16, min_dy: float = 0.045) -> list[float]:
  """Vertical label offsets (points) so that labels of nearby markers do not overlap: each label,
  taken bottom to top, moves up past every label already placed within `min_dx` / `min_dy` of it
  (fractions of the axes, x on a log scale where the axis is)."""
  if not points:
    return []
  xs = [math.log10(x) if xlog else x for x, _ in points]
  ys = [y for _, y in points]
  span = lambda v: (max(v) - min(v)) or 1.0  # noqa: E731
  fx = [(x - min(xs)) / span(xs) for x in xs]
  fy = [(y - min(ys)) / span(ys) for y in ys]
  placed, offsets = [], [0.0] * len(points)
  for i in sorted(range(len(points)), key=lambda i: fy[i]):
    y = fy[i]
    while any(abs(fx[i] - fx[j]) < min_dx and abs(y - py) < min_dy for j, py in placed):
      y += min_dy
    placed.append((i, y))
    offsets[i] = (y - fy[i]) * 280  # ~ the axes' height in points
  return offsets


def plot(gs: list[dict], out_dir: str, name: str):
  """ROUGE-1 (test, 95% interval) against flops vs full and against decode time per token."""
  plt = common.plt()
  from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
  colors = dict(zip(KINDS, ("k", "tab:red", "tab:orange", "tab:blue", "tab:purple", "tab:brown", "tab:olive",
                            "tab:green")))
  for ax, key, label in ((axes[0], "flops", "cross-attention flops / full (q 128, k 1024, d 64)"),
                         (axes[1], "decode_ms_per_token_k16384", f"greedy decode ms per token, k = {DECODE_K}")):
    shown = []
    for g in gs:
      x = (g["flops_vs_full_analytic"] if g["kind"] == "gru_memory" else g["flops_vs_full"]) if key == "flops" \
          else g[key]
      if x is not None and g["rouge1"]:
        shown.append((x, g))
    pts = [(x, g["rouge1"]["mean"]) for x, g in shown]
    for (x, g), dy in zip(shown, _dodge(pts, xlog=True)):
      c = g["rouge1"]
      err = None if c.get("lo") is None else [[c["mean"] - c["lo"]], [c["hi"] - c["mean"]]]
      ax.errorbar([x], [c["mean"]], yerr=err, fmt="o" if g["s"] != 64 else "s", color=colors[g["kind"]], capsize=3)
      ax.annotate(g["kind"] + ("" if g["s"] is None else f" s={g['s']}"), (x, c["mean"]), fontsize=7,
                  xytext=(4, 3 + dy), textcoords="offset points", color=colors[g["kind"]])
    front, best = [], float("-inf")  # the Pareto front: nothing cheaper is better
    for x, y in sorted(pts):
      if y > best:
        front.append((x, y))
        best = y
    if front:
      ax.plot(*zip(*front), ":", color="gray", lw=1, label="Pareto front")
      ax.legend(fontsize=8, loc="lower right")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label + " (log)")
    ax.set_ylabel("ROUGE-1 (DialogSum test)")
    ax.grid(alpha=0.3)
  fig.suptitle("Quality against cost: circles s = 8 (or no segments), squares s = 64; "
               "bars 95% intervals (seeds in the table)")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, f"{name}.png"), dpi=110)
  plt.close(fig)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--platform", default="cpu")
  p.add_argument("--out", default=common.RESULTS)
  p.add_argument("--grid", default="segment_sweep_cpu_steps1500", help="the grid's per-cell folder under --out")
  args = p.parse_args()
  load = lambda n: json.load(open(os.path.join(args.out, n))) if os.path.exists(os.path.join(args.out, n)) else None  # noqa: E731
  cost = load(f"cross_attention_cost_{args.platform}.json")
  decode = load(f"decode_scaling_{args.platform}_alternatives.json")
  grid = load(f"{args.grid}.json") or {}
  recs, commit, other = records(os.path.join(args.out, args.grid), cost, decode)
  gs = groups(recs)
  name = f"cross_attention_alternatives_{args.platform}"
  payload = {"machine": grid.get("machine") or (cost or {}).get("machine"), "grid": args.grid,
             "protocol": "fine-tuned from the reader, the grid's budget and optimiser (see the grid's JSON)",
             "overrides": grid.get("overrides"), "decode_machine": (decode or {}).get("machine"),
             "decode_git_commit": (decode or {}).get("git_commit"),
             "git_commit": commit,  # the cells' code, not this script's
             "alternative_cells_planned": sorted(n for n in grid.get("cells_planned", [])
                                                 if n.startswith(ALTERNATIVES)),
             "alternative_cells_done": sorted(r["name"] for r in recs if r["kind"] in ALTERNATIVES),
             "cells_left_out": other,  # of another commit or an uncommitted tree: never mixed in
             "records": [{k: v for k, v in r.items() if not k.endswith("per_example")} for r in recs],
             "groups": gs, "verdict_s8": verdict(gs, 8, grid.get("cells_planned")),
             "verdict_s64": verdict(gs, 64, grid.get("cells_planned"))}
  common.write(args.out, name, payload)
  plot(gs, args.out, name)


if __name__ == "__main__":
  main()
