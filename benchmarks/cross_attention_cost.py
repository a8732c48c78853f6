"""1. Cross-attention cost (the paper's Table 1, as XLA counts it) and training peak memory.

XLA cost analysis of one cross-attention (no projections) at q=128, k=1024, d=64 for every kind but
the ablations with s in {8, 16, 64}, plus compiled temp memory of forward+backward. XLA counts a loop
body once, so `gru_memory`'s per-segment cell (a lax.scan) is undercounted: its rows carry the
analytic matmul count too (`cost.analytic_flops`), which counts every segment's step.
"""

import sys
import os

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402


def main():
  args = common.parser(__doc__).parse_args()
  jax = common.setup_platform(args.platform)
  import jax.numpy as jnp
  from srformer_jax import cost
  from srformer_jax.attention.segmented import CrossAttention

  q_len, k_len, d, heads = 128, 1024, 64, 8
  rows = []
  for s in (64, 16, 8):
    for kind in ("full", "segmented", "xl", "srformer", "pooled", "linear", "local_window", "gru_memory"):
      if kind in ("full", "linear") and s != 64:  # whole-input kinds: one row
        continue
      fwd = cost.cross_attention_cost(kind, q_len, k_len, d, s)
      bwd = cost.cross_attention_cost(kind, q_len, k_len, d, s, backward=True)
      # peak temp memory of forward+backward at a training-like size (batch 8, 8 heads)
      config = cost.cross_attention_config(kind, q_len, d, s, heads)
      module = CrossAttention(config)
      qx = jnp.zeros((8, q_len, heads, d))
      kx = jnp.zeros((8, k_len, heads, d))
      mask = jnp.ones((8, k_len), bool)
      params = module.init(jax.random.key(0), qx, kx, kx, mask, method=CrossAttention.attend)
      loss = lambda p, q, k, v: jnp.sum(module.apply(p, q, k, v, mask, method=CrossAttention.attend))
      mem = jax.jit(jax.grad(loss, argnums=(1, 2, 3))).lower(params, qx, kx, kx).compile().memory_analysis()
      rows.append(dict(kind=kind, s=s, flops=fwd["flops"], bytes=fwd["bytes"],
                       flops_fwd_bwd=bwd["flops"], analytic=cost.analytic_flops(kind, q_len, k_len, d, s),
                       temp_bytes_fwd_bwd_b8_h8=getattr(mem, "temp_size_in_bytes", None)))
  full = rows[0]
  for r in rows:
    r["ratio_to_full"] = r["flops"] / full["flops"]
    r["bytes_ratio_to_full"] = r["bytes"] / full["bytes"]
    r["analytic_ratio_to_full"] = r["analytic"] / full["analytic"]
  print(f"{'kind':<10}{'s':>4}{'flops':>13}{'/full':>7}{'bytes':>12}{'/full':>7}{'fwd+bwd flops':>15}{'temp MiB':>10}")
  for r in rows:
    print(f"{r['kind']:<10}{r['s']:>4}{r['flops']:>13,.0f}{r['ratio_to_full']:>7.3f}{r['bytes']:>12,.0f}"
          f"{r['bytes_ratio_to_full']:>7.3f}{r['flops_fwd_bwd']:>15,.0f}"
          f"{(r['temp_bytes_fwd_bwd_b8_h8'] or 0) / 2**20:>10.1f}")
  common.write(args.out, f"cross_attention_cost_{args.platform}",
               {"machine": common.machine(jax), "q": q_len, "k": k_len, "d": d, "rows": rows})
  plt = common.plt()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  labels = [f"{r['kind']}\ns={r['s']}" if r["kind"] not in ("full", "linear") else r["kind"] for r in rows]
  axes[0].bar(labels, [r["flops"] / 1e6 for r in rows], color="tab:blue")
  axes[0].set_ylabel("MFLOPs (XLA), q=128 k=1024 d=64")
  axes[1].bar(labels, [(r["temp_bytes_fwd_bwd_b8_h8"] or 0) / 2**20 for r in rows], color="tab:orange")
  axes[1].set_ylabel("fwd+bwd temp memory (MiB), batch 8, 8 heads")
  for ax in axes:
    ax.tick_params(axis="x", labelsize=7)
  fig.suptitle("Cross-attention cost by kind")
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, f"cross_attention_cost_{args.platform}.png"), dpi=100)


if __name__ == "__main__":
  main()
