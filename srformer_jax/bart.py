"""BART encoder-decoder in Flax linen, with HF parameter names.

Tree: model/shared; model/encoder/{embed_positions, layernorm_embedding, layers_{i}/{self_attn/
{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2, final_layer_norm}}; decoder layers add
encoder_attn (the SRformer cross-attention) and encoder_attn_layer_norm; final_logits_bias.
Post-norm residual blocks, learned positions offset by 2, queries scaled by d_kv**-0.5.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import linen as nn

from srformer_jax import layers
from srformer_jax import sharding as sh
from srformer_jax.attention.segmented import CrossAttention
from srformer_jax.attention.cache import LayerCache
from srformer_jax.attention.self_attention import SelfAttention, init_self_cache
from srformer_jax.config import ModelConfig
from srformer_jax.seq2seq import EncoderDecoderMixin

POSITION_OFFSET = 2  # BART's learned positions start at index 2 (fairseq legacy)


class _FFNMixin:
  config: ModelConfig

  def setup_ffn(self):
    c = self.config
    dt = jnp.dtype(c.dtype)
    self.fc1 = layers.dense(c.d_ff, (sh.EMBED, sh.MLP), use_bias=True, dtype=dt, cpu=self.config.cpu_kernels)
    self.fc2 = layers.dense(c.d_model, (sh.MLP, sh.EMBED), use_bias=True, dtype=dt, cpu=self.config.cpu_kernels)
    self.final_layer_norm = layers.LayerNorm(c.layer_norm_epsilon, dt)
    self.act = layers.activation(c.activation_function)
    self.dropout = layers.Dropout(c.dropout_rate, hashed=self.config.cpu_kernels)
    self.act_dropout = layers.Dropout(c.activation_dropout, hashed=self.config.cpu_kernels)

  def ffn(self, x, deterministic):
    h = self.act_dropout(self.act(self.fc1(x)), deterministic=deterministic)
    h = nn.with_logical_constraint(h, (sh.BATCH, sh.LENGTH, sh.MLP))
    h = self.dropout(self.fc2(h), deterministic=deterministic)
    return self.final_layer_norm(x + h)


class BartEncoderLayer(nn.Module, _FFNMixin):
  config: ModelConfig

  def setup(self):
    self.self_attn = SelfAttention(self.config, causal=False)
    self.self_attn_layer_norm = layers.LayerNorm(self.config.layer_norm_epsilon, jnp.dtype(self.config.dtype))
    self.setup_ffn()

  def __call__(self, x, mask, deterministic=True):
    h, _ = self.self_attn(x, mask, None, deterministic)
    x = self.self_attn_layer_norm(x + self.dropout(h, deterministic=deterministic))
    return self.ffn(x, deterministic)


class BartDecoderLayer(nn.Module, _FFNMixin):
  config: ModelConfig

  def setup(self):
    dt = jnp.dtype(self.config.dtype)
    self.self_attn = SelfAttention(self.config, causal=True)
    self.self_attn_layer_norm = layers.LayerNorm(self.config.layer_norm_epsilon, dt)
    self.encoder_attn = CrossAttention(self.config)
    self.encoder_attn_layer_norm = layers.LayerNorm(self.config.layer_norm_epsilon, dt)
    self.setup_ffn()

  def __call__(self, x, mask, enc, enc_mask, deterministic=True):
    h, _ = self.self_attn(x, mask, None, deterministic)
    x = self.self_attn_layer_norm(x + self.dropout(h, deterministic=deterministic))
    h = self.encoder_attn(x, enc, enc_mask, deterministic)
    x = self.encoder_attn_layer_norm(x + self.dropout(h, deterministic=deterministic))
    return self.ffn(x, deterministic)

  def init_state(self, enc, enc_mask):
    return self.encoder_attn.init_state(enc, enc_mask)

  def step(self, x, cache, index):
    h, self_cache, _ = self.self_attn.step(x, cache.self_attn, index)
    x = self.self_attn_layer_norm(x + h)
    h, cross = self.encoder_attn.step(x, cache.cross_attn, index)
    x = self.encoder_attn_layer_norm(x + h)
    return self.ffn(x, True), LayerCache(self_attn=self_cache, cross_attn=cross)


class BartStack(nn.Module):
  config: ModelConfig
  is_decoder: bool

  def setup(self):
    c = self.config
    dt = jnp.dtype(c.dtype)
    self.embed_positions = layers.embed(c.max_position_embeddings + POSITION_OFFSET, c.d_model,
                                        (None, sh.EMBED), dtype=dt, init_std=0.02, cpu=self.config.cpu_kernels)
    if self.is_decoder:  # remat: static_argnums give `deterministic` (self is 0)
      layer = layers.remat(BartDecoderLayer, c.remat_policy, static_argnums=(5,))
      self.layers = [layer(c) for _ in range(c.num_decoder_layers)]
    else:
      layer = layers.remat(BartEncoderLayer, c.remat_policy, static_argnums=(3,))
      self.layers = [layer(c) for _ in range(c.num_encoder_layers)]
    self.layernorm_embedding = layers.LayerNorm(c.layer_norm_epsilon, dt)
    self.dropout = layers.Dropout(c.dropout_rate, hashed=self.config.cpu_kernels)

  def _embed(self, tok_emb, positions, deterministic):
    x = tok_emb + self.embed_positions(positions + POSITION_OFFSET)
    return self.dropout(self.layernorm_embedding(x), deterministic=deterministic)

  def __call__(self, tok_emb, mask, enc=None, enc_mask=None, deterministic=True):
    """tok_emb [b, t, D] (already scaled); mask [b, t] bool (keys)."""
    t = tok_emb.shape[1]
    if t > self.config.max_position_embeddings:
      raise ValueError(f"BART input length {t} exceeds max_position_embeddings="
                       f"{self.config.max_position_embeddings}; truncate the input")
    x = self._embed(tok_emb, jnp.arange(t)[None], deterministic)
    for layer in self.layers:
      if self.is_decoder:
        x = layer(x, mask, enc, enc_mask, deterministic)
      else:
        x = layer(x, mask, deterministic)
      x = nn.with_logical_constraint(x, (sh.BATCH, sh.LENGTH, sh.EMBED))
    return x

  def init_cache(self, enc, enc_mask, max_len: int, beams: int = 1):
    if max_len > self.config.max_position_embeddings:
      raise ValueError(f"max decode length {max_len} exceeds max_position_embeddings="
                       f"{self.config.max_position_embeddings}")
    b = enc.shape[0] * beams  # decoding rows; the cross state stays per input
    return [LayerCache(self_attn=init_self_cache(self.config, b, max_len, jnp.dtype(self.config.dtype)),
                       cross_attn=layer.init_state(enc, enc_mask)) for layer in self.layers]

  def step(self, tok_emb, cache, index):
    x = self._embed(tok_emb, jnp.reshape(index, (1, 1)), True)
    new_cache = []
    for layer, layer_cache in zip(self.layers, cache):
      x, layer_cache = layer.step(x, layer_cache, index)
      new_cache.append(layer_cache)
    return x, new_cache


class BartModel(nn.Module):
  config: ModelConfig

  def setup(self):
    c = self.config
    self.shared = layers.embed(c.vocab_size, c.d_model, (sh.VOCAB, sh.EMBED), dtype=jnp.dtype(c.dtype),
                               init_std=0.02, cpu=self.config.cpu_kernels)
    self.encoder = BartStack(c, is_decoder=False)
    self.decoder = BartStack(c, is_decoder=True)

  def embed_tokens(self, ids):
    scale = math.sqrt(self.config.d_model) if self.config.scale_embedding else 1.0
    return self.shared(ids) * scale

  def __call__(self, *args, **kwargs):  # only for parameter initialisation
    raise NotImplementedError


class BartForConditionalGeneration(EncoderDecoderMixin, nn.Module):
  """BART with an SRformer-capable decoder. See `srformer_jax.model` for the shared interface."""

  config: ModelConfig

  def setup(self):
    self.model = BartModel(self.config)
    self.final_logits_bias = self.param(
        "final_logits_bias", nn.with_logical_partitioning(nn.initializers.zeros, (None, sh.VOCAB)),
        (1, self.config.vocab_size), jnp.float32)

  def _embed(self, ids):
    return self.model.embed_tokens(ids)

  def _stacks(self):
    return self.model.encoder, self.model.decoder

  def _logits(self, x):
    logits = self.model.shared.attend(x).astype(self.config.logits_dtype) + self.final_logits_bias
    return nn.with_logical_constraint(logits, (sh.BATCH, sh.LENGTH, sh.VOCAB))
