"""Self-attention with T5 relative position buckets and a key/value cache for decoding.

Training and encoding run one of `config.ATTENTION_IMPLS` (dense, blockwise, cudnn; see
`resolve_impl`); a decoding step (one query against the cache) is always dense.

Einsum letters: b batch, q query position, k key position, h head, d head dim.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from srformer_jax import layers
from srformer_jax import sharding as sh
from srformer_jax.attention.blockwise import blockwise_attention
from srformer_jax.attention.cache import SelfCache
from srformer_jax.attention.projections import ProjectionsMixin
from srformer_jax.config import ModelConfig

# "auto" keeps the dense path up to this length: one [b, h, t, t] block is what blockwise would
# compute anyway, and the dense path is what the parity tests pin down (see README, "Long inputs").
AUTO_DENSE_MAX_LEN = 1024


def resolve_impl(config: ModelConfig, length: int, has_bias: bool, prob_dropout: bool,
                 backend: str | None = None) -> str:
  """The self-attention implementation for a sequence of `length` ("auto" resolved).

  auto: on GPU, cuDNN's fused attention where it computes the same function (no T5 bias: cuDNN
  takes a bias only as a dense [.., h, t, t] tensor; no dropout on the probabilities, which
  `jax.nn.dot_product_attention` does not offer; half-precision compute, which cuDNN requires);
  otherwise dense up to AUTO_DENSE_MAX_LEN and blockwise beyond.
  """
  backend = backend or jax.default_backend()
  impl = config.attention_impl
  if impl == "cudnn" and backend != "gpu":
    raise ValueError(f"attention_impl='cudnn' needs a GPU; the backend is {backend!r}")
  if impl != "auto":
    return impl
  if (backend == "gpu" and not has_bias and not prob_dropout
      and config.dtype in ("bfloat16", "float16")):
    return "cudnn"
  return "dense" if length <= AUTO_DENSE_MAX_LEN else "blockwise"


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
  """T5's bucketing of (key - query) distances (mesh-tensorflow / HF convention)."""
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets = buckets + (relative_position > 0).astype(jnp.int32) * num_buckets
    relative_position = jnp.abs(relative_position)
  else:
    relative_position = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = relative_position < max_exact
  # log(0) is never used (is_small covers it); the max() keeps it finite for the where below.
  rp = jnp.maximum(relative_position, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(rp / max_exact) / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, relative_position, large)


