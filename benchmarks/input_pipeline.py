"""The real training loops' steps/s against the train step alone (same model, same batch shape).

The loop (`train_lib.train`, train.py's) reads the tokenised split, collates, puts batches on the
devices in a background thread (prefetch 2) and logs; the step alone runs the jitted step on one batch
that is already on the device. Sizes: tiny, small (configs/default.py), sweep (the segment sweep's
model: d 128, 2+2 layers, batch 16, k 256, q 64, srformer s = 8) and lm (train_lm.py's loop,
`crt.train.train`, on the WordPTB protocol's CRT L/4: d 128, 2 layers, batch 32, L 64, on a generated
word stream). The goal is the loop within 5% of the step. Both run as the jobs run: the script
re-executes itself with glibc malloc on huge pages (srformer_jax/host_malloc.py).

python benchmarks/input_pipeline.py [--platform cpu] [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

SIZES = {
    # name: (model.scratch overrides, batch, max_source_len, max_target_len)
    "tiny": (dict(d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=1, num_decoder_layers=1,
                  relative_attention_num_buckets=8), 8, 48, 16),
    "small": (dict(d_model=128, num_heads=4, d_kv=32, d_ff=256, num_encoder_layers=2, num_decoder_layers=2,
                   relative_attention_num_buckets=16), 32, 128, 32),  # configs/default.py
    "sweep": (dict(d_model=128, num_heads=4, d_kv=32, d_ff=512, num_encoder_layers=2, num_decoder_layers=2,
                   relative_attention_num_buckets=32), 16, 256, 64),  # configs/dialogsum_sweep.py
}
LM = dict(d_model=128, num_heads=4, d_ff=512, num_layers=2, batch=32, context=64, vocab=10000)


def config(size: str, steps: int, log_every: int):
  from configs import base
  scratch, batch, src_len, tgt_len = SIZES[size]
  cfg = base.base_config()
  cfg.model.init_from = ""
  cfg.model.segment_size = 16 if size == "small" else 8
  cfg.model.scratch.update(scratch)
  cfg.data.update(source="docstrings", train_split="train", eval_split="test", tokenizer="train_spm",
                  spm_vocab_size=2000, max_source_len=src_len, max_target_len=tgt_len)
  cfg.train.update(batch_size=batch, num_steps=steps, learning_rate=1e-3, warmup_steps=2, log_every=log_every,
                   save_every=10 ** 9, mesh_shape=(1, 1, 1))
  return cfg


def _interval_rates(run_dir: str, rate=lambda row: row["steps_per_s"]) -> list[float]:
  """`rate` of each logging interval in a run's metrics.jsonl, the first (compilation) left out."""
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [rate(r) for r in rows[1:]]


def _time_steps(step, state, steps: int, repeats: int) -> list[float]:
  """steps/s of `repeats` rounds of `steps` calls `state, metrics = step(state)`, after one call
  that compiles; one host sync per round, as the loops have (async dispatch)."""
  import jax
  state, m = step(state)
  jax.block_until_ready(state)
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(steps):
      state, m = step(state)
    jax.block_until_ready((state, m))
    out.append(steps / (time.perf_counter() - t0))
  return out


def loop_steps_per_s(cfg, workdir: str) -> list[float]:
  """train.py's loop (`train_lib.train`): steps/s of each logging interval of a fresh run."""
  import shutil
  from srformer_jax import train_lib
  for sub in ("checkpoints", "metrics.jsonl", "tb"):
    p = os.path.join(workdir, sub)
    if os.path.isdir(p):
      shutil.rmtree(p)
    elif os.path.exists(p):
      os.remove(p)
  train_lib.train(cfg, workdir)
  return _interval_rates(workdir)


def step_alone_steps_per_s(cfg, workdir: str, steps: int, repeats: int, guard: bool = True) -> list[float]:
  import jax
  from srformer_jax import data, run_setup, train_lib
  run = run_setup.setup_training(cfg, workdir)
  tx, schedule = train_lib.make_optimizer(cfg)
  trainer = train_lib.Trainer(run.model, tx, schedule, run_setup.make_mesh(cfg), guard=guard)
  it = data.BatchIterator(run.train_data, run.tokenizer, run_setup.batch_spec(cfg), seed=0)
  batch, rng = trainer.shard_batch(next(it)), jax.random.key(0)
  first_bad = {"step": None}  # the guard's state, threaded from step to step as the loop does

  def step(state):
    state, m = trainer.step(state, batch, rng, first_bad["step"])
    first_bad["step"] = m["first_bad_step"]
    return state, m
  return _time_steps(step, trainer.init_state(jax.random.key(1)), steps, repeats)


def lm_config(workdir: str, steps: int, log_every: int):
  """The WordPTB protocol's CRT L/4 (benchmarks/crt_ptb.py's CPU preset) on a generated word stream."""
  import numpy as np
  from configs import lm_ptb
  rng = np.random.default_rng(0)
  paths = {}
  for split, lines in (("train", 2000), ("valid", 100), ("test", 100)):
    paths[f"{split}_path"] = os.path.join(workdir, f"words.{split}.txt")
    with open(paths[f"{split}_path"], "w") as f:
      f.write("<unk>\n")  # as in PTB: words unseen in training read as <unk>
      for _ in range(lines):
        f.write(" ".join(f"w{i}" for i in rng.integers(0, LM["vocab"], 40)) + "\n")
  cfg = lm_ptb.lm_config("crt", "quarter", context_len=LM["context"])
  cfg.model.update(d_model=LM["d_model"], num_heads=LM["num_heads"], d_ff=LM["d_ff"], num_layers=LM["num_layers"],
                   dropout_rate=0.1)
  cfg.data.update(data_dir="", **paths)
  cfg.train.update(batch_size=LM["batch"], num_steps=steps, log_every=log_every, save_every=10 ** 9, eval_every=0,
                   learning_rate=2e-3, warmup_steps=2, mesh_shape=(1, 1, 1))
  return cfg


