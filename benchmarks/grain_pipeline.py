"""grain against the hand-written batching (`data.BatchIterator` + `prefetch.Prefetcher`).

The question (should grain, the JAX ecosystem's loader, replace our batching?) has three conditions:
grain must keep exact resume, give N processes the batches of 1 process, and keep the training loop
within 5% of the step alone. All three read the same tokenised split, shaped like the segment sweep's
(batch 16, 256 source and 64 target tokens; DialogSum's 12,460 training examples, lengths drawn to
match), so only the batching differs:

  ours              BatchIterator: a per-epoch permutation; each process collates its rows of the
                    global batch; state = (epoch, index, statistics)
  grain/sharded     grain's multi-process idiom: the shuffled index stream sliced per process
                    (`ds[p::n]`), then batched locally
  grain/global      grain made to match ours: global batches of indices, each process collates its
                    rows of them

Per pipeline: resume (7 batches, state, 5 more; a fresh iterator restored from the state gives the
same 5, across an epoch boundary too), N = 2 processes against 1 (the global batch assembled from
both processes' rows, bitwise, in row order, over 40 batches), and the host CPU time a batch costs
(single thread, no prefetch: the work that competes with the step for the cores), beside the sweep
step's time from `cpu_efficiency_cpu.json` when present.

  python benchmarks/grain_pipeline.py        (needs `pip install grain`; a few seconds)
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import common  # noqa: E402

BATCH, SRC, TGT, EXAMPLES, VOCAB = 16, 256, 64, 12460, 4000


class _Pad:
  """The tokenizer's only part batching uses."""
  pad_id = 0


def synthetic_split(n: int = EXAMPLES, seed: int = 0):
  """A TokenizedSplit with DialogSum-like lengths (untruncated source ~ 190 +- 90 tokens, summary ~ 30 +- 12)."""
  from srformer_jax import data
  rng = np.random.default_rng(seed)
  src_len = np.clip(rng.normal(190, 90, n), 20, 900).astype(np.int32)
  tgt_len = np.clip(rng.normal(30, 12, n), 4, 120).astype(np.int32)
  arrays = {"src_len": src_len, "tgt_len": tgt_len}
  for side, lens, cap in (("src", src_len, SRC), ("tgt", tgt_len, TGT)):
    kept = np.minimum(lens, cap)
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.cumsum(kept)
    arrays[f"{side}_tokens"] = rng.integers(2, VOCAB, offsets[-1]).astype(np.uint16)
    arrays[f"{side}_offsets"] = offsets
  return data.TokenizedSplit(arrays, {"max_source_len": SRC, "max_target_len": TGT, "num_examples": n})


def spec():
  from srformer_jax import data
  return data.BatchSpec(batch_size=BATCH, max_source_len=SRC, max_target_len=TGT)


# Each pipeline: make(table, seed, process, processes) -> iterator; state(it); restore(seed, ..., state).
def ours(table, seed, p=0, n=1):
  from srformer_jax import data
  rows = BATCH // n
  return data.BatchIterator(table, _Pad(), spec(), seed=seed, rows=(p * rows, (p + 1) * rows))


def _grain_iter(ds):
  import grain
  # no prefetch threads: the cost measured is the work of a batch, not how it overlaps
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def grain_sharded(table, seed, p=0, n=1):
  import grain
  from srformer_jax import data
  ds = grain.MapDataset.range(len(table)).shuffle(seed=seed).repeat()[p::n]
  ds = ds.batch(BATCH // n, batch_fn=lambda idx: data.collate([table.example(i) for i in idx], spec(), 0,
                                                               rows=BATCH // n))
  return _grain_iter(ds)


def grain_global(table, seed, p=0, n=1):
  import grain
  from srformer_jax import data
  rows = BATCH // n
  ds = grain.MapDataset.range(len(table)).shuffle(seed=seed).repeat().batch(BATCH, batch_fn=np.asarray)
  ds = ds.map(lambda idx: data.collate([table.example(i) for i in idx[p * rows:(p + 1) * rows]], spec(), 0,
                                       rows=rows))
  return _grain_iter(ds)


PIPELINES = {"ours": ours, "grain/sharded": grain_sharded, "grain/global": grain_global}


def _state(it):
  return it.state() if hasattr(it, "state") else it.get_state()


def _restore(it, state):
  it.restore(state) if hasattr(it, "restore") else it.set_state(state)
  return it


def _same(a: list[dict], b: list[dict]) -> bool:
  return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
                                  for x, y in zip(a, b))


