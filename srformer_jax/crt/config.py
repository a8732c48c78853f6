"""Configuration of the Compact Recurrent Transformer (CRT) language model and its baselines.

One frozen dataclass covers every model of the comparison; variants are `dataclasses.replace`:

  memory="crt"   a shallow causal Transformer over segments of `segment_len` tokens that reads one
                 persistent memory vector, updated once per segment by a recurrent cell (the CRT);
  memory="none"  the same Transformer on independent segments (with `segment_len` = the full context
                 this is the full-context baseline; with L/2, L/4 the segmented baselines);
  memory="xl"    Transformer-XL: each layer also attends to the previous segment's hidden states
                 (stop-gradient cache of `xl_len` positions).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from srformer_jax.config import KERNELS, cpu_kernels

MEMORY_KINDS = ("crt", "none", "xl")
MEMORY_INPUTS = ("token", "layer")      # CRT: memory as one extra token in front / added at every layer
MEMORY_UPDATES = ("sequence", "pooled")  # CRT: cell run over the segment's outputs / one step on their mean
CELL_KINDS = ("gru", "ortho_gru", "raf")


@dataclasses.dataclass(frozen=True)
class CRTConfig:
  vocab_size: int = 10000
  d_model: int = 128
  num_heads: int = 4
  d_ff: int = 512
  num_layers: int = 2
  segment_len: int = 32
  memory: str = "crt"
  memory_input: str = "token"
  memory_update: str = "sequence"
  cell: str = "gru"
  xl_len: int = 0                    # Transformer-XL cache length; 0: segment_len
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  activation: str = "gelu"
  dropout_rate: float = 0.1
  raf_threshold_init: float = 1.0    # only for cell="raf"
  raf_leak_init: float = 0.5
  dtype: str = "float32"             # computation dtype; parameters are float32
  kernels: str = "auto"              # forms of a few ops: see srformer_jax.config.KERNELS

  def __post_init__(self):
    if self.segment_len <= 0:
      raise ValueError(f"segment_len (L) must be positive, got {self.segment_len}")
    for name, value, known in (("memory", self.memory, MEMORY_KINDS),
                               ("memory_input", self.memory_input, MEMORY_INPUTS),
                               ("memory_update", self.memory_update, MEMORY_UPDATES),
                               ("cell", self.cell, CELL_KINDS)):
      if value not in known:
        raise ValueError(f"unknown {name} kind {value!r}; known: {list(known)}")
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
    if self.xl_len < 0:
      raise ValueError(f"xl_len must be >= 0, got {self.xl_len}")
    if self.kernels not in KERNELS:
      raise ValueError(f"kernels must be one of {KERNELS}, got {self.kernels!r}")

  @property
  def cpu_kernels(self) -> bool:
    """Whether this model takes the forms written for XLA:CPU (`srformer_jax.config.cpu_kernels`)."""
    return cpu_kernels(self.kernels)

  @property
  def d_kv(self) -> int:
    return self.d_model // self.num_heads

  @property
  def jnp_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def memory_len(self) -> int:
    """Positions of Transformer-XL cache in front of each segment's keys (0 unless memory="xl")."""
    return (self.xl_len or self.segment_len) if self.memory == "xl" else 0

  @property
  def memory_tokens(self) -> int:
    """Extra positions at the front of each segment: 1 for the CRT memory token, else 0."""
    return 1 if self.memory == "crt" and self.memory_input == "token" else 0
