"""Building blocks shared by T5 and BART: dense layers, norms, embeddings, feed-forward blocks.

Parameter names mirror the HF PyTorch modules (`weight`/`bias` for norms, `kernel` = weight.T for
linears, `embedding` for embeddings) so that checkpoint conversion is a renaming table.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from srformer_jax import sharding as sh

class Dropout(nn.Module):
  """Inverted dropout whose mask is a cheap hash of each element's position (a drop-in for `nn.Dropout`).

  `hashed=False` is `nn.Dropout` itself (a Bernoulli draw per element from threefry): the plain form
  for other backends (`cpu_kernels`).

  `nn.Dropout` draws a Bernoulli variable per element from 32-bit uniforms; with the default
  (partitionable) threefry keys that is one 20-round hash per element, which on a CPU costs more than
  the matmuls around it. Here threefry draws two words per row (every axis but the last) and each
  element's bits come from those words and its column through a 32-bit integer mixer
  (`dropout_keep_mask`): a few multiplies and shifts that XLA fuses into the select, so the mask is
  neither written out nor stored for the backward pass. An element is dropped when the top byte of
  its hash is below round(rate * 256): the rate is therefore rounded to a multiple of 1/256
  (0.1 -> 26/256 = 0.1016) and the kept values are scaled by 1 / (1 - rounded rate), so the expected
  activation is unchanged. Rates of exactly 0 or 1, and `deterministic=True`, behave as in `nn.Dropout`.
  """
  rate: float
  rng_collection: str = "dropout"
  hashed: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    if not self.hashed:
      return nn.Dropout(self.rate, rng_collection=self.rng_collection)(x, deterministic=False)
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep = dropout_keep_mask(self.make_rng(self.rng_collection), self.rate, x.shape)
    # scaled in float32 at least: 1 / (1 - 26/256) = 1.1130 is 1.1094 in bfloat16, a 0.3% bias
    wide = jnp.promote_types(x.dtype, jnp.float32)
    scale = jnp.asarray(1.0 / (1.0 - dropout_rate_rounded(self.rate)), wide)
    return jnp.where(keep, (x.astype(wide) * scale).astype(x.dtype), jnp.zeros((), x.dtype))


def dropout_rate_rounded(rate: float) -> float:
  """The rate `Dropout` applies: `rate` rounded to a multiple of 1/256 (at least 1/256 if rate > 0)."""
  return max(1, min(255, round(rate * 256))) / 256 if 0.0 < rate < 1.0 else float(rate)


def _mix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: a bijection of uint32 in which every input bit flips each
  output bit with probability ~1/2."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def dropout_keep_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
  """Boolean keep mask, P(keep) = 1 - dropout_rate_rounded(rate): rows independent (each has its
  own 64 random bits), elements within a row uncorrelated.

  Row r (the leading axes) gets two threefry words (a_r, b_r); element (r, c) gets the top byte of
  mix(mix(a_r ^ c * phi) ^ b_r), phi = 2^32 / golden ratio: within a row the inputs are distinct
  (phi is odd) and the mixer is a bijection, so no two elements of a row share a hash; rows differ
  by random words rather than by an offset, so no row's mask is a shifted copy of another's.
  """
  # Words over the leading axes only, so the batch axis keeps its place: with partitionable threefry
  # keys each device draws just its own rows, and the column iota is sliced like the array.
  threshold = round(dropout_rate_rounded(rate) * 256)
  if threshold >= 256:  # rate 1: everything dropped (256 << 24 does not fit in 32 bits)
    return jnp.zeros(shape, bool)
  *lead, last = tuple(shape) or (1,)
  words = jax.random.bits(rng, (2, *lead, 1), jnp.uint32)                         # [2, ..., 1]
  cols = jax.lax.iota(jnp.uint32, last) * jnp.uint32(0x9E3779B9)                  # [last]
  h = _mix32(_mix32(words[0] ^ cols) ^ words[1])                                  # [..., last]
  return (h >= jnp.uint32(threshold << 24)).reshape(shape)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general` for `nn.Dense` (`[..., d_in] x [d_in, d_out]`), whose weight gradient is
  computed as `(g^T x)^T`: the same products and sums as XLA's own gradient, laid out so that XLA:CPU
  reads every operand as it is stored.

  Why: for `x @ w`, JAX's gradient `x^T g` made XLA:CPU write the cotangent `g` transposed (a
  `[d_out, tokens]` copy) and fuse the elementwise backward that produces it (activation derivative,
  gate, dropout mask) into that transposing loop, reading each input with a stride of d_out. In the
  sweep model's gated feed-forward those fusions were about a third of the float32 train step's op
  time, and its step is ~1.6x faster this way (benchmarks/cpu_efficiency.py, the `_xla_dense_grad`
  rows). Other contractions go to `lax.dot_general`.
  """
  (lc, rc), (lb, rb) = dimension_numbers
  if (tuple(lc), tuple(rc), tuple(lb), tuple(rb)) != ((lhs.ndim - 1,), (0,), (), ()) or rhs.ndim != 2 \
      or preferred_element_type is not None:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  return _dense_matmul(lhs, rhs, precision)