def resumes_exactly(make, table) -> bool:
  """Stops after 7 batches and after 780 (past the first epoch of 12,460 / 16 = 778.75 batches)."""
  for before in (7, 780):
    it = make(table, 0)
    for _ in range(before):
      next(it)
    state = json.loads(json.dumps(_state(it)))  # a state survives being written to a checkpoint
    want = [next(it) for _ in range(5)]
    it2 = _restore(make(table, 0), state)
    got = [next(it2) for _ in range(5)]
    if not _same(want, got):
      return False
  return True


def processes_match_one(make, table, processes: int = 2, steps: int = 40) -> bool:
  one = make(table, 0)
  parts = [make(table, 0, p, processes) for p in range(processes)]
  for _ in range(steps):
    want = next(one)
    local = [next(it) for it in parts]
    got = {k: np.concatenate([b[k] for b in local]) for k in want}
    if not _same([want], [got]):
      return False
  return True


def same_examples_per_step(make, table, processes: int = 2, steps: int = 40) -> bool:
  """Weaker than `processes_match_one`: each global batch holds the 1-process batch's examples,
  in any row order."""
  one = make(table, 0)
  parts = [make(table, 0, p, processes) for p in range(processes)]
  key = lambda b: sorted(map(bytes, np.concatenate([b["input_ids"], b["labels"]], axis=1)))
  for _ in range(steps):
    want = next(one)
    local = [next(it) for it in parts]
    if key(want) != key({k: np.concatenate([b[k] for b in local]) for k in want}):
      return False
  return True


def host_ms_per_batch(make, table, batches: int = 400, repeats: int = 3) -> float:
  """CPU milliseconds (process time, one thread) to produce a batch, best of `repeats`."""
  best = float("inf")
  for _ in range(repeats):
    it = make(table, 1)
    next(it)
    t0 = time.process_time()
    for _ in range(batches):
      next(it)
    best = min(best, (time.process_time() - t0) / batches * 1e3)
  return best


def sweep_step_s() -> float | None:
  path = os.path.join(common.RESULTS, "cpu_efficiency_cpu.json")
  if not os.path.exists(path):
    return None
  rows = json.load(open(path))["rows"]
  return next((r["step_s"] for r in rows if r["name"] == "sweep/full"), None)


def main():
  p = common.parser(__doc__.split("\n")[0])
  args = p.parse_args()
  jax = common.setup_platform(args.platform)
  try:
    import grain
  except ImportError:
    sys.exit("grain is not installed: pip install grain (it is needed only by this benchmark)")
  table = synthetic_split()
  step_s = sweep_step_s()
  rows = []
  for name, make in PIPELINES.items():
    ms = host_ms_per_batch(make, table)
    row = {"pipeline": name, "resumes_exactly": resumes_exactly(make, table),
           "two_processes_bitwise_one": processes_match_one(make, table),
           "two_processes_same_examples_per_step": same_examples_per_step(make, table),
           "host_ms_per_batch": ms,
           "host_share_of_sweep_step": (ms / 1e3 / step_s) if step_s else None}
    rows.append(row)
    print(json.dumps(row), flush=True)
  payload = {"machine": common.machine(jax), "grain_version": grain.__version__,
             "shape": {"batch": BATCH, "max_source_len": SRC, "max_target_len": TGT, "examples": EXAMPLES},
             "sweep_step_s": step_s, "sweep_step_from": "cpu_efficiency_cpu.json (sweep/full)" if step_s else None,
             "rows": rows}
  common.write(args.out, f"grain_pipeline_{args.platform}", payload)


if __name__ == "__main__":
  main()
