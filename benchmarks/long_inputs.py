"""5. Long inputs: train-step memory (XLA memory analysis) and time, dense vs blockwise attention.

T5-small SRformer (s = 64, q = 128 target tokens), AdamW, dropout 0.1, batch 8, bf16 compute as in
training. Memory rows compile the train step only (no execution, so they run on the CPU for any k)
and read `compiled.memory_analysis()`: temporaries, and arguments (train state + batch), whose sum
is what one device must hold (the state is donated, so the outputs reuse its buffers). XLA:CPU's
buffer assignment is not XLA:GPU's (other fusions), so on CPU the totals are estimates of a GPU's.

CPU mode also times the k = 1024 step, dense vs blockwise, at a smaller batch (--time_batch,
float32: XLA:CPU has no fast bf16 matmuls). GPU mode times the step at every k (bf16, batch 8),
finds the largest k that trains at batch 8, and times generation at k = 16384 (encoding included).
"""

import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common, models  # noqa: E402

GIB = 2 ** 30
Q = 128
# name -> ModelConfig overrides
VARIANTS = {
    "dense": dict(attention_impl="dense"),
    "dense+remat": dict(attention_impl="dense", remat_policy="full"),
    "blockwise": dict(attention_impl="blockwise"),
    "blockwise+remat": dict(attention_impl="blockwise", remat_policy="full", raf_remat=True),
}


def model_config(variant: str, dtype: str, **kw):
  return models.t5_small(cross_attention="srformer", segment_size=64, gen_len=Q, dtype=dtype,
                         dropout_rate=0.1, **{**VARIANTS[variant], **kw})


def make_trainer(cfg):
  import optax
  from srformer_jax import sharding
  from srformer_jax.model import build_model
  from srformer_jax.train_lib import Trainer
  tx = optax.adamw(5e-5, weight_decay=0.01)
  return Trainer(build_model(cfg), tx, optax.constant_schedule(5e-5), sharding.make_mesh((1, 1, 1)))


def batch_arrays(batch: int, k: int):
  import numpy as np
  rng = np.random.default_rng(0)
  return {"input_ids": rng.integers(2, 32000, (batch, k)).astype(np.int32),
          "attention_mask": np.ones((batch, k), np.int32),
          "labels": rng.integers(2, 32000, (batch, Q)).astype(np.int32),
          "label_mask": np.ones((batch, Q), np.int32)}


def compile_step(jax, trainer, batch: int, k: int):
  """AOT-compiles the train step for abstract inputs: (compiled, compile seconds)."""
  import jax.numpy as jnp
  shapes = {"input_ids": (batch, k), "attention_mask": (batch, k), "labels": (batch, Q),
            "label_mask": (batch, Q)}
  abstract_batch = {n: jax.ShapeDtypeStruct(s, jnp.int32, sharding=trainer.batch_sharding)
                    for n, s in shapes.items()}
  t0 = time.perf_counter()
  compiled = trainer.lower(trainer.abstract_state(), abstract_batch, jax.random.key(1)).compile()
  return compiled, time.perf_counter() - t0


def memory_row(jax, variant: str, k: int, batch: int, dtype: str) -> dict:
  compiled, compile_s = compile_step(jax, make_trainer(model_config(variant, dtype)), batch, k)
  ma = compiled.memory_analysis()
  row = dict(variant=variant, k=k, batch=batch, dtype=dtype, compile_s=compile_s,
             temp_bytes=ma.temp_size_in_bytes, argument_bytes=ma.argument_size_in_bytes,
             output_bytes=ma.output_size_in_bytes, alias_bytes=ma.alias_size_in_bytes)
  row["total_bytes"] = row["temp_bytes"] + row["argument_bytes"] + row["output_bytes"] - row["alias_bytes"]
  print(f"memory {variant:<16} k={k:>6}  temp {row['temp_bytes'] / GIB:9.2f} GiB  args "
        f"{row['argument_bytes'] / GIB:6.2f} GiB  total {row['total_bytes'] / GIB:9.2f} GiB  "
        f"(compile {compile_s:.0f} s)", flush=True)
  return row