def accumulating_dot_general(lhs, rhs, dimension_numbers, precision=None):
  """`lax.dot_general` with float32 accumulation and output for bfloat16 / float16 operands, rounded
  to the operands' dtype after the sum: the same values XLA computes for a low-precision dot, but on
  this CPU a bfloat16 x bfloat16 -> float32 product runs on the fast (AMX) kernels and one with a
  bfloat16 result does not (~2-4x slower at the models' shapes in a microbenchmark; T5-small's
  bfloat16 step 3.07 -> 1.93 s, benchmarks/cpu_efficiency.py). float32 and float64 operands are
  passed through unchanged. Differentiated by JAX (outside the dense layers' own VJP), the backward
  products receive the float32 cotangent of the float32 result.
  """
  out = jnp.result_type(lhs, rhs)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=accum_dtype(out)).astype(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_matmul(x, w, precision):
  return accumulating_dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _dense_matmul_fwd(x, w, precision):
  return _dense_matmul(x, w, precision), (x, w)


def _dense_matmul_bwd(precision, res, g):
  x, w = res                                                                      # [..., d_in], [d_in, d_out]
  dx = accumulating_dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)  # [..., d_in]
  g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])                # [tokens, d_out], [tokens, d_in]
  # t: tokens, i: d_in, o: d_out
  dw = accumulating_dot_general(g2, x2, (((0,), (0,)), ((), ())), precision=precision).T  # [d_in, d_out]
  return dx.astype(x.dtype), dw.astype(w.dtype)


_dense_matmul.defvjp(_dense_matmul_fwd, _dense_matmul_bwd)


def dense(features: int, axes: tuple[str | None, str | None], *, use_bias: bool, dtype,
          name: str | None = None, init_std: float | None = None, cpu: bool = True) -> nn.Dense:
  """A `nn.Dense` whose kernel (and bias) carry logical axis names; `cpu`: its product is
  `dense_dot_general` (the weight gradient laid out for XLA:CPU, low-precision products accumulated
  and returned in float32 before rounding), else `lax.dot_general` (see `cpu_kernels`)."""
  if init_std is None:
    kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
  else:
    kernel_init = nn.initializers.normal(init_std)
  return nn.Dense(
      features,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(kernel_init, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
      dot_general=dense_dot_general if cpu else jax.lax.dot_general,
      name=name,
  )


class Embed(nn.Embed):
  """`nn.Embed` whose `attend` (tied output logits) accumulates low-precision products in float32
  (`cpu`; else `nn.Embed.attend`, see `cpu_kernels`)."""

  cpu: bool = True

  def attend(self, query: jax.Array) -> jax.Array:
    if not self.cpu:
      return super().attend(query)
    query, embedding = self.promote_dtype(query, self.embedding, dtype=self.dtype)
    # q: ..., d: features, v: num_embeddings
    return accumulating_dot_general(query, embedding, (((query.ndim - 1,), (1,)), ((), ())))  # [..., v]


def embed(num: int, features: int, axes: tuple[str | None, str | None], *, dtype,
          name: str | None = None, init_std: float = 1.0, cpu: bool = True) -> nn.Embed:
  return Embed(
      num, features, dtype=dtype, param_dtype=jnp.float32, cpu=cpu,
      embedding_init=nn.with_logical_partitioning(nn.initializers.normal(init_std), axes), name=name)


class RMSNorm(nn.Module):
  """T5's LayerNorm: scale only, no mean subtraction, computed in float32."""

  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, (sh.EMBED,)),
                        (x.shape[-1],), jnp.float32)
    x32 = x.astype(accum_dtype(x.dtype))
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.eps)
    return (y * weight).astype(self.dtype)


