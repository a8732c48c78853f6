"""4. Training step throughput (tokens/s) and compile time, full vs SRformer, T5-small shapes.

Random weights, AdamW, teacher forcing with q=128 target tokens; tokens/s counts source + target
tokens. On GPU it also reports MFU: XLA's flop count of the compiled step / step time / peak.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common, models  # noqa: E402

# dense bf16 peak FLOP/s by device kind (vendor figures, no sparsity)
PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device_kind: str):
  for name, value in PEAK.items():
    if name in device_kind:
      return value
  return None


def main():
  p = common.parser(__doc__)
  p.add_argument("--lengths", default="1024,4096")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--dtype", default="float32", help="compute dtype (bfloat16 on GPU/TPU)")
  args = p.parse_args()
  jax = common.setup_platform(args.platform)
  import numpy as np
  import optax
  from srformer_jax import sharding
  from srformer_jax.model import build_model
  from srformer_jax.train_lib import Trainer

  lengths = [int(x) for x in args.lengths.split(",")]
  if args.quick:  # smoke test: one length, batch 1
    lengths, args.batch = lengths[:1], 1
  q = 128
  info = common.machine(jax)
  peak = peak_flops(info["device"]) if info["platform"] == "gpu" else None
  rows = []
  for kind in ("full", "srformer"):
    cfg = models.t5_small(cross_attention=kind, segment_size=64, gen_len=q, dtype=args.dtype,
                          dropout_rate=0.1)
    model = build_model(cfg)
    tx = optax.adamw(5e-5, weight_decay=0.01)
    trainer = Trainer(model, tx, optax.constant_schedule(5e-5), sharding.make_mesh((1, 1, 1)))
    for k in lengths:
      state = trainer.init_state(jax.random.key(0))
      rng = np.random.default_rng(0)
      batch = {"input_ids": rng.integers(2, 32000, (args.batch, k)).astype(np.int32),
               "attention_mask": np.ones((args.batch, k), np.int32),
               "labels": rng.integers(2, 32000, (args.batch, q)).astype(np.int32),
               "label_mask": np.ones((args.batch, q), np.int32)}
      sharded = trainer.shard_batch(batch)
      key = jax.random.key(1)
      t0 = time.perf_counter()
      compiled = trainer.compile(state, batch, key)
      compile_s = time.perf_counter() - t0
      print(f"{kind:<9} k={k:>5}  compiled in {compile_s:.1f} s", flush=True)
      holder = {"state": state}

      def step():  # the AOT-compiled step (Trainer.step runs it): what is timed never compiles
        holder["state"], m = trainer.step(holder["state"], sharded, key)
        return m["loss"]

      t = common.time_fn(step, args.repeats)
      ca = compiled.cost_analysis()
      ca = ca[0] if isinstance(ca, (list, tuple)) else ca
      flops = float(ca.get("flops", 0.0))
      tokens = args.batch * (k + q)
      row = dict(kind=kind, k=k, batch=args.batch, step_s=t["median_s"], compile_s=compile_s,
                 tokens_per_s=tokens / t["median_s"], xla_flops_per_step=flops)
      if peak:
        row["mfu"] = flops / t["median_s"] / peak
      rows.append(row)
      print(f"{kind:<9} k={k:>5}  step {t['median_s']*1e3:9.1f} ms  {row['tokens_per_s']:10.0f} tok/s  "
            f"compile {compile_s:.1f} s" + (f"  MFU {row['mfu']:.3f}" if peak else ""), flush=True)
  common.write(args.out, f"train_throughput_{args.platform}",
               {"machine": info, "dtype": args.dtype, "q": q, "peak_flops": peak, "rows": rows})
  plt = common.plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  width = 0.35
  xs = np.arange(len(lengths))
  for i, kind in enumerate(("full", "srformer")):
    vals = [next(r["tokens_per_s"] for r in rows if r["kind"] == kind and r["k"] == k) for k in lengths]
    ax.bar(xs + (i - 0.5) * width, vals, width, label=kind)
  ax.set_xticks(xs, [f"k={k}" for k in lengths])
  ax.set_ylabel("training tokens / s")
  ax.set_title(f"T5-small train step, batch {args.batch}, {args.dtype} ({info['device']})")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, f"train_throughput_{args.platform}.png"), dpi=100)


if __name__ == "__main__":
  main()
