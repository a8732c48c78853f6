"""The CRT language model (Flax linen): recurrent memory cells, a pre-LN causal block, the model.

`CRTLM.__call__` processes ONE segment given the carry (memory state) of the previous ones and returns
the new carry; scanning it over a stream (training, evaluation) and decoding token by token live in
`crt/stream.py`. Positions are T5-style relative buckets shared by all layers, so segments, the
memory token and a Transformer-XL cache all use one position scheme.

Key frame of one segment (what the queries of the segment can attend to):
  [ xl cache (memory_len) | memory token (memory_tokens) | the segment's tokens (<= segment_len) ]
with positions 0, 1, ... in that order; a query attends to keys at positions <= its own.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from srformer_jax import layers
from srformer_jax import sharding as sh
from srformer_jax.attention.raf import raf_step
from srformer_jax.attention.self_attention import relative_position_bucket
from srformer_jax.crt.config import CRTConfig


def _param(module, name, shape, axes, init):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


_lecun = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def cayley(a: jax.Array) -> jax.Array:
  """Orthogonal matrix (I + S)^-1 (I - S) of the skew-symmetric part S = a - a^T of `a`."""
  s = a - a.T
  eye = jnp.eye(a.shape[0], dtype=a.dtype)
  return jnp.linalg.solve(eye + s, eye - s)


class MemoryCell(nn.Module):
  """Recurrent cell that updates the memory state {'h': [b, D], ...} from inputs [b, t, D].

  gru:       standard GRU (PyTorch gate layout, reset gate applied after the recurrent product).
  ortho_gru: GRU whose candidate recurrent matrix is orthogonal (Cayley transform of a skew-symmetric
             matrix, solved exactly; the NCGRU of Mucllari et al. uses a Neumann-series approximation).
  raf:       SRformer's Recurrent Accumulate-and-Fire gate; state {'h': output, 'v': membrane}.
  The input projections are computed for all t at once; only the recurrence is a `lax.scan`.
  """

  config: CRTConfig

  @nn.compact
  def __call__(self, state: dict, xs: jax.Array) -> dict:
    c = self.config
    d = c.d_model
    dt = xs.dtype
    gates = 2 if c.cell == "ortho_gru" else 3
    if c.cell in ("gru", "ortho_gru"):
      wx = _param(self, "wx", (d, 3 * d), (sh.EMBED, sh.MLP), _lecun).astype(dt)
      bx = _param(self, "bx", (3 * d,), (sh.MLP,), nn.initializers.zeros).astype(dt)
      wh = _param(self, "wh", (d, gates * d), (sh.EMBED, sh.MLP), nn.initializers.orthogonal()).astype(dt)
      bh = _param(self, "bh", (3 * d,), (sh.MLP,), nn.initializers.zeros).astype(dt)
      if c.cell == "ortho_gru":
        a = _param(self, "skew", (d, d), (sh.EMBED, None), nn.initializers.normal(0.1 / math.sqrt(d)))
        wh = jnp.concatenate([wh, cayley(a.astype(dt))], axis=1)
      xproj = xs @ wx + bx  # [b, t, 3D]

      def step(h, xp):
        hp = h @ wh + bh
        r = jax.nn.sigmoid(xp[:, :d] + hp[:, :d])
        z = jax.nn.sigmoid(xp[:, d:2 * d] + hp[:, d:2 * d])
        n = jnp.tanh(xp[:, 2 * d:] + r * hp[:, 2 * d:])
        h = (1.0 - z) * n + z * h
        return h, None

      h, _ = jax.lax.scan(step, state["h"].astype(dt), jnp.swapaxes(xproj, 0, 1))
      return {"h": h}
    # raf
    wx = _param(self, "wx", (d, d), (sh.EMBED, sh.MLP), _lecun).astype(dt)
    wh = _param(self, "wh", (d, d), (sh.EMBED, sh.MLP), _lecun).astype(dt)
    b = _param(self, "b", (d,), (sh.MLP,), nn.initializers.zeros).astype(dt)
    thr = _param(self, "threshold", (1,), (None,), nn.initializers.constant(c.raf_threshold_init)).astype(dt)
    leak = _param(self, "leak", (1,), (None,), nn.initializers.constant(c.raf_leak_init)).astype(dt)
    xproj = xs @ wx + b

    def raf(carry, xp):
      h, v = carry
      v, h = raf_step(v, xp + h @ wh, thr, leak)
      return (h, v), None

    (h, v), _ = jax.lax.scan(raf, (state["h"].astype(dt), state["v"].astype(dt)), jnp.swapaxes(xproj, 0, 1))
    return {"h": h, "v": v}


def init_memory_state(config: CRTConfig, batch: int, dtype=jnp.float32) -> dict:
  z = jnp.zeros((batch, config.d_model), dtype)
  return {"h": z, "v": z} if config.cell == "raf" else {"h": z}


class Block(nn.Module):
  """Pre-LN causal Transformer layer; keys may extend over a prefix (Transformer-XL cache) and a
  decoding cache [b, C, h, d]."""

  config: CRTConfig

  def setup(self):
    c = self.config
    dt = c.jnp_dtype
    self.ln1 = layers.LayerNorm(dtype=dt)
    self.ln2 = layers.LayerNorm(dtype=dt)
    self.q = layers.dense(c.d_model, (sh.EMBED, sh.JOINED_KV), use_bias=False, dtype=dt, cpu=self.config.cpu_kernels)
    self.k = layers.dense(c.d_model, (sh.EMBED, sh.JOINED_KV), use_bias=False, dtype=dt, cpu=self.config.cpu_kernels)
    self.v = layers.dense(c.d_model, (sh.EMBED, sh.JOINED_KV), use_bias=False, dtype=dt, cpu=self.config.cpu_kernels)
    self.o = layers.dense(c.d_model, (sh.JOINED_KV, sh.EMBED), use_bias=False, dtype=dt, cpu=self.config.cpu_kernels)
    self.ff1 = layers.dense(c.d_ff, (sh.EMBED, sh.MLP), use_bias=True, dtype=dt, cpu=self.config.cpu_kernels)
    self.ff2 = layers.dense(c.d_model, (sh.MLP, sh.EMBED), use_bias=True, dtype=dt, cpu=self.config.cpu_kernels)
    self.dropout = layers.Dropout(c.dropout_rate, hashed=self.config.cpu_kernels)
    self.act = layers.activation(c.activation)

  def kv(self, x):
    """Keys and values of (unnormalised) hidden states x [b, t, D]: 2 x [b, t, h, d]."""
    y = self.ln1(x)
    return (layers.shape_heads(self.k(y), self.config.num_heads),
            layers.shape_heads(self.v(y), self.config.num_heads))

  def __call__(self, x, bias, prefix=None, cache=None, index=None, deterministic=True):
    """x [b, q, D]; bias [b|1, h, q, keys]; prefix [b, M, D] hidden states in front of the keys;
    cache {'k','v'} [b, C, h, d] written at `index` (decoding). Returns (x, cache)."""
    c = self.config
    y = self.ln1(x)
    q = layers.shape_heads(self.q(y), c.num_heads) / math.sqrt(c.d_kv)
    k = layers.shape_heads(self.k(y), c.num_heads)
    v = layers.shape_heads(self.v(y), c.num_heads)
    if cache is not None:
      zero = jnp.zeros((), jnp.int32)
      index = jnp.asarray(index, jnp.int32)
      k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (zero, index, zero, zero))
      v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (zero, index, zero, zero))
      cache = {"k": k, "v": v}
    if prefix is not None:
      pk, pv = self.kv(prefix)
      k = jnp.concatenate([pk, k.astype(pk.dtype)], axis=1)
      v = jnp.concatenate([pv, v.astype(pv.dtype)], axis=1)
    ctx = layers.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), bias,
                                       cpu=self.config.cpu_kernels)  # [b, q, h, d]
    x = x + self.dropout(self.o(layers.merge_heads(ctx)), deterministic=deterministic)
    h = self.act(self.ff1(self.ln2(x)))
    h = self.dropout(h, deterministic=deterministic)
    x = x + self.dropout(self.ff2(h), deterministic=deterministic)
    return x, cache


class CRTLM(nn.Module):
  """Decoder-only LM over segments with a persistent memory (CRT), none, or a Transformer-XL cache."""

  config: CRTConfig

  def setup(self):
    c = self.config
    dt = c.jnp_dtype
    self.embed = layers.embed(c.vocab_size, c.d_model, (sh.VOCAB, sh.EMBED), dtype=dt,
                              init_std=c.d_model ** -0.5, cpu=self.config.cpu_kernels)
    self.rel_bias = layers.embed(c.relative_attention_num_buckets, c.num_heads, (None, sh.HEADS),
                                 dtype=jnp.float32, cpu=self.config.cpu_kernels)
    self.blocks = [Block(c, name=f"layer_{i}") for i in range(c.num_layers)]
    self.ln_f = layers.LayerNorm(dtype=dt)
    self.emb_dropout = layers.Dropout(c.dropout_rate, hashed=self.config.cpu_kernels)
    if c.memory == "crt":
      self.cell = MemoryCell(c)
      if c.memory_input == "token":
        self.mem_in = layers.dense(c.d_model, (sh.EMBED, None), use_bias=True, dtype=dt, cpu=self.config.cpu_kernels)
      else:
        self.mem_in_layers = [layers.dense(c.d_model, (sh.EMBED, None), use_bias=True, dtype=dt,
                                           name=f"mem_in_{i}", cpu=self.config.cpu_kernels)
                            for i in range(c.num_layers)]

  # --- pieces ---------------------------------------------------------------------------------

  def attention_bias(self, q_pos, k_pos, k_valid):
    """Relative-position bias + causal/validity mask: [b|1, h, q, k] (float32, float64 under x64)."""
    c = self.config
    rel = k_pos[None, :] - q_pos[:, None]
    bucket = relative_position_bucket(rel, bidirectional=False,
                                      num_buckets=c.relative_attention_num_buckets,
                                      max_distance=c.relative_attention_max_distance)
    acc = layers.accum_dtype(c.jnp_dtype)
    pb = jnp.transpose(self.rel_bias(bucket), (2, 0, 1))[None].astype(acc)  # [1, h, q, k]
    allowed = (rel <= 0)[None, None] & k_valid[:, None, None, :]
    bias = jnp.where(allowed, 0.0, jnp.finfo(acc).min).astype(acc)
    return layers.add_bias(pb, bias) if self.config.cpu_kernels else pb + bias

  def embed_tokens(self, tokens, deterministic):
    x = self.embed(tokens) * math.sqrt(self.config.d_model)
    return self.emb_dropout(x, deterministic=deterministic)

  def logits(self, out):
    return self.embed.attend(out)

  def update_memory(self, mem_state, xs):
    """Cell update of the memory state from inputs xs [b, t, D]."""
    return self.cell(mem_state, xs)

  def _xl_prefix(self, carry, i):
    return jax.lax.stop_gradient(carry["h"][:, i]).astype(self.config.jnp_dtype)

  def _xl_valid(self, carry, batch):
    m = self.config.memory_len
    if not m:
      return jnp.ones((batch, 0), bool)
    return jnp.arange(m)[None, :] >= (m - carry["filled"])[:, None]  # [b, M]: filled slots are the last

  def _mem_vector(self, carry):
    return carry["mem"]["h"].astype(self.config.jnp_dtype)

  # --- one segment ----------------------------------------------------------------------------

  def __call__(self, tokens, carry, deterministic=True, hidden=False):
    """tokens [b, l] (l <= segment_len) -> (logits [b, l, V], new carry); with `hidden`, the final
    states [b, l, D] instead of the logits (`logits` maps them to the vocabulary)."""
    c = self.config
    b, l = tokens.shape
    m, n_mem = c.memory_len, c.memory_tokens
    x = self.embed_tokens(tokens, deterministic)  # [b, l, D]
    if n_mem:
      x = jnp.concatenate([self.mem_in(self._mem_vector(carry))[:, None], x], axis=1)
    q_pos = jnp.arange(m, m + n_mem + l)
    k_pos = jnp.arange(m + n_mem + l)
    k_valid = jnp.concatenate([self._xl_valid(carry, b), jnp.ones((b, n_mem + l), bool)], axis=1)
    bias = self.attention_bias(q_pos, k_pos, k_valid)
    layer_inputs = []
    for i, blk in enumerate(self.blocks):
      if c.memory == "crt" and c.memory_input == "layer":
        x = x + self.mem_in_layers[i](self._mem_vector(carry))[:, None]
      layer_inputs.append(x)
      x, _ = blk(x, bias, prefix=self._xl_prefix(carry, i) if m else None, deterministic=deterministic)
    out = self.ln_f(x)[:, n_mem:]  # [b, l, D]
    return (out if hidden else self.logits(out)), self.next_carry(carry, out, layer_inputs, n_mem)

  def next_carry(self, carry, out, layer_inputs, n_mem):
    c = self.config
    if c.memory == "crt":
      xs = out if c.memory_update == "sequence" else jnp.mean(out, axis=1, keepdims=True)
      new = self.update_memory(carry["mem"], xs)
      # the carried state keeps its own dtype (float32 by default) whatever the compute dtype: a
      # scan's carry must not change type, and the memory crosses the whole stream
      return {"mem": jax.tree.map(lambda n, o: n.astype(o.dtype), new, carry["mem"])}
    if c.memory == "xl":
      m = c.memory_len
      h = jnp.stack([x[:, n_mem:] for x in layer_inputs], axis=1)  # [b, layers, l, D]
      h = jnp.concatenate([carry["h"], h.astype(carry["h"].dtype)], axis=2)[:, :, -m:]
      return {"h": h, "filled": jnp.minimum(carry["filled"] + out.shape[1], m)}
    return {}

  # --- decoding: one position at a time through a cache ----------------------------------------

  def memory_token_step(self, carry, cache):
    """Writes the memory token's keys/values into cache slot 0 of every layer (segment start)."""
    return self._step(self.mem_in(self._mem_vector(carry))[:, None], carry, cache, 0)[2]

  def token_step(self, token, carry, cache, t):
    """token [b] at position t of the segment -> (logits [b, V], output [b, D], layer inputs
    [b, layers, D], cache)."""
    x = self.embed_tokens(token[:, None], True)
    out, inputs, cache = self._step(x, carry, cache, self.config.memory_tokens + t)
    return self.logits(out[:, 0]), out[:, 0], inputs, cache

  def _step(self, x, carry, cache, index):
    c = self.config
    b = x.shape[0]
    m = c.memory_len
    slots = cache[0]["k"].shape[1]
    q_pos = jnp.reshape(m + jnp.asarray(index, jnp.int32), (1,))
    k_valid = jnp.concatenate([self._xl_valid(carry, b), jnp.ones((b, slots), bool)], axis=1)
    bias = self.attention_bias(q_pos, jnp.arange(m + slots), k_valid)
    new_cache, inputs = [], []
    for i, blk in enumerate(self.blocks):
      if c.memory == "crt" and c.memory_input == "layer":
        x = x + self.mem_in_layers[i](self._mem_vector(carry))[:, None]
      inputs.append(x[:, 0])
      x, layer_cache = blk(x, bias, prefix=self._xl_prefix(carry, i) if m else None, cache=cache[i],
                           index=index)
      new_cache.append(layer_cache)
    return self.ln_f(x), jnp.stack(inputs, axis=1), new_cache


def init_carry(config: CRTConfig, batch: int, dtype=jnp.float32) -> dict:
  """The memory state before the first segment of a stream."""
  if config.memory == "crt":
    return {"mem": init_memory_state(config, batch, dtype)}
  if config.memory == "xl":
    return {"h": jnp.zeros((batch, config.num_layers, config.memory_len, config.d_model), dtype),
            "filled": jnp.zeros((batch,), jnp.int32)}
  return {}


def init_params(config: CRTConfig, rng, batch: int = 1, boxed: bool = False):
  model = CRTLM(config)
  tokens = jnp.zeros((batch, config.segment_len), jnp.int32)
  variables = model.init(rng, tokens, init_carry(config, batch))
  return variables["params"] if boxed else nn.unbox(variables["params"])
