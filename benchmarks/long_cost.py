"""What each cross-attention kind costs at k = 1024 on the long-input task (issue 36, part A).

The long-input grid's model (the reader `benchmarks/reader/cpu_infill`: d 128, 2+2 layers, its
4,000-piece vocabulary), its shapes (k 1024, q 256, batch 8) and its dropout (0.1), with the grid's
kinds: full; segmented, srformer and xl at s = 8 and 64. Per kind:
  train step   one jitted train step (`train_lib.make_train_step`, AdamW as the grid), seconds;
  decode       greedy decoding per generated token (`decoding.greedy_from_cache`, EOS banned so
               every run decodes `--new_tokens`), from a cache made beforehand: the per-input work
               (cross-attention K/V, SRformer's K^T V and ||K||) is timed apart, milliseconds.
Random weights and inputs (the time does not depend on the values). Rounds are interleaved (each
round times every kind once, in a rotated order) so a slow minute of the machine touches every kind;
the medians over rounds are reported with each kind's ratio to full. `--threads 1` (default): one
XLA:CPU thread, as each of the grid's cells trains; run it alone on the machine.

python benchmarks/long_cost.py [--rounds 5] [--threads 1] [--quick]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

READER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reader", "cpu_infill", "config.json")
KINDS = [("full", None), ("segmented", 8), ("srformer", 8), ("xl", 8), ("segmented", 64), ("srformer", 64),
         ("xl", 64)]


def setups(kinds, k: int, q: int, batch: int, new_tokens: int, steps: int):
  """Per kind: train(), init() -> cache and steps(cache): jitted work, each blocking on its result."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from srformer_jax import ModelConfig, build_model, init_params
  from srformer_jax.train_lib import TrainState, make_train_step

  rng = np.random.default_rng(0)
  out = {}
  for kind, s in kinds:
    cfg = ModelConfig.from_hf(READER, cross_attention=kind, segment_size=s or 8, gen_len=q, dropout_rate=0.1)
    model = build_model(cfg)
    params = init_params(cfg, jax.random.key(0))
    batch_arrays = {"input_ids": jnp.asarray(rng.integers(2, cfg.vocab_size, (batch, k)), jnp.int32),
                    "attention_mask": jnp.ones((batch, k), jnp.int32),
                    "labels": jnp.asarray(rng.integers(2, cfg.vocab_size, (batch, q)), jnp.int32),
                    "label_mask": jnp.ones((batch, q), jnp.int32)}
    tx = optax.adamw(1e-3)
    step_fn = jax.jit(make_train_step(model, tx, lambda step: 1e-3), donate_argnums=(0,))
    own = jax.tree.map(jnp.copy, params)  # the step donates its state; decoding keeps `params`
    holder = {"state": TrainState(step=jnp.zeros((), jnp.int32), params=own, opt_state=tx.init(own))}

    def train(step_fn=step_fn, holder=holder, batch_arrays=batch_arrays):
      for _ in range(steps):  # `steps` calls, one sync at the end (the loop's async dispatch)
        holder["state"], m = step_fn(holder["state"], batch_arrays, jax.random.key(1), jnp.int32(-1))
      jax.block_until_ready((holder["state"], m))

    enc = jax.random.normal(jax.random.key(1), (batch, k, cfg.d_model))
    mask = jnp.ones((batch, k), jnp.int32)
    ini, decode_steps = common.greedy_decode_fns(model, batch, new_tokens)  # a fresh cache for each call
    out[(kind, s)] = dict(train=train,
                          init=lambda ini=ini, p=params: jax.block_until_ready(ini(p, enc, mask)),
                          steps=lambda cache, fn=decode_steps, p=params: jax.block_until_ready(fn(p, cache)))
  return out