class LayerNorm(nn.Module):
  """Standard LayerNorm with HF parameter names (`weight`, `bias`), computed in float32."""

  eps: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones, (sh.EMBED,)),
                        (d,), jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (sh.EMBED,)),
                      (d,), jnp.float32)
    x32 = x.astype(accum_dtype(x.dtype))
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * weight + bias).astype(self.dtype)


def accum_dtype(dtype) -> jnp.dtype:
  """Dtype for reductions, softmax and norms: float32, or float64 when computing in float64."""
  return jnp.promote_types(dtype, jnp.float32)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """HF activation names -> functions (`gelu` is exact erf-GELU, `gelu_new` the tanh approximation)."""
  table = {
      "relu": jax.nn.relu,
      "gelu": lambda x: jax.nn.gelu(x, approximate=False),
      "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
      "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
      "silu": jax.nn.silu,
      "swish": jax.nn.silu,
  }
  if name not in table:
    raise ValueError(f"unsupported activation {name!r}; known: {sorted(table)}")
  return table[name]


def sequence_mask_bias(mask: jax.Array, dtype=jnp.float32) -> jax.Array:
  """[batch, k] bool -> additive bias [batch, 1, 1, k] (0 where attended, a large negative elsewhere)."""
  big_neg = jnp.finfo(dtype).min
  return jnp.where(mask[:, None, None, :], 0.0, big_neg).astype(dtype)


def causal_mask(length: int) -> jax.Array:
  """[1, 1, q, k] bool lower-triangular mask."""
  return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def self_attention_mask_bias(mask: jax.Array, causal: bool) -> jax.Array:
  """[batch, t] bool key mask -> additive float32 bias [batch, 1, t|1, t] (causal: also key > query)."""
  allowed = mask[:, None, None, :]
  if causal:
    allowed = allowed & causal_mask(mask.shape[-1])
  return jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)


# ModelConfig.remat_policy -> jax.checkpoint policy (what the backward may keep from the forward).
REMAT_POLICIES = {
    "full": "nothing_saveable",  # recompute the whole layer: keeps only its inputs
    "dots": "dots_saveable",  # keep matmul outputs, recompute the elementwise ops
    "dots_no_batch": "dots_with_no_batch_dims_saveable",  # keep weight matmuls, not attention's
}


def remat(module_cls, policy: str, static_argnums: tuple[int, ...]):
  """`module_cls`, its __call__ rematerialised under `policy` ("none": unchanged).

  static_argnums count `self` as 0 (flax's convention); python flags such as `deterministic` must
  be listed.
  """
  if policy == "none":
    return module_cls
  return nn.remat(module_cls, policy=getattr(jax.checkpoint_policies, REMAT_POLICIES[policy]),
                  static_argnums=static_argnums)


