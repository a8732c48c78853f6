"""Do the grid's finished cells come out the same from the code as it is now?

The 1500-step grid (`segment_sweep.py --preset cpu1500`) trains every cell from a checkout pinned at
one commit, so that work on the code beside it cannot move a long experiment. A headline figure must
come from the code as it is, so this checks, one finished cell per kind, that today's code computes
the same numbers:
  - training: the cell's own run config (read from its workdir: data, tokenizer, seed, data order,
    schedule) is trained again from the start in a scratch folder for its first `--steps` steps,
    single-threaded as the grid's cells were, and the logged step (loss, gradient norm, parameter
    norm, accuracy, learning rate, label tokens) is compared with the cell's own metrics.jsonl;
  - decoding: the cell's final checkpoint decodes the test split again (its beam, length penalty and
    n-gram block) and the predictions are compared with the cell's predictions.jsonl, line by line.
Both comparisons are exact (bit for bit), not within a tolerance. Writes
`<out>/grid_reproduce_<platform>.json`: one record per cell, and the commit it ran at.

  python benchmarks/reproduce_cells.py --runs /path/to/the/grid/runs       # one cell per kind
  python benchmarks/reproduce_cells.py --runs ... --cells srformer_s8_padded,pooled_s8_padded
"""

from __future__ import annotations

import glob
import json
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import common  # noqa: E402

CELLS = os.path.join(common.RESULTS, "segment_sweep_cpu_steps1500")
# the fields of a metrics.jsonl record that the step computes (the rest are wall-clock rates)
TRAIN_FIELDS = ("loss", "grad_norm", "param_norm", "accuracy", "learning_rate", "tokens")


def select(cell_dir: str, runs: str) -> list[dict]:
  """One finished cell per (kind, schedule) of the grid's result files whose workdir is under
  `runs`: seed 0 at the grid's own step budget, the smallest s (where the segment kinds differ most
  from full attention)."""
  cells = []
  for path in sorted(glob.glob(os.path.join(cell_dir, "*.json"))):
    c = json.load(open(path))
    name = c.get("name") or os.path.basename(path)[:-len(".json")]
    if c.get("seed", 0) == 0 and not c.get("num_steps") and os.path.isdir(os.path.join(runs, name)):
      cells.append(dict(c, name=name))
  best: dict[tuple, dict] = {}
  for c in sorted(cells, key=lambda c: (c["s"] or 0, c["name"])):
    best.setdefault((c["kind"], c["schedule"]), c)
  return sorted(best.values(), key=lambda c: c["name"])


def run_config(workdir: str):
  """The config a run was trained with (its run_config.json; fields added since: their defaults)."""
  import ml_collections
  from srformer_jax.defaults import with_defaults
  with open(os.path.join(workdir, "run_config.json")) as f:
    return with_defaults(ml_collections.ConfigDict(json.load(f)))


def logged(workdir: str, step: int) -> dict:
  """The metrics.jsonl record of `step` (its TRAIN_FIELDS)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if r.get("step") == step:
        return {k: r.get(k) for k in TRAIN_FIELDS}
  raise ValueError(f"{workdir}/metrics.jsonl has no record of step {step}: pick --steps among its logged "
                   "steps (a multiple of the run's train.log_every)")


def predictions(path: str) -> list[str]:
  with open(path) as f:
    return [json.loads(line)["prediction"] for line in f]


def check_cell(workdir: str, steps: int, scratch: str | None = None) -> dict:
  """Trains `workdir`'s run config again for `steps` steps and decodes the test split again from its
  final checkpoint, with the code as it is; compares both with what the run wrote."""
  from srformer_jax import eval_lib, train_lib
  cfg = run_config(workdir)
  then = logged(workdir, steps)
  with tempfile.TemporaryDirectory(dir=scratch) as tmp:
    train_lib.train(cfg, tmp, stop_after=steps)
    now = logged(tmp, steps)
  with tempfile.TemporaryDirectory(dir=scratch) as tmp:
    scores = eval_lib.evaluate(cfg, workdir, out_dir=tmp)
    preds_now = predictions(os.path.join(tmp, "predictions.jsonl"))
  preds_then = predictions(os.path.join(workdir, "predictions.jsonl"))
  with open(os.path.join(workdir, "rouge.json")) as f:
    rouge_then = json.load(f)["rouge1"]
  differing = sum(a != b for a, b in zip(preds_then, preds_now)) + abs(len(preds_then) - len(preds_now))
  return dict(steps=steps, train_then=then, train_now=now, train_identical=then == now,
              examples=len(preds_now), predictions_differing=differing, predictions_identical=differing == 0,
              rouge1_then=rouge_then, rouge1_now=scores["rouge1"])


def main():
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--runs", required=True, help="the grid's run folder (one workdir per cell)")
  p.add_argument("--cells_dir", default=CELLS, help="the grid's result files (one per finished cell)")
  p.add_argument("--cells", default="", help="comma-separated cell names (default: one per kind)")
  p.add_argument("--steps", type=int, default=25, help="training steps to compare (a logged step)")
  p.add_argument("--scratch", default=None, help="folder for the scratch runs (default: the system's)")
  args = p.parse_args()
  if not os.path.isdir(args.runs):
    sys.exit(f"--runs {args.runs}: no such folder; pass the grid's run folder (segment_sweep.py --runs)")
  # the grid's cells ran two at a time, each on one thread: the same XLA:CPU configuration here
  os.environ["XLA_FLAGS"] = common.single_thread_flags(os.environ)
  jax = common.setup_platform(args.platform)
  if not args.cells:
    chosen = select(args.cells_dir, args.runs)
  else:
    names = args.cells.split(",")
    by_name = {os.path.basename(p)[:-len(".json")]: p for p in glob.glob(os.path.join(args.cells_dir, "*.json"))}
    missing = [n for n in names if n not in by_name or not os.path.isdir(os.path.join(args.runs, n))]
    if missing:
      sys.exit(f"--cells: no finished cell with a workdir under --runs named {', '.join(missing)}")
    chosen = [dict(json.load(open(by_name[n])), name=n) for n in names]
  if not chosen:
    sys.exit(f"no finished cell of {args.cells_dir} has a workdir under {args.runs}")
  records = []
  for c in chosen:
    print(f"== {c['name']}", flush=True)
    r = check_cell(os.path.join(args.runs, c["name"]), args.steps, args.scratch)
    records.append(dict(name=c["name"], kind=c["kind"], s=c["s"], schedule=c["schedule"], seed=c.get("seed", 0),
                        cell_commit=c.get("git_commit"), cell_clean=c.get("git_clean"), **r))
    print(json.dumps({k: records[-1][k] for k in ("name", "train_identical", "predictions_differing")}), flush=True)
  payload = {"machine": common.machine(jax), "cells_dir": os.path.relpath(args.cells_dir, REPO),
             "steps": args.steps, "records": records,
             "all_identical": all(r["train_identical"] and r["predictions_identical"] for r in records),
             "note": "each cell's run config trained again from the start for `steps` steps, and its final "
                     "checkpoint decoding the test split again, with the code at git_commit; compared exactly "
                     "with the cell's metrics.jsonl and predictions.jsonl"}
  common.write(args.out, f"grid_reproduce_{args.platform}", payload)


if __name__ == "__main__":
  main()
