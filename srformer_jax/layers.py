"""Building blocks shared by T5 and BART: dense layers, norms, embeddings, feed-forward blocks.

Parameter names mirror the HF PyTorch modules (`weight`/`bias` for norms, `kernel` = weight.T for
linears, `embedding` for embeddings) so that checkpoint conversion is a renaming table.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from srformer_jax import sharding as sh

def dense(features: int, axes: tuple[str | None, str | None], *, use_bias: bool, dtype,
          name: str | None = None, init_std: float | None = None) -> nn.Dense:
  """A `nn.Dense` whose kernel (and bias) carry logical axis names."""
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
      name=name,
  )


def embed(num: int, features: int, axes: tuple[str | None, str | None], *, dtype,
          name: str | None = None, init_std: float = 1.0) -> nn.Embed:
  return nn.Embed(
      num, features, dtype=dtype, param_dtype=jnp.float32,
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


def dot_product_attention(q, k, v, bias=None, *, dropout=None, deterministic=True,
                          head_major_kv=False):
  """Softmax attention. q [b,q,h,d], k/v [b,k,h,d], bias broadcastable to [b,h,q,k] -> [b,q,h,d].

  `head_major_kv`: k/v are [b,h,k,d], the layout of the decoding caches, which lets each step
  stream them without a transpose. Scores and softmax are computed in float32 (float64 under a
  float64 config). Scaling of q (if any) is the caller's business.
  """
  kv = "bhkd" if head_major_kv else "bkhd"
  scores = jnp.einsum(f"bqhd,{kv}->bhqk", q, k, preferred_element_type=accum_dtype(q.dtype))
  if bias is not None:
    scores = scores + bias
  probs = jax.nn.softmax(scores, axis=-1)
  if dropout is not None and not deterministic:
    probs = dropout(probs, deterministic=deterministic)
  return jnp.einsum(f"bhqk,{kv}->bqhd", probs.astype(v.dtype), v)


def shift_right(labels: jax.Array, start_token_id: int, pad_token_id: int) -> jax.Array:
  """Teacher-forcing decoder inputs: [start, y0, y1, ...]; -100 label positions become pad."""
  labels = jnp.where(labels == -100, pad_token_id, labels)
  start = jnp.full(labels.shape[:-1] + (1,), start_token_id, labels.dtype)
  return jnp.concatenate([start, labels[..., :-1]], axis=-1)