def residual_row(jax, variant: str, k: int, batch: int, dtype: str) -> dict:
  """What the backward keeps from the forward, read off the traced vjp (no compilation): bytes of
  the residuals that are not arguments. Independent of XLA's scheduling, so it shows remat even
  where XLA:CPU's buffer assignment does not (see README)."""
  import jax.numpy as jnp
  from jax._src.ad_checkpoint import saved_residuals  # jax.ad_checkpoint only exports the printer
  from srformer_jax.model import abstract_params, build_model
  from srformer_jax.train_lib import loss_and_metrics
  cfg = model_config(variant, dtype)
  model = build_model(cfg)
  shapes = {"input_ids": (batch, k), "attention_mask": (batch, k), "labels": (batch, Q),
            "label_mask": (batch, Q)}
  abstract_batch = {n: jax.ShapeDtypeStruct(s, jnp.int32) for n, s in shapes.items()}
  loss = lambda p, b: loss_and_metrics(model, p, b, jax.random.key(1), deterministic=False)[0]
  t0 = time.perf_counter()
  res = saved_residuals(loss, abstract_params(cfg), abstract_batch)
  nbytes = sum(a.size * a.dtype.itemsize for a, src in res
               if hasattr(a, "size") and not src.startswith("from the argument"))
  row = dict(variant=variant, k=k, batch=batch, dtype=dtype, residual_bytes=int(nbytes),
             trace_s=time.perf_counter() - t0)
  print(f"resid  {variant:<16} k={k:>6}  {nbytes / GIB:9.2f} GiB", flush=True)
  return row


def time_row(jax, variant: str, k: int, batch: int, dtype: str, repeats: int, **kw) -> dict:
  trainer = make_trainer(model_config(variant, dtype, **kw))
  compiled, compile_s = compile_step(jax, trainer, batch, k)
  holder = {"state": trainer.init_state(jax.random.key(0))}
  sharded = trainer.shard_batch(batch_arrays(batch, k))
  key = jax.random.key(1)

  first_bad = jax.device_put(jax.numpy.int32(-1), trainer.replicated)

  def step():
    holder["state"], m = compiled(holder["state"], sharded, key, first_bad)
    return m["loss"]

  t = common.time_fn(step, repeats)
  row = dict(variant=variant, k=k, batch=batch, dtype=dtype, step_s=t["median_s"], min_s=t["min_s"],
             compile_s=compile_s, tokens_per_s=batch * (k + Q) / t["median_s"], **kw)
  # measured memory (GPU): the allocator's peak so far in this process; rows run in increasing k,
  # so it is this row's peak whenever it is the largest yet
  mem = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in mem:
    row["device_peak_bytes_in_use"] = int(mem["peak_bytes_in_use"])
  print(f"time   {variant:<16} k={k:>6}  batch {batch}  step {t['median_s'] * 1e3:9.1f} ms "
        f"(min {t['min_s'] * 1e3:.1f})  {kw or ''}", flush=True)
  return row


def largest_trainable_k(jax, variant: str, batch: int, dtype: str, lengths) -> dict:
  """GPU: the largest k in `lengths` whose step compiles and runs at `batch` (OOM otherwise)."""
  best = None
  for k in lengths:
    try:
      time_row(jax, variant, k, batch, dtype, repeats=1)
      best = k
    except Exception as e:  # XLA reports out-of-memory as a runtime error
      print(f"{variant} k={k}: {type(e).__name__}: {str(e)[:200]}", flush=True)
      break
  return {"variant": variant, "batch": batch, "largest_k": best, "tried": list(lengths)}


def generation_row(jax, variant: str, k: int, batch: int, dtype: str, repeats: int) -> dict:
  """Greedy generation of Q tokens at input length k, encoding included."""
  import jax.numpy as jnp
  from srformer_jax import DecodeConfig, build_model, init_params
  from srformer_jax.decoding import generate
  cfg = model_config(variant, dtype)
  model = build_model(cfg)
  params = jax.tree.map(lambda x: x.astype(dtype), init_params(cfg, jax.random.key(0)))
  ids = jnp.asarray(batch_arrays(batch, k)["input_ids"])
  mask = jnp.ones((batch, k), jnp.int32)
  dc = DecodeConfig(max_len=Q, min_len=Q)  # EOS banned: always Q steps
  run = jax.jit(lambda p, i, m: generate(model, p, i, m, dc)[0])
  t = common.time_fn(lambda: run(params, ids, mask), repeats)
  print(f"generate {variant:<14} k={k}  {t['median_s']:.3f} s (encoding + {Q} tokens)", flush=True)
  return dict(variant=variant, k=k, batch=batch, dtype=dtype, generate_s=t["median_s"],
              compile_s=t["first_call_s"])


