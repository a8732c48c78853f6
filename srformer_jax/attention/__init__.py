"""Attention layers: self-attention with cache, and the decoder cross-attention kinds (SRformer)."""

from srformer_jax.attention.raf import raf_scan, raf_step
from srformer_jax.attention.segmented import CrossAttention, segment_of, segment_plan
from srformer_jax.attention.self_attention import SelfAttention, init_self_cache

__all__ = ["CrossAttention", "SelfAttention", "init_self_cache", "raf_scan", "raf_step", "segment_of",
           "segment_plan"]
