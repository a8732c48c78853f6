"""T5 (v1.0 and v1.1 / flan) encoder-decoder in Flax linen, with HF parameter names.

Tree: shared/embedding; encoder/block_{i}/layer_0/{SelfAttention/{q,k,v,o,relative_attention_bias},
layer_norm}; layer_1/{DenseReluDense/{wi|wi_0,wi_1,wo}, layer_norm}; decoder blocks add
layer_1/EncDecAttention (the SRformer cross-attention) and move the FFN to layer_2; lm_head (v1.1).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from srformer_jax import layers
from srformer_jax import sharding as sh
from srformer_jax.attention.segmented import CrossAttention
from srformer_jax.attention.cache import LayerCache
from srformer_jax.attention.self_attention import SelfAttention, init_self_cache
from srformer_jax.config import ModelConfig
from srformer_jax.seq2seq import EncoderDecoderMixin


class T5DenseAct(nn.Module):
  config: ModelConfig

  def setup(self):
    c = self.config
    dt = jnp.dtype(c.dtype)
    if c.is_gated_ffn:
      self.wi_0 = layers.dense(c.d_ff, (sh.EMBED, sh.MLP), use_bias=False, dtype=dt, cpu=self.config.cpu_kernels)
      self.wi_1 = layers.dense(c.d_ff, (sh.EMBED, sh.MLP), use_bias=False, dtype=dt, cpu=self.config.cpu_kernels)
    else:
      self.wi = layers.dense(c.d_ff, (sh.EMBED, sh.MLP), use_bias=False, dtype=dt, cpu=self.config.cpu_kernels)
    self.wo = layers.dense(c.d_model, (sh.MLP, sh.EMBED), use_bias=False, dtype=dt, cpu=self.config.cpu_kernels)
    self.dropout = layers.Dropout(c.dropout_rate, hashed=self.config.cpu_kernels)
    act = c.feed_forward_proj.split("-")[-1]
    self.act = layers.activation("gelu_new" if c.feed_forward_proj == "gated-gelu" else act)

  def __call__(self, x, deterministic=True):
    if self.config.is_gated_ffn:
      h = self.act(self.wi_0(x)) * self.wi_1(x)
    else:
      h = self.act(self.wi(x))
    h = nn.with_logical_constraint(h, (sh.BATCH, sh.LENGTH, sh.MLP))
    return self.wo(self.dropout(h, deterministic=deterministic))


class _Sublayer(nn.Module):
  """Pre-norm residual wrapper: x + dropout(f(layer_norm(x)))."""

  config: ModelConfig

  def _norm(self):
    return layers.RMSNorm(self.config.layer_norm_epsilon, jnp.dtype(self.config.dtype))

  def _residual(self, x, y, deterministic):
    return x + self.dropout(y, deterministic=deterministic)


class T5LayerSelfAttention(_Sublayer):
  has_relative_attention_bias: bool = False
  causal: bool = False

  def setup(self):
    self.SelfAttention = SelfAttention(self.config, causal=self.causal,
                                       has_relative_attention_bias=self.has_relative_attention_bias)
    self.layer_norm = self._norm()
    self.dropout = layers.Dropout(self.config.dropout_rate, hashed=self.config.cpu_kernels)

  def __call__(self, x, mask, position_bias, deterministic=True):
    y, position_bias = self.SelfAttention(self.layer_norm(x), mask, position_bias, deterministic)
    return self._residual(x, y, deterministic), position_bias

  def step(self, x, cache, index, position_bias):
    y, cache, position_bias = self.SelfAttention.step(self.layer_norm(x), cache, index, position_bias)
    return x + y, cache, position_bias


class T5LayerCrossAttention(_Sublayer):

  def setup(self):
    self.EncDecAttention = CrossAttention(self.config)
    self.layer_norm = self._norm()
    self.dropout = layers.Dropout(self.config.dropout_rate, hashed=self.config.cpu_kernels)

  def __call__(self, x, enc, enc_mask, deterministic=True):
    y = self.EncDecAttention(self.layer_norm(x), enc, enc_mask, deterministic)
    return self._residual(x, y, deterministic)

  def init_state(self, enc, enc_mask):
    return self.EncDecAttention.init_state(enc, enc_mask)

  def step(self, x, state, t):
    y, state = self.EncDecAttention.step(self.layer_norm(x), state, t)
    return x + y, state


class T5LayerFF(_Sublayer):

  def setup(self):
    self.DenseReluDense = T5DenseAct(self.config)
    self.layer_norm = self._norm()
    self.dropout = layers.Dropout(self.config.dropout_rate, hashed=self.config.cpu_kernels)

  def __call__(self, x, deterministic=True):
    return self._residual(x, self.DenseReluDense(self.layer_norm(x), deterministic), deterministic)


class T5Block(nn.Module):
  config: ModelConfig
  is_decoder: bool
  has_relative_attention_bias: bool = False

  def setup(self):
    self.layer_0 = T5LayerSelfAttention(self.config, self.has_relative_attention_bias,
                                        causal=self.is_decoder)
    if self.is_decoder:
      self.layer_1 = T5LayerCrossAttention(self.config)
      self.layer_2 = T5LayerFF(self.config)
    else:
      self.layer_1 = T5LayerFF(self.config)

  def __call__(self, x, mask, position_bias, enc=None, enc_mask=None, deterministic=True):
    """x [b, t, D]; mask [b, t] bool (keys). Returns (x, position_bias)."""
    x, position_bias = self.layer_0(x, mask, position_bias, deterministic)
    if self.is_decoder:
      x = self.layer_1(x, enc, enc_mask, deterministic)
      x = self.layer_2(x, deterministic)
    else:
      x = self.layer_1(x, deterministic)
    return x, position_bias

  def init_state(self, enc, enc_mask):
    return self.layer_1.init_state(enc, enc_mask)

  def step(self, x, cache, index, position_bias):
    x, self_cache, position_bias = self.layer_0.step(x, cache.self_attn, index, position_bias)
    x, cross = self.layer_1.step(x, cache.cross_attn, index)
    x = self.layer_2(x)
    return x, LayerCache(self_attn=self_cache, cross_attn=cross), position_bias


class T5Stack(nn.Module):
  config: ModelConfig
  is_decoder: bool

  def setup(self):
    c = self.config
    n = c.num_decoder_layers if self.is_decoder else c.num_encoder_layers
    block = layers.remat(T5Block, c.remat_policy, static_argnums=(6,))  # 6: deterministic
    self.block = [block(c, self.is_decoder, has_relative_attention_bias=(i == 0)) for i in range(n)]
    self.final_layer_norm = layers.RMSNorm(c.layer_norm_epsilon, jnp.dtype(c.dtype))
    self.dropout = layers.Dropout(c.dropout_rate, hashed=self.config.cpu_kernels)

  def __call__(self, x, mask, enc=None, enc_mask=None, deterministic=True):
    """x [b, t, D] embeddings; mask [b, t] bool (keys). Decoder: causal, plus enc [b, k, D]."""
    x = self.dropout(x, deterministic=deterministic)
    position_bias = None
    for blk in self.block:
      x, position_bias = blk(x, mask, position_bias, enc, enc_mask, deterministic)
      x = nn.with_logical_constraint(x, (sh.BATCH, sh.LENGTH, sh.EMBED))
    return self.dropout(self.final_layer_norm(x), deterministic=deterministic)

  def init_cache(self, enc, enc_mask, max_len: int, beams: int = 1):
    b = enc.shape[0] * beams  # decoding rows; the cross state stays per input
    return [LayerCache(self_attn=init_self_cache(self.config, b, max_len, jnp.dtype(self.config.dtype)),
                       cross_attn=blk.init_state(enc, enc_mask)) for blk in self.block]

  def step(self, x, cache, index):
    position_bias = None
    new_cache = []
    for blk, layer_cache in zip(self.block, cache):
      x, layer_cache, position_bias = blk.step(x, layer_cache, index, position_bias)
      new_cache.append(layer_cache)
    return self.final_layer_norm(x), new_cache


class T5ForConditionalGeneration(EncoderDecoderMixin, nn.Module):
  """T5 with an SRformer-capable decoder. See `srformer_jax.model` for the shared interface."""

  config: ModelConfig

  def setup(self):
    c = self.config
    self.shared = layers.embed(c.vocab_size, c.d_model, (sh.VOCAB, sh.EMBED), dtype=jnp.dtype(c.dtype),
                               cpu=c.cpu_kernels)
    self.encoder = T5Stack(c, is_decoder=False)
    self.decoder = T5Stack(c, is_decoder=True)
    if not c.tie_word_embeddings:
      self.lm_head = layers.dense(c.vocab_size, (sh.EMBED, sh.VOCAB), use_bias=False,
                                  dtype=jnp.dtype(c.dtype), init_std=c.d_model ** -0.5, cpu=self.config.cpu_kernels)

  def _embed(self, ids):
    return self.shared(ids)

  def _stacks(self):
    return self.encoder, self.decoder

  def _logits(self, x):
    c = self.config
    if c.scale_decoder_outputs:
      x = x * (c.d_model ** -0.5)
    if c.tie_word_embeddings:
      logits = self.shared.attend(x)
    else:
      logits = self.lm_head(x)
    return nn.with_logical_constraint(logits.astype(c.logits_dtype), (sh.BATCH, sh.LENGTH, sh.VOCAB))
