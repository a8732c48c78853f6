"""The encoder-decoder interface shared by T5 and BART (see `srformer_jax.model`)."""

from __future__ import annotations

import jax.numpy as jnp

from srformer_jax import validation as check
from srformer_jax.attention.cache import DecodeCache


class EncoderDecoderMixin:
  """encode / decode / __call__ / init_cache / decode_step in terms of three hooks of the model:
  `_embed(ids)`, `_stacks()` -> (encoder, decoder) and `_logits(hidden)`.

  Inputs are checked (see `srformer_jax.validation`): integer ids with no empty axis, masks of the
  ids' shape (`attention_mask=None` means all ones), and, for concrete arrays, ids in the vocabulary.
  """

  def _ids(self, ids, name, ndim=2):
    ids = check.token_ids(ids, name, ndim)
    check.id_range(ids, self.config.vocab_size, name)
    return ids

  def encode(self, input_ids, attention_mask=None, deterministic=True):
    """input_ids, attention_mask [b, k] -> encoder states [b, k, D]."""
    input_ids = self._ids(input_ids, "input_ids")
    attention_mask = check.attention_mask(attention_mask, input_ids.shape)
    encoder, _ = self._stacks()
    return encoder(self._embed(input_ids), attention_mask.astype(bool), deterministic=deterministic)

  def decode(self, decoder_input_ids, encoder_out, attention_mask, decoder_attention_mask=None,
             deterministic=True):
    """Teacher-forced decoder: ids [b, q] -> logits [b, q, V] (float32)."""
    decoder_input_ids = self._ids(decoder_input_ids, "decoder_input_ids")
    check.encoder_states(encoder_out)
    check.same_batch(decoder_input_ids, encoder_out, "decoder_input_ids", "encoder_out")
    attention_mask = check.attention_mask(attention_mask, encoder_out.shape[:2], of="encoder_out")
    decoder_attention_mask = check.attention_mask(decoder_attention_mask, decoder_input_ids.shape,
                                                  "decoder_attention_mask", "decoder_input_ids")
    _, decoder = self._stacks()
    x = decoder(self._embed(decoder_input_ids), decoder_attention_mask.astype(bool), encoder_out,
                attention_mask.astype(bool), deterministic=deterministic)
    return self._logits(x)

  def __call__(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask=None,
               deterministic=True):
    enc = self.encode(input_ids, attention_mask, deterministic)
    return self.decode(decoder_input_ids, enc, attention_mask, decoder_attention_mask, deterministic)

  def init_cache(self, encoder_out, attention_mask, max_len: int, beams: int = 1):
    """Decoding state: a `DecodeCache` (index 0; per layer a `LayerCache`: the self-attention K/V
    cache and the cross-attention state).

    `beams`: decoding rows per input (beam search). The self-attention caches hold b * beams rows,
    grouped by input; the cross-attention state, which depends only on the input, is computed and
    held once per input and read by all of its rows.
    """
    check.encoder_states(encoder_out)
    attention_mask = check.attention_mask(attention_mask, encoder_out.shape[:2], of="encoder_out")
    max_len = check.integer(max_len, "max_len", 1, " (the number of decoding steps)")
    beams = check.integer(beams, "beams", 1, " (decoding rows per input)")
    _, decoder = self._stacks()
    return DecodeCache(index=jnp.zeros((), jnp.int32),
                       layers=decoder.init_cache(encoder_out, attention_mask.astype(bool), max_len, beams))

  def decode_step(self, token_ids, cache):
    """token_ids [b * beams] at position cache.index -> (logits [b * beams, V], new cache)."""
    token_ids = self._ids(token_ids, "token_ids", ndim=1)
    _, decoder = self._stacks()
    index = cache.index
    x, layer_caches = decoder.step(self._embed(token_ids[:, None]), cache.layers, index)
    return self._logits(x)[:, 0], DecodeCache(index=index + 1, layers=layer_caches)
