"""The decoding caches, one typed pytree per kind of state (as gemma's `LayerCache`).

Shapes: b inputs, r decoding rows per input (beams), h heads, d/e head dims, t decoder positions,
k encoder positions, m segments of s positions, n the segments decoding visits.
"""

from __future__ import annotations

from typing import Union

import jax
from flax import struct


@struct.dataclass
class SelfCache:
  """A decoder layer's self-attention keys and values, filled one position per step."""
  k: jax.Array  # [b*r, h, t, d]
  v: jax.Array  # [b*r, h, t, d]


@struct.dataclass
class DenseCrossState:
  """`full` and `local_window`: the encoder's keys and values, head-major; `length` (the
  `length` schedule of local_window) each input's own length."""
  k: jax.Array            # [b, h, k, d]
  v: jax.Array            # [b, h, k, d]
  mask: jax.Array         # [b, k] bool
  length: jax.Array | None = None  # [b] int32


@struct.dataclass
class LinearCrossState:
  """`linear`: S = sum_j phi(K_j) V_j^T and z = sum_j phi(K_j)."""
  s: jax.Array  # [b, h, d, e]
  z: jax.Array  # [b, h, d]


@struct.dataclass
class SegmentCrossState:
  """The segmented kinds: every segment's keys and values (segment-major, head-major: one step
  reads one contiguous block) and, per kind, what a step adds to its segment's softmax."""
  ks: jax.Array                 # [m, b, h, s, d]
  vs: jax.Array                 # [m, b, h, s, d]
  ms: jax.Array                 # [m, b, s] bool
  mb: jax.Array | None = None   # [b] int32: each input's own segment count (`length` schedule)
  rec: jax.Array | None = None  # [n, b, h, d, e]: the recurrent read per visited segment, scaled
  pk: jax.Array | None = None   # [b, h, m, d]: `pooled`'s mean key per segment
  pv: jax.Array | None = None   # [b, h, m, d]
  pm: jax.Array | None = None   # [b, m] bool: the segment holds a token


CrossState = Union[DenseCrossState, LinearCrossState, SegmentCrossState]


@struct.dataclass
class LayerCache:
  """One decoder layer: its self-attention cache (per row) and cross-attention state (per input)."""
  self_attn: SelfCache
  cross_attn: CrossState


@struct.dataclass
class DecodeCache:
  """The whole decoding state: the position of the next token and every layer's cache."""
  index: jax.Array  # [] int32
  layers: list[LayerCache]
