"""Intervals for the experiment tables: Student-t over seeds, percentile bootstrap over examples."""

from __future__ import annotations

import math
import statistics

# two-sided 95% quantiles of Student's t, t_{0.975, df}, df = 1..30 (beyond: the normal 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
  if df < 1:
    raise ValueError(f"a t interval needs at least 2 values (df >= 1), got df={df}")
  return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci(values) -> dict:
  """Mean and 95% interval (Student-t over independent runs, e.g. seeds); one value: no interval."""
  values = [float(v) for v in values]
  if not values:
    raise ValueError("mean_ci of no values")
  mean = statistics.fmean(values)
  if len(values) == 1:
    return {"n": 1, "mean": mean, "lo": None, "hi": None, "std": None}
  std = statistics.stdev(values)
  half = t975(len(values) - 1) * std / math.sqrt(len(values))
  return {"n": len(values), "mean": mean, "lo": mean - half, "hi": mean + half, "std": std}


def bootstrap_ci(per_example, statistic=statistics.fmean, reps: int = 1000, seed: int = 0) -> dict:
  """Mean and 95% percentile-bootstrap interval of `statistic` over resampled examples."""
  import numpy as np
  x = np.asarray(per_example, dtype=np.float64)
  if x.size == 0:
    raise ValueError("bootstrap_ci of no examples")
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, x.size, size=(reps, x.size))
  stats = np.sort([statistic(x[i]) for i in idx])
  return {"n": int(x.size), "mean": float(statistic(x)), "lo": float(stats[int(0.025 * reps)]),
          "hi": float(stats[int(0.975 * reps) - 1]), "bootstrap_reps": reps}


def separated(a: dict, b: dict) -> bool:
  """True when two intervals (dicts with lo/hi) do not overlap; False if either has none."""
  if None in (a.get("lo"), a.get("hi"), b.get("lo"), b.get("hi")):
    return False
  return a["hi"] < b["lo"] or b["hi"] < a["lo"]


def format_ci(c: dict | None, fmt: str = ".2f") -> str:
  """'mean [lo, hi]' of a mean_ci / bootstrap_ci dict; the mean alone without an interval; '–' for None."""
  if c is None:
    return "–"
  if c.get("lo") is None:
    return format(c["mean"], fmt)
  return f"{format(c['mean'], fmt)} [{format(c['lo'], fmt)}, {format(c['hi'], fmt)}]"