def main():
  p = common.parser(__doc__)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--threads", type=int, default=1, help="1: single-threaded XLA:CPU, as the grid's cells run")
  p.add_argument("--k", type=int, default=1024)
  p.add_argument("--q", type=int, default=256)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--new_tokens", type=int, default=128)
  p.add_argument("--steps", type=int, default=3, help="train steps per timed call")
  args = p.parse_args()
  if args.threads == 1 and args.platform == "cpu":
    os.environ["XLA_FLAGS"] = common.single_thread_flags(os.environ)
  jax = common.setup_platform(args.platform)
  k, q, batch, new_tokens, rounds = args.k, args.q, args.batch, args.new_tokens, args.rounds
  if args.quick:
    k, q, batch, new_tokens, rounds = 128, 32, 2, 8, 2
  kinds = KINDS
  fns = setups(kinds, k, q, batch, new_tokens, args.steps)
  compile_s = {}
  for key, f in fns.items():  # compile everything first: the rounds time only runs
    t0 = time.perf_counter()
    f["train"](), f["steps"](f["init"]())
    compile_s[key] = time.perf_counter() - t0
  samples = {key: {"train_step_s": [], "decode_steps_s": [], "decode_init_s": []} for key in fns}
  from tqdm.auto import tqdm
  for r in tqdm(range(rounds), desc="rounds"):
    order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]  # rotated: no kind always first
    for key in order:
      f, x = fns[key], samples[key]
      t0 = time.perf_counter()
      f["train"]()
      t1 = time.perf_counter()
      cache = f["init"]()
      t2 = time.perf_counter()
      f["steps"](cache)
      t3 = time.perf_counter()
      x["train_step_s"].append((t1 - t0) / args.steps)
      x["decode_init_s"].append(t2 - t1)
      x["decode_steps_s"].append(t3 - t2)
  rows = []
  for kind, s in kinds:
    x = samples[(kind, s)]
    med = {name: statistics.median(v) for name, v in x.items()}
    rows.append(dict(kind=kind, s=s, train_step_s=med["train_step_s"],
                     decode_per_token_ms=1e3 * med["decode_steps_s"] / new_tokens,
                     decode_init_ms=1e3 * med["decode_init_s"], compile_s=compile_s[(kind, s)], samples=x))
  full = rows[0]
  for row in rows:
    row["train_step_vs_full"] = row["train_step_s"] / full["train_step_s"]
    row["decode_per_token_vs_full"] = row["decode_per_token_ms"] / full["decode_per_token_ms"]
    print(f"{row['kind']:<9} s={str(row['s']):<4} train step {row['train_step_s']:.3f} s "
          f"({row['train_step_vs_full']:.2f}x)  decode {row['decode_per_token_ms']:.2f} ms/token "
          f"({row['decode_per_token_vs_full']:.2f}x)", flush=True)
  name = "long_dialogsum_cost_" + args.platform + ("_quick" if args.quick else "")
  common.write(args.out, name, {
      "machine": common.machine(jax), "threads": args.threads, "k": k, "q": q, "batch": batch,
      "new_tokens": new_tokens, "rounds": rounds, "train_steps_per_timing": args.steps,
      "model": "benchmarks/reader/cpu_infill/config.json (random weights), dropout 0.1", "rows": rows})
  plt = common.plt()
  fig, ax = plt.subplots(figsize=(7, 3.6))
  labels = [r["kind"] + ("" if r["s"] is None else f" s={r['s']}") for r in rows]
  xs = range(len(rows))
  ax.bar([x - 0.2 for x in xs], [r["train_step_vs_full"] for r in rows], 0.4, label="train step")
  ax.bar([x + 0.2 for x in xs], [r["decode_per_token_vs_full"] for r in rows], 0.4, label="greedy decode / token")
  ax.axhline(1.0, color="k", ls=":", lw=1)
  ax.set_xticks(list(xs), labels, rotation=20, fontsize=8)
  ax.set_ylabel("time / full attention's")
  ax.set_title(f"Cost at k = {k}, q = {q}, batch {batch} ({args.threads} thread{'s' if args.threads > 1 else ''})")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, f"{name}.png"), dpi=100)


if __name__ == "__main__":
  from srformer_jax import host_malloc
  host_malloc.reexec_with_huge_pages()  # as train.py does: the grid's cells run this way
  main()
