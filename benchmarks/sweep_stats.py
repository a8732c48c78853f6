"""The segment sweep's groups and verdicts, from its cells (no jax: the report imports this).

A cell is one fine-tuning run (segment_sweep.py's record: kind, s, schedule, seed, rouge1,
rouge1_dev, ...); a group is every seed of one (kind, s, schedule[, steps]). Intervals are 95%:
Student-t over seeds, or a bootstrap over examples for a group of one seed. The verdicts are the
rules of the 1500-step grid, fixed before its numbers (issue 35):

  claim_at(s)   segmented below full and srformer above segmented (intervals separated),
                srformer >= 0.9 x full, xl between segmented and srformer;
  shape         srformer's means across s within 2 ROUGE-1 points of each other, while segmented
                at the smallest s is at least 3 points below segmented at the largest;
  table4(s)     srformer above each ablation (intervals separated), and the ablations' order
                beside the paper's.
The long-input grid (issue 36, four dialogues in) judges `claim_at(s, with_xl=False)` (xl is
reported, not part of its rule) behind `long_gate`: full attention reads its source (source gain
>= 0.5 nats/token) and tells its inputs apart (>= 450 distinct predictions of 500).
Each takes the metric it is judged on (`rouge1`: test; `rouge1_dev`: dev).
"""

from __future__ import annotations

from collections import Counter

from benchmarks import stats

METRICS = ("rouge1", "rouge2", "rougeL", "rougeLsum", "test_loss", "source_gain", "distinct_predictions",
           "rouge1_dev")
PER_EXAMPLE = {"rouge1": "rouge1_per_example", "rouge1_dev": "rouge1_dev_per_example"}
BY_POSITION = ("rouge1_by_position", "rouge1_dev_by_position",  # the long-input grid's per-position
               "source_gain_by_position")                       # ROUGE-1 and source gain
GATE_SOURCE_GAIN, GATE_DISTINCT = 0.5, 450
ABLATIONS = ("recurrent_only", "no_norm", "no_raf", "kv_segment")
SHAPE_SPREAD, SHAPE_COLLAPSE = 2.0, 3.0  # ROUGE-1 points


def aggregate(results: list[dict]) -> list[dict]:
  """Per group: mean and 95% interval of every metric over its seeds (Student-t); a group with one
  seed gets a bootstrap interval over examples for ROUGE-1 (test and dev) instead."""
  groups: dict[str, list[dict]] = {}
  for r in results:
    groups.setdefault(r.get("group") or r["name"], []).append(r)
  out = []
  for name, rs in groups.items():
    g = {k: rs[0][k] for k in ("kind", "s", "schedule")}
    g.update(group=name, seeds=sorted(r.get("seed", 0) for r in rs), steps=rs[0].get("steps"))
    for m in METRICS:
      vals = [r[m] for r in rs if r.get(m) is not None]
      g[m] = stats.mean_ci(vals) if vals else None
    for metric, per_example in PER_EXAMPLE.items():
      if g[metric] is None:
        continue
      if len(rs) == 1 and rs[0].get(per_example):
        boot = stats.bootstrap_ci(rs[0][per_example])
        split = "dev" if metric.endswith("_dev") else "test"
        g[metric] = dict(g[metric], lo=boot["lo"], hi=boot["hi"], interval=f"bootstrap over {split} examples")
      elif len(rs) > 1:
        g[metric]["interval"] = "t over seeds"
    for metric in BY_POSITION:  # one interval per position, over seeds
      vals = [r[metric] for r in rs if r.get(metric)]
      if vals:
        g[metric] = [stats.mean_ci([v[i] for v in vals]) for i in range(len(vals[0]))]
    out.append(g)
  return out


def one_commit(cells: list[dict]) -> tuple[str | None, list[dict], list[dict]]:
  """(commit, its cells, the others): the clean commit most cells were trained at. A headline table
  is rendered from that commit's cells only; the others are named, never mixed in."""
  clean = Counter(c.get("git_commit") for c in cells
                  if c.get("git_clean") and c.get("git_commit") and not c["git_commit"].endswith("-dirty"))
  if not clean:
    return None, [], list(cells)
  commit = clean.most_common(1)[0][0]
  keep = [c for c in cells if c.get("git_commit") == commit and c.get("git_clean")]
  return commit, keep, [c for c in cells if c not in keep]


def by_group(groups: list[dict]) -> dict[str, dict]:
  return {g["group"]: g for g in groups}


def name(kind: str, s=None, schedule: str = "padded", steps: int | None = None) -> str:
  """A group's name as segment_sweep.py writes it."""
  base = kind if s is None else f"{kind}_s{s}_{schedule}"
  return base + (f"_steps{steps}" if steps else "")


