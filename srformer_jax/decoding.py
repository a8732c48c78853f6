"""Greedy and beam-search generation, fully inside `jax.lax.while_loop`.

The decoding state is an explicit pytree: the model's cache (per layer: the self-attention K/V,
which grows by one token per step, and the cross-attention state, fixed once the input is encoded:
K/V, or for SRformer the segments and the RAF output of every segment decoding visits) plus the
sequences and scores. Beam search reorders the self-attention caches along the batch axis.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from srformer_jax import validation as check

NEG_INF = -1.0e30


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Generation settings (HF semantics for length_penalty, no_repeat_ngram_size, early_stopping)."""

  max_len: int = 128
  num_beams: int = 1
  length_penalty: float = 1.0  # beam score = sum log p / length ** length_penalty
  no_repeat_ngram_size: int = 0
  min_len: int = 0
  early_stopping: bool = True  # a batch row stops once it has num_beams finished hypotheses
  # With ids, the n-gram ban reaches back only to the last occurrence of this token sequence (a
  # separator between joined summaries): each part may repeat the others' n-grams, and the
  # separator itself is never banned. Empty: the whole output, as HF.
  ngram_scope_ids: tuple[int, ...] = ()

  def __post_init__(self):
    check.integer(self.max_len, "max_len", 1, " (the number of decoding steps)")
    check.integer(self.num_beams, "num_beams", 1, " (1 = greedy)")
    check.integer(self.no_repeat_ngram_size, "no_repeat_ngram_size", 0, " (0 = no n-gram ban)")
    check.integer(self.min_len, "min_len", 0, " (0 = no minimum)")
    if isinstance(self.length_penalty, bool) or not isinstance(self.length_penalty, (int, float)) \
        or not math.isfinite(self.length_penalty):
      raise ValueError(f"length_penalty must be a finite number (1.0 = score / length, 0.0 = no "
                       f"length normalisation), got {self.length_penalty!r}")
    if self.min_len > self.max_len:
      raise ValueError(f"min_len {self.min_len} > max_len {self.max_len}: raise max_len or lower min_len")
    if not isinstance(self.early_stopping, bool):
      raise TypeError(f"early_stopping must be True or False, got {self.early_stopping!r}")
    if not isinstance(self.ngram_scope_ids, tuple) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.ngram_scope_ids):
      raise TypeError(f"ngram_scope_ids must be a tuple of token ids (() = ban n-grams across the whole "
                      f"output), got {self.ngram_scope_ids!r}")


def _ban_repeated_ngrams(logits, seqs, t, n: int, scope_ids: tuple[int, ...] = ()):
  """Sets logits of tokens that would repeat an n-gram of seqs[:, :t] to NEG_INF; with `scope_ids`,
  only n-grams (earlier ones and the candidate) that start after the last complete occurrence of
  that token sequence in seqs[:, :t] count.

  logits [B, V]; seqs [B, L] (positions >= t are ignored); t scalar.
  """
  if n <= 0:
    return logits
  b, length = seqs.shape
  if length < n:
    return logits
  num = length - n + 1
  windows = jnp.stack([seqs[:, i:i + num] for i in range(n)], axis=-1)  # [B, num, n]
  start = jnp.maximum(t - (n - 1), 0)
  prefix = jax.lax.dynamic_slice_in_dim(seqs, start, n - 1, axis=1) if n > 1 else seqs[:, :0]
  match = jnp.all(windows[..., : n - 1] == prefix[:, None, :], axis=-1)
  match &= (jnp.arange(num) + n - 1 < t)[None, :] & (t >= n - 1)
  if scope_ids and length >= len(scope_ids):
    k = len(scope_ids)
    at = jnp.arange(length - k + 1)  # a separator starting at j ends before j + k
    sep = jnp.all(jnp.stack([seqs[:, i:i + length - k + 1] for i in range(k)], axis=-1)
                  == jnp.asarray(scope_ids, seqs.dtype), axis=-1) & (at + k <= t)[None, :]  # [B, L-k+1]
    scope = jnp.max(jnp.where(sep, at + k, 0), axis=1)  # [B]: where the current part starts
    match &= (jnp.arange(num)[None, :] >= scope[:, None]) & (t - (n - 1) >= scope)[:, None]
  rows = jnp.arange(b)[:, None]
  return logits.at[rows, windows[..., n - 1]].min(jnp.where(match, NEG_INF, jnp.inf))


