"""Cost of the cross-attention kinds as XLA counts it (the paper's Table 1, measured).

`cross_attention_cost` lowers one cross-attention (without its projections, which every kind shares)
for a single example and reads XLA's cost analysis: flops, bytes accessed, transcendentals.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

from srformer_jax.attention.segmented import CrossAttention
from srformer_jax.config import ModelConfig


def cross_attention_config(kind: str, q_len: int, d: int, s: int, heads: int = 1, arch: str = "t5") -> ModelConfig:
  """The smallest model config around one cross-attention of `kind` (heads of size d, segment size
  s, decoder length q_len): what the cost functions here, and the benchmarks, build the module from."""
  return ModelConfig(arch=arch, vocab_size=8, d_model=d * heads, num_heads=heads, d_kv=d, d_ff=8,
                     num_encoder_layers=1, num_decoder_layers=1, cross_attention=kind, segment_size=s,
                     gen_len=q_len, dropout_rate=0.0)


def _cost(compiled) -> dict[str, float]:
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):  # older jax returns one dict per computation
    ca = ca[0]
  return {"flops": float(ca.get("flops", 0.0)),
          "bytes": float(ca.get("bytes accessed", 0.0)),
          "transcendentals": float(ca.get("transcendentals", 0.0))}


def cross_attention_cost(kind: str, q_len: int, k_len: int, d: int, s: int, heads: int = 1,
                         batch: int = 1, backward: bool = False) -> dict[str, float]:
  """XLA cost of one cross-attention forward (or forward+backward) at the given sizes."""
  config = cross_attention_config(kind, q_len, d, s, heads)
  module = CrossAttention(config)
  q = jnp.zeros((batch, q_len, heads, d))
  k = jnp.zeros((batch, k_len, heads, d))
  mask = jnp.ones((batch, k_len), bool)
  # shapes only: lowering needs no values, and an eager init at long inputs costs more than the compile
  params = jax.eval_shape(functools.partial(module.init, method=CrossAttention.attend),
                          jax.random.key(0), q, k, k, mask)

  def fwd(p, q, k, v):
    return module.apply(p, q, k, v, mask, method=CrossAttention.attend)

  fn = fwd
  if backward:
    fn = jax.grad(lambda *a: jnp.sum(fwd(*a)), argnums=(0, 1, 2, 3))
  return _cost(jax.jit(fn).lower(params, q, k, k).compile())


def decode_step_cost(kind: str, k_len: int, d: int, s: int, q_len: int = 128, heads: int = 1,
                     batch: int = 1) -> dict[str, float]:
  """XLA cost of one cached decoding step of the cross-attention (state built beforehand)."""
  config = cross_attention_config(kind, q_len, d, s, heads)
  module = CrossAttention(config)
  x = jnp.zeros((batch, 1, d * heads))
  enc = jnp.zeros((batch, k_len, d * heads))
  mask = jnp.ones((batch, k_len), bool)
  with warnings.catch_warnings():  # a 1-token init forward reads one of m segments, by design
    warnings.simplefilter("ignore")
    params = jax.eval_shape(module.init, jax.random.key(0), x, enc, mask)  # shapes only, as above
  state = jax.eval_shape(functools.partial(module.apply, method=CrossAttention.init_state), params, enc, mask)
  step = functools.partial(module.apply, method=CrossAttention.step)
  return _cost(jax.jit(step).lower(params, x, state, jnp.asarray(5)).compile())


def analytic_flops(kind: str, q_len: int, k_len: int, d: int, s: int) -> float:
  """Multiply-add count x2 of the dominant matmuls (what the paper's O(.) terms stand for)."""
  m = -(-k_len // s)
  full = 4 * q_len * k_len * d
  seg = 4 * q_len * s * d
  # all K_i^T V_i then the RAF linear per segment, or (s < d, no clamp) V W then K_i^T (V_i W);
  # plus Q @ RAF output
  rec = 2 * k_len * d * d + min(2 * m * d ** 3, 2 * k_len * d * d) + 2 * q_len * d * d
  # gru_memory: all K_i^T V_i, the cell's input and hidden maps (d x 3d on each of a segment's d rows)
  # per segment, and Q @ h
  gru = 2 * k_len * d * d + 12 * m * d ** 3 + 2 * q_len * d * d
  return {"full": full, "segmented": seg, "xl": 2 * seg, "srformer": seg + rec,
          "pooled": 4 * q_len * (s + m) * d, "linear": 2 * k_len * d * d + 2 * q_len * d * d,
          "local_window": 4 * q_len * min(s, k_len) * d, "gru_memory": seg + gru}.get(kind, float("nan"))


def table_1(q_len=128, k_len=1024, d=64, segment_sizes=(64,), kinds=("full", "segmented", "srformer")):
  """Rows of (kind, s, XLA flops, ratio to full, analytic flops) for the paper's Table 1 setting."""
  full = cross_attention_cost("full", q_len, k_len, d, segment_sizes[0])["flops"]
  rows = []
  for s in segment_sizes:
    for kind in kinds:
      if kind == "full" and s != segment_sizes[0]:
        continue
      f = cross_attention_cost(kind, q_len, k_len, d, s)["flops"]
      rows.append(dict(kind=kind, s=s, flops=f, ratio=f / full,
                       analytic=analytic_flops(kind, q_len, k_len, d, s)))
  return rows


def format_table(rows) -> str:
  lines = [f"{'kind':<12}{'s':>5}{'XLA flops':>14}{'/ full':>9}{'analytic':>14}"]
  for r in rows:
    lines.append(f"{r['kind']:<12}{r['s']:>5}{r['flops']:>14,.0f}{r['ratio']:>9.3f}{r['analytic']:>14,.0f}")
  return "\n".join(lines)