def planned_seeds(cells_planned: list[str]) -> dict[str, int]:
  """How many seeds a grid plans per group name (a cell is named as its group, with `_seed<k>` added
  for seeds after the first)."""
  planned: dict[str, int] = {}
  for cell in cells_planned:
    group = cell.rsplit("_seed", 1)[0] if "_seed" in cell else cell
    planned[group] = planned.get(group, 0) + 1
  return planned


def _above(a: dict, b: dict, metric: str) -> bool:
  return bool(a[metric]["mean"] > b[metric]["mean"] and stats.separated(a[metric], b[metric]))


def claim_at(by: dict, s: int, metric: str = "rouge1", with_xl: bool = True) -> dict:
  """The paper's claim at segment size s (Table 3 / Fig. 4) on `metric`; keys missing where a group
  has not run, `holds` only when every test is in and passes. `with_xl=False`: the rule without
  "xl between" (the long-input grid's, issue 36)."""
  full, seg, srf, xl = by.get("full"), by.get(name("segmented", s)), by.get(name("srformer", s)), by.get(name("xl", s))
  have = lambda g: g is not None and g.get(metric) is not None  # noqa: E731
  out = {"s": s, "metric": metric}
  if have(full) and have(seg):
    out["segmented_below_full"] = _above(full, seg, metric)
  if have(seg) and have(srf):
    out["srformer_above_segmented"] = _above(srf, seg, metric)
  if have(full) and have(srf):
    out["srformer_within_10pct_of_full"] = bool(srf[metric]["mean"] >= 0.9 * full[metric]["mean"])
    out["srformer_vs_full"] = srf[metric]["mean"] / full[metric]["mean"]
  if have(seg) and have(srf) and have(xl):
    lo, hi = sorted((seg[metric]["mean"], srf[metric]["mean"]))
    out["xl_between"] = bool(lo <= xl[metric]["mean"] <= hi)
  keys = ("segmented_below_full", "srformer_above_segmented", "srformer_within_10pct_of_full") + (
      ("xl_between",) if with_xl else ())
  out["complete"] = all(k in out for k in keys)
  out["holds"] = out["complete"] and all(out[k] for k in keys)
  return out


def long_gate(by: dict) -> dict:
  """Issue 36's gate before the long-input comparison: full attention's mean source gain >= 0.5
  nats/token and mean distinct test predictions >= 450 (of 500)."""
  full = by.get("full")
  if not full or not full.get("source_gain") or not full.get("distinct_predictions"):
    return {"complete": False, "holds": False}
  gain, distinct = full["source_gain"]["mean"], full["distinct_predictions"]["mean"]
  return {"complete": True, "source_gain": gain, "distinct_predictions": distinct,
          "holds": bool(gain >= GATE_SOURCE_GAIN and distinct >= GATE_DISTINCT)}


def shape(by: dict, sizes, metric: str = "rouge1") -> dict:
  """Fig. 4's shape: srformer flat across s (spread of its means <= 2 points) while segmented
  collapses (smallest s at least 3 points below the largest)."""
  srf = [by[name("srformer", s)][metric]["mean"] for s in sizes if by.get(name("srformer", s), {}).get(metric)]
  seg = {s: by[name("segmented", s)][metric]["mean"] for s in (min(sizes), max(sizes))
         if by.get(name("segmented", s), {}).get(metric)}
  out = {"metric": metric, "sizes": list(sizes)}
  if len(srf) == len(sizes):
    out["srformer_spread"] = max(srf) - min(srf)
    out["srformer_flat"] = bool(out["srformer_spread"] <= SHAPE_SPREAD)
  if len(seg) == 2:
    out["segmented_drop"] = seg[max(sizes)] - seg[min(sizes)]
    out["segmented_collapses"] = bool(out["segmented_drop"] >= SHAPE_COLLAPSE)
  out["complete"] = "srformer_flat" in out and "segmented_collapses" in out
  out["holds"] = out["complete"] and out["srformer_flat"] and out["segmented_collapses"]
  return out


def table4(by: dict, s: int, paper: dict, metric: str = "rouge1") -> dict:
  """Table 4 at s: srformer above each ablation (intervals separated); the ablations' order (best
  first) beside the paper's."""
  srf = by.get(name("srformer", s))
  abl = {k: by[name(k, s)] for k in ABLATIONS if by.get(name(k, s), {}).get(metric)}
  out = {"s": s, "metric": metric, "paper_order": sorted(ABLATIONS, key=lambda k: -paper[k])}
  if srf and srf.get(metric):
    out["srformer_above"] = {k: _above(srf, g, metric) for k, g in abl.items()}
  out["order"] = sorted(abl, key=lambda k: -abl[k][metric]["mean"])
  out["complete"] = len(abl) == len(ABLATIONS) and "srformer_above" in out
  out["holds"] = out["complete"] and all(out["srformer_above"].values())
  out["same_order_as_paper"] = out["complete"] and out["order"] == out["paper_order"]
  return out