def _process_logits(logits, seqs, t, dc: DecodeConfig, config):
  """Length and n-gram constraints on log-probs / logits [B, V] for position t.

  seqs [B, L]: tokens generated so far (the decoder start token counts for n-grams, as in HF).
  """
  vocab = jnp.arange(logits.shape[-1])
  if dc.min_len > 0:
    logits = jnp.where((t < dc.min_len) & (vocab == config.eos_token_id), NEG_INF, logits)
  for forced, when in ((config.forced_bos_token_id, t == 0),
                       (config.forced_eos_token_id, t == dc.max_len - 1)):
    if forced is not None:  # as HF: the forced token scores 0, every other token -inf
      logits = jnp.where(when, jnp.where(vocab == forced, 0.0, NEG_INF), logits)
  if dc.no_repeat_ngram_size <= 0:
    return logits
  start = jnp.full((seqs.shape[0], 1), config.decoder_start_token_id, seqs.dtype)
  with_start = jnp.concatenate([start, seqs], axis=1)
  return _ban_repeated_ngrams(logits, with_start, t + 1, dc.no_repeat_ngram_size, dc.ngram_scope_ids)


def generate(model: nn.Module, params, input_ids, attention_mask=None, dc: DecodeConfig = DecodeConfig(),
             return_scores: bool = False):
  """Generates [b, max_len] token ids (pad after EOS) with greedy (num_beams=1) or beam search.

  input_ids [b, k] integer; attention_mask [b, k] (1 = real token) or None for all ones.
  With `return_scores`, also returns [b] scores: the summed log-probs of the tokens (beam search:
  divided by length ** length_penalty, as HF). Jit with `model`, `dc`, `return_scores` static:
  `jax.jit(generate, static_argnums=(0, 4, 5))`, or use `generate_jit` (which also checks that
  concrete ids lie in the vocabulary).
  """
  input_ids = check.token_ids(input_ids, "input_ids")
  attention_mask = check.attention_mask(attention_mask, input_ids.shape)
  enc = model.apply({"params": params}, input_ids, attention_mask, method=model.encode)
  seqs, scores = generate_from_encoded(model, params, enc, attention_mask, dc)
  return (seqs, scores) if return_scores else seqs


def generate_from_encoded(model: nn.Module, params, encoder_out, attention_mask=None,
                          dc: DecodeConfig = DecodeConfig()):
  """Like `generate` (returning (tokens, scores)) but starting from encoder states [b, k, D]."""
  if not isinstance(dc, DecodeConfig):
    raise TypeError(f"dc must be a DecodeConfig, got {type(dc).__name__}: "
                    f"pass DecodeConfig(max_len=..., num_beams=...)")
  check.encoder_states(encoder_out)
  attention_mask = check.attention_mask(attention_mask, encoder_out.shape[:2], of="encoder_out")
  search = _greedy if dc.num_beams == 1 else _beam_search
  return search(model, {"params": params}, encoder_out, attention_mask, dc)


def _greedy(model, variables, enc, mask, dc: DecodeConfig):
  cache = model.apply(variables, enc, mask, dc.max_len, method=model.init_cache)
  tokens, score, _ = greedy_from_cache(model, variables, cache, enc.shape[0], dc)
  return tokens, score