def shape_heads(x: jax.Array, num_heads: int) -> jax.Array:
  """[b, t, h*d] -> [b, t, h, d]."""
  return x.reshape(x.shape[:-1] + (num_heads, x.shape[-1] // num_heads))


def merge_heads(x: jax.Array) -> jax.Array:
  """[b, t, h, d] -> [b, t, h*d]."""
  return x.reshape(x.shape[:-2] + (-1,))


@jax.custom_vjp
def add_bias(a: jax.Array, b: jax.Array) -> jax.Array:
  """a + b with numpy broadcasting (e.g. T5's position bias [1, h, q, k] + a mask bias [b, 1, 1, k]).

  The same sum; only the gradient of an operand broadcast over the leading (batch) axis is computed
  differently: as a ones-vector matmul over that axis, where XLA:CPU's reduce over a leading axis of a
  [b, h, q, k] tensor is ~50x slower (~45 ms vs ~1 ms at b 16, h 4, q = k = 256).
  """
  return a + b


def _sum_to_shape(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  shape = (1,) * (g.ndim - len(shape)) + tuple(shape)
  if shape[0] == 1 and g.shape[0] > 1:
    n = g.shape[0]
    ones = jnp.ones((1, n), g.dtype)
    g = jax.lax.dot(ones, g.reshape(n, -1), precision=jax.lax.Precision.HIGHEST).reshape((1,) + g.shape[1:])
  axes = tuple(i for i, (have, want) in enumerate(zip(g.shape, shape)) if want == 1 and have != 1)
  return g.sum(axes, keepdims=True) if axes else g


def _add_bias_fwd(a, b):
  # Empty arrays carry the operands' dtypes (residuals must be arrays).
  return a + b, ((jnp.shape(a), jnp.zeros((0,), jnp.result_type(a))),
                 (jnp.shape(b), jnp.zeros((0,), jnp.result_type(b))))


def _add_bias_bwd(avals, g):
  # Each cotangent in its operand's dtype: a float32 bias added to float64 scores (a float64
  # model) gets a float32 gradient, as JAX's own gradient of `+` gives it.
  return tuple(_sum_to_shape(g, shape).reshape(shape).astype(like.dtype) for shape, like in avals)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def dot_product_attention(q, k, v, bias=None, *, position_bias=None, dropout=None, deterministic=True,
                          head_major_kv=False, cpu: bool = True):
  """Softmax attention. q [b,q,h,d], k/v [b,k,h,d], bias broadcastable to [b,h,q,k] -> [b,q,h,d].

  `position_bias` [1, h, q, k] (T5's, trained) is added to the scores on its own, before `bias`
  (the mask): its gradient then sums over the batch once, as a matmul (`add_bias`), and no
  [b, h, q, k] sum of the two is written out in each layer.

  `head_major_kv`: k/v are [b,h,k,d], the layout of the decoding caches, which lets each step
  stream them without a transpose. Scores and softmax are computed in float32 (float64 under a
  float64 config). Scaling of q (if any) is the caller's business. `cpu`: the position bias is
  added by `add_bias` (its batch-reduced gradient as a matmul), else by `+` (see `cpu_kernels`).
  """
  # Head-major operands throughout: XLA:CPU runs "bhqk,bkhd->bqhd" (v strided by heads) about 3x
  # slower than the same contraction on [b, h, k, d] plus the transposes (benchmarks/cpu_efficiency.py).
  if not head_major_kv:
    k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [b, k, h, d] -> [b, h, k, d]
  q = jnp.swapaxes(q, 1, 2)  # [b, h, q, d]
  scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=accum_dtype(q.dtype))
  if position_bias is not None:
    scores = add_bias(scores, position_bias) if cpu else scores + position_bias
  if bias is not None:
    scores = scores + bias
  probs = jax.nn.softmax(scores, axis=-1)
  if dropout is not None and not deterministic:
    probs = dropout(probs, deterministic=deterministic)
  ctx = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), v, preferred_element_type=accum_dtype(v.dtype))
  return jnp.swapaxes(ctx.astype(v.dtype), 1, 2)  # [b, q, h, d]


def shift_right(labels: jax.Array, start_token_id: int, pad_token_id: int) -> jax.Array:
  """Teacher-forcing decoder inputs: [start, y0, y1, ...]; -100 label positions become pad."""
  labels = jnp.where(labels == -100, pad_token_id, labels)
  start = jnp.full(labels.shape[:-1] + (1,), start_token_id, labels.dtype)
  return jnp.concatenate([start, labels[..., :-1]], axis=-1)