class SelfAttention(nn.Module, ProjectionsMixin):
  """Multi-head self-attention (bidirectional in the encoder, causal in the decoder)."""

  config: ModelConfig
  causal: bool
  has_relative_attention_bias: bool = False

  def setup(self):
    c = self.config
    self.setup_projections()
    if self.has_relative_attention_bias:
      self.relative_attention_bias = layers.embed(  # HF T5's init: std d_model**-0.5
          c.relative_attention_num_buckets, c.num_heads, (None, sh.HEADS), dtype=jnp.float32,
          init_std=c.d_model ** -0.5, cpu=self.config.cpu_kernels)
    rate = c.dropout_rate if c.arch == "t5" else c.attention_dropout
    self.attn_dropout = layers.Dropout(rate, hashed=self.config.cpu_kernels)

  def compute_bias(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """T5 relative position bias: [1, h, q, k] float32."""
    c = self.config
    rel = key_positions[None, :] - query_positions[:, None]
    bucket = relative_position_bucket(rel, bidirectional=not self.causal,
                                      num_buckets=c.relative_attention_num_buckets,
                                      max_distance=c.relative_attention_max_distance)
    values = self.relative_attention_bias(bucket)  # [q, k, h]
    return jnp.transpose(values, (2, 0, 1))[None].astype(jnp.float32)

  def compute_bias_diagonals(self, length: int) -> jax.Array:
    """T5's bias as a function of key - query only: [h, 2t - 1] float32, column (key - query) + t - 1.

    The blockwise path expands it per block, so no [h, t, t] tensor exists.
    """
    rel = jnp.arange(-(length - 1), length)
    bucket = relative_position_bucket(rel, bidirectional=not self.causal,
                                      num_buckets=self.config.relative_attention_num_buckets,
                                      max_distance=self.config.relative_attention_max_distance)
    return self.relative_attention_bias(bucket).T.astype(jnp.float32)

  def __call__(self, x, mask, position_bias=None, deterministic=True):
    """x [b, t, D]; mask [b, t] bool (keys; the decoder adds the causal mask itself); position_bias:
    T5's bias from layer 0 in the implementation's form ([1, h, t, t] dense and cudnn, [h, 2t - 1]
    blockwise), None in layer 0 and for BART.

    Returns (output [b, t, D], position_bias) so that layer 0 can hand its bias to the others.
    """
    c = self.config
    t = x.shape[1]
    q = self.project_q(x)
    k, v = self.project_kv(x)
    has_bias = self.has_relative_attention_bias or position_bias is not None
    prob_dropout = not deterministic and self.attn_dropout.rate > 0
    impl = resolve_impl(c, t, has_bias, prob_dropout)
    if impl == "blockwise":
      if self.has_relative_attention_bias and position_bias is None:
        position_bias = self.compute_bias_diagonals(t)
      rng = self.make_rng("dropout") if prob_dropout else None
      ctx = blockwise_attention(q, k, v, mask, rel_bias=position_bias, causal=self.causal,
                                block_size=c.attention_block_size,
                                # the rate the dense path's layers.Dropout applies
                                dropout_rate=layers.dropout_rate_rounded(self.attn_dropout.rate),
                                dropout_rng=rng)
      return self.project_out(ctx), position_bias
    if self.has_relative_attention_bias and position_bias is None:
      pos = np.arange(t)  # static: the buckets become a constant of the compiled step
      position_bias = self.compute_bias(pos, pos)
    if impl == "cudnn":
      # Padding as sequence lengths (cuDNN's padding mask): masks must be right-padded, as the
      # data pipeline makes them. A T5 bias goes in as the dense [1, h, t, t] tensor.
      bias = None if position_bias is None else position_bias.astype(q.dtype)
      ctx = jax.nn.dot_product_attention(
          q, k, v, bias=bias, is_causal=self.causal, scale=1.0, implementation="cudnn",
          key_value_seq_lengths=jnp.sum(mask, axis=-1, dtype=jnp.int32))
      return self.project_out(ctx), position_bias
    mask_bias = layers.self_attention_mask_bias(mask, self.causal)
    ctx = layers.dot_product_attention(q, k, v, mask_bias, position_bias=position_bias, dropout=self.attn_dropout,
                                       deterministic=deterministic, cpu=self.config.cpu_kernels)
    return self.project_out(ctx), position_bias

  def step(self, x, cache, index, position_bias=None):
    """One decoding step. x [b, 1, D]; cache: a `SelfCache` ([b, h, L, d]); index: position of x.

    Returns (output [b, 1, D], new cache, position_bias [1, h, 1, L]).
    """
    q = self.project_q(x)
    k, v = self.project_kv(x)
    zero = jnp.zeros((), jnp.int32)
    to_cache = lambda a, c: jnp.swapaxes(a, 1, 2).astype(c.dtype)  # [b, 1, h, d] -> [b, h, 1, d]
    k_cache = jax.lax.dynamic_update_slice(cache.k, to_cache(k, cache.k), (zero, zero, index, zero))
    v_cache = jax.lax.dynamic_update_slice(cache.v, to_cache(v, cache.v), (zero, zero, index, zero))
    max_len = k_cache.shape[2]
    key_pos = jnp.arange(max_len)
    if self.has_relative_attention_bias and position_bias is None:
      position_bias = self.compute_bias(jnp.reshape(index, (1,)), key_pos)
    valid = (key_pos <= index)[None, None, None, :]
    bias = jnp.where(valid, 0.0, jnp.finfo(jnp.float32).min)
    if position_bias is not None:
      bias = bias + position_bias
    ctx = layers.dot_product_attention(q, k_cache.astype(q.dtype), v_cache.astype(q.dtype), bias,
                                       head_major_kv=True, cpu=self.config.cpu_kernels)
    return self.project_out(ctx), SelfCache(k=k_cache, v=v_cache), position_bias


def init_self_cache(config: ModelConfig, batch: int, max_len: int, dtype=jnp.float32):
  """Zeroed key/value cache of one decoder layer: a `SelfCache` of [batch, heads, max_len, d_kv]."""
  shape = (batch, config.num_heads, max_len, config.d_kv)
  return SelfCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))