def greedy_from_cache(model: nn.Module, variables, cache, batch: int, dc: DecodeConfig = DecodeConfig()):
  """Greedy decoding's steps alone, from a cache made by `model.init_cache` for `dc.max_len`
  positions (the per-input work done): (tokens [batch, max_len], scores [batch], the cache after
  the last step). The benchmarks time decoding's per-token cost with it, apart from the per-input
  work (returning the cache lets a jitted caller donate it: the steps then update it in place)."""
  c = model.config
  b = batch
  tokens = jnp.full((b, dc.max_len), c.pad_token_id, jnp.int32)
  prev = jnp.full((b,), c.decoder_start_token_id, jnp.int32)
  done = jnp.zeros((b,), bool)
  score = jnp.zeros((b,), jnp.float32)

  def cond(state):
    t, _, _, done, _, _ = state
    return (t < dc.max_len) & ~jnp.all(done)

  def body(state):
    t, prev, tokens, done, score, cache = state
    logits, cache = model.apply(variables, prev, cache, method=model.decode_step)
    logp = _process_logits(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), tokens, t, dc, c)
    nxt = jnp.argmax(logp, axis=-1).astype(jnp.int32)
    score = score + jnp.where(done, 0.0, jnp.take_along_axis(logp, nxt[:, None], axis=1)[:, 0])
    nxt = jnp.where(done, c.pad_token_id, nxt)
    tokens = tokens.at[:, t].set(nxt)
    return t + 1, nxt, tokens, done | (nxt == c.eos_token_id), score, cache

  init = (jnp.zeros((), jnp.int32), prev, tokens, done, score, cache)
  _, _, tokens, _, score, cache = jax.lax.while_loop(cond, body, init)
  return tokens, score, cache


def _gather_beams(x, idx):
  """x [b, k, ...], idx [b, n] -> [b, n, ...]."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _reorder_cache(cache, flat_idx):
  """Reorders the self-attention caches to the surviving beams.

  The cross-attention state (K/V, segments, RAF outputs) depends only on the input, never on the
  tokens, and beams are only ever reordered within their own example: it is held once per example
  (`init_cache(..., beams=k)`) and read by all of its beams, never copied.
  """
  layers = [layer.replace(self_attn=jax.tree.map(lambda x: x[flat_idx], layer.self_attn))
            for layer in cache.layers]
  return cache.replace(layers=layers)


def _beam_search(model, variables, enc, mask, dc: DecodeConfig):
  c = model.config
  b, k, length = enc.shape[0], dc.num_beams, dc.max_len
  # the cross-attention state once per input, shared by its k beams (rows b*k grouped by input)
  cache = model.apply(variables, enc, mask, length, k, method=model.init_cache)
  pad, eos = c.pad_token_id, c.eos_token_id
  norm = lambda t: (t + 1.0) ** dc.length_penalty  # t: 0-based position of the last token

  state = dict(
      t=jnp.zeros((), jnp.int32),
      prev=jnp.full((b, k), c.decoder_start_token_id, jnp.int32),
      live_seqs=jnp.full((b, k, length), pad, jnp.int32),
      # only beam 0 is alive at the start, so the first top-k does not pick k copies of one token
      live_lp=jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1))[None], (b, 1)),
      fin_seqs=jnp.full((b, k, length), pad, jnp.int32),
      fin_scores=jnp.full((b, k), NEG_INF),
      cache=cache,
  )

  def row_done(s):
    full = jnp.all(s["fin_scores"] > NEG_INF / 2, axis=-1)
    if dc.early_stopping:
      return full
    best_live = s["live_lp"][:, 0] / norm(s["t"] - 1.0)
    return full & (jnp.min(s["fin_scores"], axis=-1) >= best_live)

  def cond(s):
    return (s["t"] < length) & ~jnp.all(row_done(s))

  def body(s):
    t = s["t"]
    logits, cache = model.apply(variables, s["prev"].reshape(b * k), s["cache"], method=model.decode_step)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    logp = _process_logits(logp, s["live_seqs"].reshape(b * k, length), t, dc, c)
    vocab = logp.shape[-1]
    cand = (s["live_lp"][..., None] + logp.reshape(b, k, vocab)).reshape(b, k * vocab)
    top_scores, top_idx = jax.lax.top_k(cand, 2 * k)  # [b, 2k]
    beam, tok = top_idx // vocab, (top_idx % vocab).astype(jnp.int32)
    seqs = _gather_beams(s["live_seqs"], beam).at[:, :, t].set(tok)
    is_eos = tok == eos
    # Rows already done keep their finished set; their live beams no longer matter.
    done = row_done(s)[:, None]
    # live beams: best k candidates that did not end
    live_scores, sel = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_scores), k)
    live_seqs = _gather_beams(seqs, sel)
    live_beam = jnp.take_along_axis(beam, sel, axis=1)
    # finished: merge the previous set with candidates that ended here (as HF, only the top k
    # candidates may finish; the other k only keep k beams alive)
    in_top_k = (jnp.arange(2 * k) < k)[None, :]
    new_fin = jnp.where(is_eos & in_top_k & ~done & (top_scores > NEG_INF / 2), top_scores / norm(t),
                        NEG_INF)
    all_scores = jnp.concatenate([s["fin_scores"], new_fin], axis=1)
    all_seqs = jnp.concatenate([s["fin_seqs"], seqs], axis=1)
    fin_scores, fsel = jax.lax.top_k(all_scores, k)
    flat = (jnp.arange(b)[:, None] * k + live_beam).reshape(b * k)
    return dict(t=t + 1, prev=jnp.take_along_axis(tok, sel, axis=1), live_seqs=live_seqs,
                live_lp=live_scores, fin_seqs=_gather_beams(all_seqs, fsel), fin_scores=fin_scores,
                cache=_reorder_cache(cache, flat))

  s = jax.lax.while_loop(cond, body, state)
  # Rows with fewer than k finished hypotheses also consider their unfinished beams (as HF does).
  live_ok = (s["live_lp"] > NEG_INF / 2) & ~row_done(s)[:, None]
  live_final = jnp.where(live_ok, s["live_lp"] / norm(s["t"] - 1.0), NEG_INF)
  scores = jnp.concatenate([s["fin_scores"], live_final], axis=1)
  seqs = jnp.concatenate([s["fin_seqs"], s["live_seqs"]], axis=1)
  best = jnp.argmax(scores, axis=1)
  return (jnp.take_along_axis(seqs, best[:, None, None], axis=1)[:, 0],
          jnp.take_along_axis(scores, best[:, None], axis=1)[:, 0])


_generate_jitted = jax.jit(generate, static_argnums=(0, 4, 5))


def generate_jit(model, params, input_ids, attention_mask=None, dc: DecodeConfig = DecodeConfig(),
                 return_scores: bool = False):
  """`generate`, jitted with the model and decode settings static (one compilation per input
  shape and settings). Concrete ids are checked to lie in the model's vocabulary first."""
  if not isinstance(dc, DecodeConfig):
    raise TypeError(f"dc must be a DecodeConfig, got {type(dc).__name__}: "
                    f"pass DecodeConfig(max_len=..., num_beams=...)")
  input_ids = check.token_ids(input_ids, "input_ids")
  check.id_range(input_ids, model.config.vocab_size, "input_ids")
  return _generate_jitted(model, params, input_ids, attention_mask, dc, return_scores)


