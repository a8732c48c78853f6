"""The encoder-decoder interface shared by T5 and BART (see `srformer_jax.model`)."""

from __future__ import annotations

import jax.numpy as jnp


class EncoderDecoderMixin:
  """encode / decode / __call__ / init_cache / decode_step in terms of three hooks of the model:
  `_embed(ids)`, `_stacks()` -> (encoder, decoder) and `_logits(hidden)`."""

  def encode(self, input_ids, attention_mask, deterministic=True):
    """input_ids, attention_mask [b, k] -> encoder states [b, k, D]."""
    encoder, _ = self._stacks()
    return encoder(self._embed(input_ids), attention_mask.astype(bool), deterministic=deterministic)

  def decode(self, decoder_input_ids, encoder_out, attention_mask, decoder_attention_mask=None,
             deterministic=True):
    """Teacher-forced decoder: ids [b, q] -> logits [b, q, V] (float32)."""
    if decoder_attention_mask is None:
      decoder_attention_mask = jnp.ones(decoder_input_ids.shape, bool)
    _, decoder = self._stacks()
    x = decoder(self._embed(decoder_input_ids), decoder_attention_mask.astype(bool), encoder_out,
                attention_mask.astype(bool), deterministic=deterministic)
    return self._logits(x)

  def __call__(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask=None,
               deterministic=True):
    enc = self.encode(input_ids, attention_mask, deterministic)
    return self.decode(decoder_input_ids, enc, attention_mask, decoder_attention_mask, deterministic)

  def init_cache(self, encoder_out, attention_mask, max_len: int):
    """Decoding state: {'index': 0, 'layers': [{'self': kv cache, 'cross': cross-attn state}]}."""
    _, decoder = self._stacks()
    return {"index": jnp.zeros((), jnp.int32),
            "layers": decoder.init_cache(encoder_out, attention_mask.astype(bool), max_len)}

  def decode_step(self, token_ids, cache):
    """token_ids [b] at position cache['index'] -> (logits [b, V], new cache)."""
    _, decoder = self._stacks()
    index = cache["index"]
    x, layer_caches = decoder.step(self._embed(token_ids[:, None]), cache["layers"], index)
    return self._logits(x)[:, 0], {"index": index + 1, "layers": layer_caches}