def plot(rows, residuals, out_png: str, title: str):
  """Solid: XLA memory analysis totals; dashed: the vjp's saved residuals (shows remat)."""
  plt = common.plt()
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for i, variant in enumerate(VARIANTS):
    color = f"C{i}"
    pts = sorted((r["k"], r["total_bytes"] / GIB) for r in rows if r["variant"] == variant)
    if pts:
      ax.plot(*zip(*pts), "o-", color=color, label=f"{variant}: XLA total")
    pts = sorted((r["k"], r["residual_bytes"] / GIB) for r in residuals if r["variant"] == variant)
    if pts:
      ax.plot(*zip(*pts), "x--", color=color, label=f"{variant}: residuals")
  ax.axhline(78, color="gray", ls="--", lw=1, label="H100: ~78 GiB usable")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("input length k (tokens)")
  ax.set_ylabel("train step memory (GiB)")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)


def main():
  p = common.parser(__doc__)
  p.add_argument("--lengths", default="1024,4096,16384")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--time_batch", type=int, default=1, help="CPU: batch of the k=1024 timing")
  p.add_argument("--block_sizes", default="512,1024", help="blockwise block sizes timed at k=1024")
  p.add_argument("--skip_memory", action="store_true")
  p.add_argument("--skip_timing", action="store_true")
  p.add_argument("--resume", action="store_true", help="keep the rows of an earlier run's JSON")
  p.add_argument("--tag", default="", help="suffix of the result file names")
  p.add_argument("--residuals", action="store_true", help="also sum the vjp's saved residuals")
  args = p.parse_args()
  jax = common.setup_platform(args.platform)
  lengths = [int(x) for x in args.lengths.split(",")]
  variants = args.variants.split(",")
  block_sizes = [int(b) for b in args.block_sizes.split(",")]
  if args.quick:  # smoke test: the smallest length, two variants, one block size, batch 1
    lengths, block_sizes, args.batch = lengths[:1], block_sizes[:1], 1
    variants = [v for v in variants if v in ("dense", "blockwise")] or variants[:2]
  payload = {"machine": common.machine(jax), "model": dataclasses.asdict(model_config("dense", args.dtype)),
             "q": Q, "memory": [], "timing": []}
  name = f"long_inputs_{args.platform}{args.tag}"
  path = os.path.join(args.out, f"{name}.json")
  if args.resume and os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    payload.update({key: old[key] for key in old if key not in ("machine", "model")})
  done = {(r["variant"], r["k"], r["batch"]) for r in payload["memory"]}
  if not args.skip_memory:
    for k in lengths:
      for variant in variants:
        if (variant, k, args.batch) not in done:
          payload["memory"].append(memory_row(jax, variant, k, args.batch, args.dtype))
          common.write(args.out, name, payload)
  if args.residuals:
    payload["residuals"] = [residual_row(jax, v, k, args.batch, args.dtype) for k in lengths
                            for v in variants]
    common.write(args.out, name, payload)
  if args.skip_timing:
    pass
  elif args.platform == "cpu":
    payload["timing"].append(time_row(jax, "dense", 1024, args.time_batch, "float32", args.repeats))
    for bs in block_sizes:
      payload["timing"].append(time_row(jax, "blockwise", 1024, args.time_batch, "float32", args.repeats,
                                        attention_block_size=bs))
  else:
    for k in lengths:
      for variant in variants:
        try:
          payload["timing"].append(time_row(jax, variant, k, args.batch, args.dtype, args.repeats))
        except Exception as e:
          print(f"time {variant} k={k}: {type(e).__name__}: {str(e)[:200]}", flush=True)
          payload["timing"].append(dict(variant=variant, k=k, batch=args.batch, error=str(e)[:500]))
        common.write(args.out, name, payload)
    payload["largest_k"] = largest_trainable_k(jax, "blockwise+remat", args.batch, args.dtype,
                                               [16384, 32768, 65536, 131072])
    common.write(args.out, name, payload)
    payload["generation"] = [generation_row(jax, v, 16384, args.batch, args.dtype, args.repeats)
                             for v in ("blockwise",)]
  common.write(args.out, name, payload)
  residuals = payload.get("residuals", [])
  other = os.path.join(args.out, f"long_inputs_{args.platform}_residuals.json")
  if not residuals and os.path.exists(other):
    with open(other) as f:
      residuals = json.load(f)["residuals"]
  if payload["memory"]:
    plot(payload["memory"], residuals, os.path.join(args.out, f"{name}.png"),
         f"T5-small SRformer train step, batch {args.batch}, {args.dtype} "
         f"(XLA memory analysis, {payload['machine']['device']})")


if __name__ == "__main__":
  main()