def compile_generate(model, params, input_ids, attention_mask, dc: DecodeConfig = DecodeConfig(),
                     return_scores: bool = False):
  """`generate` compiled ahead of time for these argument shapes and shardings: a callable
  (params, input_ids, attention_mask) -> output. Multi-process callers compile, wait at a barrier,
  then call, so that no process enters the decode's collectives while a peer still compiles."""
  if not isinstance(dc, DecodeConfig):
    raise TypeError(f"dc must be a DecodeConfig, got {type(dc).__name__}")
  compiled = _generate_jitted.lower(model, params, input_ids, attention_mask, dc, return_scores).compile()
  return lambda p, ids, mask: compiled(p, ids, mask)


def stepwise_logits(model: nn.Module, params, input_ids, attention_mask, decoder_input_ids,
                    max_len: int | None = None):
  """Teacher-forced logits [b, q, V] computed token by token through the decoding cache
  (attention_mask None: all ones).

  Equals `model.apply(params, input_ids, attention_mask, decoder_input_ids)` up to float error
  (when config.gen_len == q for the segmented kinds); the tests check exactly that.
  """
  variables = {"params": params}
  decoder_input_ids = check.token_ids(decoder_input_ids, "decoder_input_ids")
  q = decoder_input_ids.shape[1]
  enc = model.apply(variables, input_ids, attention_mask, method=model.encode)
  cache = model.apply(variables, enc, attention_mask, max_len or q, method=model.init_cache)

  def body(cache, tokens):
    logits, cache = model.apply(variables, tokens, cache, method=model.decode_step)
    return cache, logits

  _, logits = jax.lax.scan(body, cache, jnp.swapaxes(decoder_input_ids, 0, 1))
  return jnp.swapaxes(logits, 0, 1)
