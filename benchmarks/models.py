"""Model shapes used by the benchmarks."""

import dataclasses

from srformer_jax import ModelConfig

T5_SMALL = ModelConfig(arch="t5", vocab_size=32128, d_model=512, num_heads=8, d_kv=64, d_ff=2048,
                       num_encoder_layers=6, num_decoder_layers=6, dropout_rate=0.0)


def t5_small(**kw) -> ModelConfig:
  return dataclasses.replace(T5_SMALL, **kw)