def lm_loop_steps_per_s(cfg, workdir: str) -> list[float]:
  """train_lm.py's loop (`crt.train.train`): steps/s of each logging interval of a fresh run."""
  import shutil
  from srformer_jax.crt import train as lm_train
  run = os.path.join(workdir, "lm_run")
  shutil.rmtree(run, ignore_errors=True)
  lm_train.train(cfg, run)
  tokens_per_step = cfg.train.batch_size * cfg.train.segments_per_step * cfg.model.segment_len
  return _interval_rates(run, lambda row: row["tokens_per_s"] / tokens_per_step)


def lm_step_alone_steps_per_s(cfg, workdir: str, steps: int, repeats: int) -> list[float]:
  import jax
  from srformer_jax import sharding
  from srformer_jax.crt import data as lm_data
  from srformer_jax.crt import train as lm_train
  model, _, ids = lm_train.setup(cfg, os.path.join(workdir, "lm_run"))
  tx, schedule = lm_train.make_optimizer(cfg)
  t = cfg.train
  trainer = lm_train.LMTrainer(model, tx, schedule, sharding.make_mesh((1, 1, 1)), t.batch_size, t.truncate_every)
  it = lm_data.StreamIterator(ids["train"], t.batch_size, t.segments_per_step * model.config.segment_len)
  batch = trainer.put(trainer.window(*next(it)))  # on the device once
  rng = jax.random.key(0)
  return _time_steps(lambda state: trainer.step(state, batch, rng),
                     trainer.init_state(jax.random.key(1)), steps, repeats)


def main():
  p = common.parser(__doc__)
  p.add_argument("--sizes", default="tiny,small,sweep,lm")
  args = p.parse_args()
  jax = common.setup_platform(args.platform)
  steps, log_every = (40, 10) if args.quick else (120, 20)
  results = {"machine": common.machine(jax), "steps_per_interval": log_every, "sizes": {}}
  previous = os.path.join(args.out, f"input_pipeline_{args.platform}.json")
  if os.path.exists(previous) and not args.quick:  # sizes not measured this time keep their rows
    with open(previous) as f:
      results["sizes"] = json.load(f).get("sizes", {})
  with tempfile.TemporaryDirectory() as workdir:
    sizes = "tiny,lm" if args.quick and args.sizes == p.get_default("sizes") else args.sizes
    for size in sizes.split(","):
      big = size in ("sweep", "lm")  # ~0.5-1 s steps: fewer of them
      n, every = (steps // 4, log_every // 2) if big and not args.quick else (steps, log_every)
      if size == "lm":
        cfg = lm_config(workdir, n, every)
      else:
        cfg = config(size, n, every)
      loop, alone, unguarded = [], [], []
      rounds = max(1, args.repeats // 2)
      if size == "lm" and not args.quick:  # its loop makes two timed intervals per round: more rounds
        rounds = max(rounds, 5)
      for _ in range(rounds):  # alternate, so load changes hit all alike
        if size == "lm":
          loop += lm_loop_steps_per_s(cfg, workdir)
          alone += lm_step_alone_steps_per_s(cfg, workdir, every, 3)
        else:
          loop += loop_steps_per_s(cfg, workdir)
          alone += step_alone_steps_per_s(cfg, workdir, every, 3)
          unguarded += step_alone_steps_per_s(cfg, workdir, every, 3, guard=False)
      r = {"loop_steps_per_s": statistics.median(loop), "step_alone_steps_per_s": statistics.median(alone),
           "loop_samples": loop, "alone_samples": alone, "batch_size": cfg.train.batch_size,
           "loop": "train_lm.py" if size == "lm" else "train.py", "steps_per_interval": every,
           "steps": n}
      if unguarded:
        r.update(step_without_divergence_guard_steps_per_s=statistics.median(unguarded),
                 unguarded_samples=unguarded, max_source_len=cfg.data.max_source_len)
        r["guard_cost"] = 1 - r["step_alone_steps_per_s"] / r["step_without_divergence_guard_steps_per_s"]
      r["loop_over_alone"] = r["loop_steps_per_s"] / r["step_alone_steps_per_s"]
      results["sizes"][size] = r
      print(size, {k: round(v, 3) for k, v in r.items() if isinstance(v, float)}, flush=True)
  name = f"input_pipeline_{args.platform}"
  common.write(args.out, name, results)
  plt = common.plt()
  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  names = list(results["sizes"])
  xs = range(len(names))
  ax.bar([x - 0.2 for x in xs], [results["sizes"][n]["step_alone_steps_per_s"] for n in names], 0.4,
         label="step alone")
  ax.bar([x + 0.2 for x in xs], [results["sizes"][n]["loop_steps_per_s"] for n in names], 0.4,
         label="training loop (data + prefetch)")
  for x, n in zip(xs, names):
    ax.text(x + 0.2, results["sizes"][n]["loop_steps_per_s"], f"{results['sizes'][n]['loop_over_alone']:.0%}",
            ha="center", va="bottom", fontsize=8)
  ax.set_xticks(list(xs), names)
  ax.set_ylabel("steps / s")
  ax.set_yscale("log")
  ax.set_title(f"input pipeline ({results['machine']['device']})", fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, f"{name}.png"), dpi=100)
  print(f"wrote {os.path.join(args.out, name + '.png')}")


if __name__ == "__main__":
  from srformer_jax import host_malloc
  host_malloc.reexec_with_huge_pages()  # as the training jobs run (train.py, train_lm.py)
  main()
