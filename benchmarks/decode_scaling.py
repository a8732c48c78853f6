"""2. Decode time per token vs input length: full vs SRformer (s=64), T5-small shapes.

`--kinds` and `--segment_sizes` time other cross-attention kinds and sizes the same way (the
alternatives' per-token cost: `--kinds full,segmented,srformer,xl,pooled,linear,local_window,gru_memory
--segment_sizes 8,64 --lengths 16384 --tag alternatives` writes decode_scaling_<platform>_alternatives.*).

Batch 8, greedy, 128 new tokens (EOS banned so every run decodes all 128), random weights. The
encoder output is given (random), so the numbers are the decoder's: `init` is the per-input work
(cross-attention K/V, and for SRformer K^T V and ||K||), `per_token` the cached step. The two are
timed apart: the steps run from a cache made beforehand (`decoding.greedy_from_cache`, the cache
donated so no copy of it is timed), so the per-token time does not carry the noise of an init that
takes seconds at k = 16384 (an earlier version took (whole decode - init) / 128, which at that k moved
by several ms a token between runs).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common, models  # noqa: E402


def main():
  p = common.parser(__doc__)
  p.add_argument("--lengths", default="512,1024,4096,16384")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--new_tokens", type=int, default=128)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--kinds", default="full,srformer", help="cross-attention kinds, comma-separated")
  p.add_argument("--segment_sizes", default="64", help="segment sizes of the segmented kinds")
  p.add_argument("--tag", default="", help="writes decode_scaling_<platform>_<tag>.* instead")
  args = p.parse_args()
  jax = common.setup_platform(args.platform)
  import jax.numpy as jnp
  from srformer_jax import build_model, init_params

  lengths = [int(x) for x in args.lengths.split(",")]
  if args.quick:
    lengths = lengths[:2]
  n = args.new_tokens
  rows = []
  kinds = args.kinds.split(",")
  sizes = [int(x) for x in args.segment_sizes.split(",")]
  # whole-input kinds read no segments: one row each, at the first size (which they ignore)
  runs = [(kind, s) for kind in kinds for s in (sizes[:1] if kind in ("full", "linear") else sizes)]
  for kind, s in runs:
    cfg = models.t5_small(cross_attention=kind, segment_size=s, gen_len=n, dtype=args.dtype)
    model = build_model(cfg)
    params = init_params(cfg, jax.random.key(0))
    if args.dtype != "float32":
      params = jax.tree.map(lambda x: x.astype(args.dtype), params)
    init, steps = common.greedy_decode_fns(model, args.batch, n)
    for k in lengths:
      enc = jax.random.normal(jax.random.key(1), (args.batch, k, cfg.d_model), jnp.dtype(args.dtype))
      mask = jnp.ones((args.batch, k), jnp.int32)
      t_init = common.time_fn(lambda: init(params, enc, mask), args.repeats)
      # a fresh cache for each call (it is donated), made before the clock starts
      t_steps = common.time_fn(lambda cache: steps(params, cache), args.repeats, setup=lambda: init(params, enc, mask))
      per_token = t_steps["median_s"] / n
      rows.append(dict(kind=kind, k=k, total_s=t_init["median_s"] + t_steps["median_s"], init_s=t_init["median_s"],
                       per_token_ms=1e3 * per_token, per_token_min_ms=1e3 * t_steps["min_s"] / n,
                       compile_s=t_init["first_call_s"] + t_steps["first_call_s"],
                       **({} if args.tag == "" else {"s": None if kind in ("full", "linear") else s})))
      print(f"{kind:<9} s={s:<3} k={k:>6}  per token {1e3 * per_token:8.3f} ms   init {t_init['median_s']*1e3:8.1f} ms"
            f"   steps {t_steps['median_s']:.3f} s", flush=True)
  name = f"decode_scaling_{args.platform}" + (f"_{args.tag}" if args.tag else "")
  if args.tag:  # a table of kinds and sizes: no full-vs-srformer speed-up plot
    full = {r["k"]: r["per_token_ms"] for r in rows if r["kind"] == "full"}
    for r in rows:
      if r["k"] in full:
        r["per_token_vs_full"] = r["per_token_ms"] / full[r["k"]]
    common.write(args.out, name, {"machine": common.machine(jax), "batch": args.batch, "new_tokens": n,
                                  "dtype": args.dtype, "rows": rows})
    return
  by = {(r["kind"], r["k"]): r for r in rows}
  speedup = {k: by[("full", k)]["per_token_ms"] / by[("srformer", k)]["per_token_ms"] for k in lengths}
  print("per-token speedup srformer vs full:", {k: round(v, 2) for k, v in speedup.items()})
  common.write(args.out, f"decode_scaling_{args.platform}",
               {"machine": common.machine(jax), "batch": args.batch, "new_tokens": n, "dtype": args.dtype,
                "rows": rows, "per_token_speedup": speedup})
  plt = common.plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  for kind in ("full", "srformer"):
    ax.plot(lengths, [by[(kind, k)]["per_token_ms"] for k in lengths], "o-", label=kind)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("input length k (tokens)")
  ax.set_ylabel("decode time per token (ms), batch 8")
  ax.set_title(f"T5-small greedy decoding ({common.machine(jax)['device']})")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, f"decode_scaling_{args.platform}.png"), dpi=100)


if __name__ == "__main__":
  main()
