"""Pure functions over a token stream: scanned training/evaluation forward and token-by-token decoding.

Training runs `jax.lax.scan` over the segments of a [batch, T] window with gradients through the
memory; `truncate_every=N` stops the gradient on the memory entering segments N, 2N, ... of the window
(N=0: never inside the window; the carry handed between training windows is a constant anyway). Decoding keeps the memory,
the current segment's key/value cache and the cell's running state in an explicit pytree; the memory
is updated when a segment is complete, exactly as in the parallel forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from srformer_jax.crt.config import CRTConfig
from srformer_jax.crt.model import CRTLM, init_carry


def build_model(config: CRTConfig) -> CRTLM:
  return CRTLM(config)


def _check_stream(config: CRTConfig, length: int, what: str = "stream"):
  L = config.segment_len
  if length < L:
    raise ValueError(f"{what} of {length} tokens is shorter than one segment (segment_len={L})")
  if length % L:
    raise ValueError(f"{what} of {length} tokens is not a whole number of segments of {L}; "
                     "use evaluate_stream for a ragged tail")


def scan_segments(model: CRTLM, params, inputs, carry, targets=None, *, truncate_every: int = 0,
                  deterministic: bool = True, rng=None):
  """Runs the model over the segments of inputs [b, T] (T a multiple of segment_len).

  Returns (logits [b, T, V], carry) or, with targets [b, T], (per-token cross-entropy [b, T], carry).
  """
  c = model.config
  b, t = inputs.shape
  _check_stream(c, t)
  L = c.segment_len
  seg = lambda a: jnp.swapaxes(a.reshape(b, t // L, L), 0, 1)  # [S, b, L]
  xs = {"x": seg(inputs), "i": jnp.arange(t // L)}

  def body(carry, inp):
    if truncate_every:
      cut = (inp["i"] > 0) & (inp["i"] % truncate_every == 0)
      carry = jax.tree.map(lambda a: jnp.where(cut, jax.lax.stop_gradient(a), a), carry)
    rngs = None if deterministic else {"dropout": jax.random.fold_in(rng, inp["i"])}
    out, carry = model.apply({"params": params}, inp["x"], carry, deterministic=deterministic,
                             rngs=rngs, hidden=True)
    return carry, out  # [b, L, D]

  # The vocabulary projection and the loss run once over the whole window, after the scan: inside
  # it, the backward pass would stack every segment's [b, L, V] softmax through the loop (on a
  # CPU that buffer's memset and copies cost as much as the projection itself).
  carry, outs = jax.lax.scan(body, carry, xs)
  out = jnp.swapaxes(outs, 0, 1).reshape(b, t, -1)  # [S, b, L, D] -> [b, T, D]
  logits = model.apply({"params": params}, out, method=model.logits)  # [b, T, V]
  if targets is not None:
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), targets), carry
  return logits, carry


def evaluate_stream(model: CRTLM, params, inputs, targets, carry=None, *, chunk_segments: int = 4096,
                    per_token: bool = False):
  """Summed cross-entropy over a whole stream, carrying the memory from its start to its end.

  inputs/targets [b, T] with any T >= segment_len: whole segments are scanned in jitted chunks of
  `chunk_segments`, a ragged tail (< segment_len) is one shorter segment. Returns
  (loss_sum, token_count, final carry); the carry may be handed to the next piece of the stream.
  `per_token`: the first element is each target's cross-entropy instead, [b, T] float32.
  """
  c = model.config
  b, t = inputs.shape
  if t < c.segment_len:
    raise ValueError(f"stream of {t} tokens is shorter than one segment (segment_len={c.segment_len})")
  if carry is None:
    carry = init_carry(c, b, jnp.dtype(c.dtype))
  fn = _eval_fn(model, per_token)
  total = jnp.zeros((), jnp.promote_types(c.jnp_dtype, jnp.float32))
  pieces = []
  L, pos = c.segment_len, 0
  while pos < t:
    n = min(chunk_segments * L, (t - pos) // L * L) or (t - pos)  # whole segments, then the tail
    ce, carry = fn(params, inputs[:, pos:pos + n], targets[:, pos:pos + n], carry)
    if per_token:
      pieces.append(ce)
    else:
      total = total + ce
    pos += n
  if per_token:
    return jnp.concatenate(pieces, axis=1), b * t, carry
  return total, b * t, carry


_EVAL_FNS: dict = {}


def _eval_fn(model: CRTLM, per_token: bool = False):
  """Jitted (params, inputs, targets, carry) -> (loss_sum, carry), or ([b, n] losses, carry) with
  `per_token`; a tail shorter than one segment is applied as a single segment."""
  key = (model.config, per_token)
  if key not in _EVAL_FNS:
    def fn(params, inputs, targets, carry):
      if inputs.shape[1] < model.config.segment_len:
        logits, carry = model.apply({"params": params}, inputs, carry)
        ce = optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), targets)
      else:
        ce, carry = scan_segments(model, params, inputs, carry, targets)
      return (ce.astype(jnp.float32) if per_token else jnp.sum(ce)), carry
    _EVAL_FNS[key] = jax.jit(fn)
  return _EVAL_FNS[key]


# ------------------------------------------------------------------------------------------------
# decoding


def _start_segment(model, params, carry, batch, dtype=None):
  """State before the first token of a segment: the memory carry, a zeroed cache (with the memory
  token written), the cell's running state / output sum, the segment's layer inputs (XL), t=0."""
  c = model.config
  dtype = dtype or c.jnp_dtype
  slots = c.memory_tokens + c.segment_len
  cache = [{"k": jnp.zeros((batch, slots, c.num_heads, c.d_kv), dtype),
            "v": jnp.zeros((batch, slots, c.num_heads, c.d_kv), dtype)} for _ in range(c.num_layers)]
  state = {"carry": carry, "cache": cache, "t": jnp.zeros((), jnp.int32)}
  if c.memory == "crt":
    state["cell"] = carry["mem"]
    state["out_sum"] = jnp.zeros((batch, c.d_model), dtype)
    if c.memory_tokens:
      state["cache"] = model.apply({"params": params}, carry, cache, method=CRTLM.memory_token_step)
  if c.memory == "xl":
    state["seg_h"] = jnp.zeros((batch, c.num_layers, c.segment_len, c.d_model), dtype)
  return state


def decode_state_for(model: CRTLM, params, batch: int, carry=None) -> dict:
  c = model.config
  if carry is None:
    carry = init_carry(c, batch, c.jnp_dtype)
  return _start_segment(model, params, carry, batch)


def decode_step(model: CRTLM, params, state: dict, token):
  """Feeds token [b] at the current position -> (logits [b, V], new state)."""
  c = model.config
  t = state["t"]
  logits, out, inputs, cache = model.apply({"params": params}, token, state["carry"], state["cache"], t,
                                           method=CRTLM.token_step)
  state = dict(state, cache=cache, t=t + 1)
  if c.memory == "crt":
    if c.memory_update == "sequence":
      state["cell"] = model.apply({"params": params}, state["cell"], out[:, None],
                                  method=CRTLM.update_memory)
    else:
      state["out_sum"] = state["out_sum"] + out
  if c.memory == "xl":
    zero = jnp.zeros((), jnp.int32)
    state["seg_h"] = jax.lax.dynamic_update_slice(state["seg_h"], inputs[:, :, None].astype(state["seg_h"].dtype),
                                                  (zero, zero, t.astype(jnp.int32), zero))

  def finish(s):
    carry = s["carry"]
    if c.memory == "crt":
      if c.memory_update == "sequence":
        carry = {"mem": s["cell"]}
      else:
        mean = (s["out_sum"] / c.segment_len)[:, None]
        carry = {"mem": model.apply({"params": params}, carry["mem"], mean, method=CRTLM.update_memory)}
    if c.memory == "xl":
      m = c.memory_len
      h = jnp.concatenate([carry["h"], s["seg_h"].astype(carry["h"].dtype)], axis=2)[:, :, -m:]
      carry = {"h": h, "filled": jnp.minimum(carry["filled"] + c.segment_len, m)}
    return _start_segment(model, params, carry, token.shape[0], s["cache"][0]["k"].dtype)

  state = jax.lax.cond(state["t"] == c.segment_len, finish, lambda s: s, state)
  return logits, state


def stepwise_logits(model: CRTLM, params, tokens, carry=None):
  """Teacher forcing through the decoding state: tokens [b, T] -> (logits [b, T, V], final state)."""
  state = decode_state_for(model, params, tokens.shape[0], carry)

  def body(s, tok):
    logits, s = decode_step(model, params, s, tok)
    return s, logits

  state, logits = jax.lax.scan(body, state, jnp.swapaxes(tokens, 0, 1))
  return jnp.swapaxes(logits, 0, 1), state


def generate(model: CRTLM, params, prompt, num_tokens: int, carry=None, *, rng=None,
             temperature: float = 0.0):
  """Continues prompt [b, P>=1] by num_tokens tokens (greedy, or sampled with rng at temperature).

  Returns (tokens [b, num_tokens], final decoding state). The memory is updated at every segment
  boundary of prompt + continuation, as in training.
  """
  if prompt.shape[1] < 1:
    raise ValueError("generate needs a prompt of at least one token")
  logits, state = stepwise_logits(model, params, prompt[:, :-1], carry) if prompt.shape[1] > 1 else (
      None, decode_state_for(model, params, prompt.shape[0], carry))
  rng = jax.random.key(0) if rng is None else rng

  def body(carry, i):
    s, tok = carry
    logits, s = decode_step(model, params, s, tok)
    if temperature > 0:
      nxt = jax.random.categorical(jax.random.fold_in(rng, i), logits / temperature, axis=-1)
    else:
      nxt = jnp.argmax(logits, axis=-1)
    nxt = nxt.astype(prompt.dtype)
    return (s, nxt), nxt

  (state, _), toks = jax.lax.scan(body, (state, prompt[:, -1]), jnp.arange(num_tokens))
  return jnp.swapaxes(toks, 0, 1), state
