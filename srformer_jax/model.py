"""Model construction and the interface shared by T5 and BART.

Every model module exposes (through `model.apply(params, ..., method=...)`):
  __call__(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask=None,
           deterministic=True) -> logits [b, q, V] float32
  encode(input_ids, attention_mask) -> [b, k, D]
  decode(decoder_input_ids, encoder_out, attention_mask) -> logits [b, q, V]
  init_cache(encoder_out, attention_mask, max_len, beams=1) -> decoding state pytree (self caches
      for b * beams rows, the cross-attention state once per input)
  decode_step(token_ids [b * beams], cache) -> (logits [b * beams, V], cache)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from srformer_jax.config import ModelConfig


def build_model(config: ModelConfig) -> nn.Module:
  """The Flax module of `config.arch` (T5 or BART) with the cross-attention of `config`; call it
  with `.apply({"params": params}, input_ids, attention_mask, decoder_input_ids)` for logits."""
  if config.arch == "t5":
    from srformer_jax.t5 import T5ForConditionalGeneration
    return T5ForConditionalGeneration(config)
  from srformer_jax.bart import BartForConditionalGeneration
  return BartForConditionalGeneration(config)


def _dummy_inputs(config: ModelConfig):
  k = config.segment_size  # one segment: keeps init free of the "unused segments" warning
  ids = jnp.ones((1, k), jnp.int32)
  return ids, jnp.ones((1, k), jnp.int32), jnp.ones((1, 1), jnp.int32)


def init_boxed_params(config: ModelConfig, rng: jax.Array):
  """Random params with their logical-axis metadata (`nn.LogicallyPartitioned` leaves)."""
  return build_model(config).init(rng, *_dummy_inputs(config))["params"]


def init_params(config: ModelConfig, rng: jax.Array):
  """Random params as a plain pytree of arrays."""
  return nn.unbox(init_boxed_params(config, rng))


@functools.lru_cache(maxsize=32)
def _abstract_boxed(config: ModelConfig):
  return jax.eval_shape(functools.partial(init_boxed_params, config), jax.random.key(0))


def abstract_params(config: ModelConfig):
  """Shapes/dtypes of the params (jax.ShapeDtypeStruct leaves), without allocating them."""
  return nn.unbox(_abstract_boxed(config))


def logical_param_specs(config: ModelConfig):
  """PartitionSpecs of logical axis names, one per param (see `sharding.DEFAULT_RULES`)."""
  return nn.get_partition_spec(_abstract_boxed(config))


def count_params(params) -> int:
  """The number of parameters (array elements) in a parameter pytree."""
  return sum(int(x.size) for x in jax.tree.leaves(params))
