"""Segmented (recurrent) cross-attention: the SRformer decoder's view of the encoder.

The encoder output (length k, padded to m*s) is cut into m segments of size s. Decoder position t
(of q) reads segment i(t) = min(m-1, floor(t*m/q)) with softmax, and, for the recurrent kinds, adds

    (Q_t @ RAF(W (K^T V - K_i^T V_i))) / ||K||

where ||K|| is the L2 norm over the sequence axis per head and feature (`srformer_gated`, not the
paper's: that term times tanh(g_h), a learnable gate per head that starts at 0). RAF advances once
per segment change (`raf.raf_scan`). The training path is vectorised: queries are grouped by segment (a static
gather) and all K_i^T V_i come from one einsum. Decoding runs the same scan once per input (the
segments it visits depend only on the position) and each step reads one segment.

Segment schedules (`config.segment_schedule`): `padded` (the paper's) counts m over the padded input,
the same for every example; `length` counts each example's own m_b = ceil(len_b / s) over its real
tokens (inputs are right-padded) and reads i_b(t) = min(m_b-1, floor(t*m_b/q)), so a short document
is swept from start to end instead of a position reading padding, and the output does not depend on
how much padding follows. The tiling into segments is the same; only which one a position reads, and
so which segments RAF steps through (per example), changes. That path gathers one segment per
decoder position instead of grouping positions statically.

The cheap alternatives a practitioner would try instead (`config.ALTERNATIVE_KINDS`, not the paper's):

  pooled        softmax over [K_i ; mean(K_j) for j != i] with values [V_i ; mean(V_j)]: the own
                segment plus one mean key/value per other (non-empty) segment, m extra keys; the
                simplest compressed memory (cf. the pooled memories of Compressive Transformer,
                Rae et al. 2020, and Funnel/Set-Transformer pooling). O(q (s + m) d).
  linear        phi(Q_t) S / (phi(Q_t) z), S = sum_j phi(K_j) V_j^T, z = sum_j phi(K_j),
                phi(x) = elu(x) + 1 over the whole input (Katharopoulos et al. 2020, "Transformers are
                RNNs"; Performer, Choromanski et al. 2021, uses random features for the same end).
                No segments, no softmax: O(k d^2) once per input, O(d^2) per decoder position.
  local_window  softmax over the w = min(s, k) keys [c_t - w/2, c_t + w/2) (clipped into the input),
                c_t = floor((2t + 1) L / 2q) the position's aligned place in an input of L tokens
                (L = k, or each example's own length under the `length` schedule): Longformer-style
                local attention (Beltagy et al. 2020) turned to cross-attention, no memory. O(q s d).
  gru_memory    SRformer with RAF replaced by a GRU cell (Cho et al. 2014): the same per-segment
                summaries P_i = K^T V - K_i^T V_i, scaled by 1/||K|| before the cell (so its gates
                see O(1) inputs), h_i = GRU(h_{i-1}, P_i / ||K||) stepped once per segment change
                with d x d maps acting on the value axis, and Q_t @ h_i added to the segment's softmax.

Einsum letters: b batch, m segment (n: the segments a memory holds), g query slot within a segment's
group, s position within a segment (or a window), h head, d/e head dims (d of keys, e of values),
f the GRU's three gate blocks of e.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from srformer_jax import layers
from srformer_jax.attention import raf
from srformer_jax.attention.cache import DenseCrossState, LinearCrossState, SegmentCrossState
from srformer_jax.attention.projections import ProjectionsMixin
from srformer_jax.config import GATED_KINDS, RECURRENT_KINDS, ModelConfig

BART_CLAMP = 2.0  # the authors' BART code clamps K^T V and K_i^T V_i to [-2, 2]
NORM_EPS = 1e-6   # default mode only: guards ||K|| = 0 (e.g. an all-padding example)


def segment_of(t, q_len: int, num_segments: int):
  """Segment read by decoder position t: min(m - 1, floor(t * m / q)) (numpy or jax ints)."""
  if isinstance(t, (int, np.integer, np.ndarray)):
    return np.minimum(num_segments - 1, (np.asarray(t) * num_segments) // q_len)
  return jnp.minimum(num_segments - 1, (t * num_segments) // q_len)


@dataclasses.dataclass(frozen=True)
class SegmentPlan:
  """Static grouping of q decoder positions by the segment they read.

  group_index [m, G]: positions in each segment's group (padded with 0); flat_pos [q]: where each
  position sits in the flattened [m*G] groups; active [m]: segments that some position reads.
  """

  group_index: np.ndarray
  flat_pos: np.ndarray
  active: np.ndarray

  @property
  def group_size(self) -> int:
    return self.group_index.shape[1]


@functools.lru_cache(maxsize=None)
def segment_plan(q_len: int, num_segments: int) -> SegmentPlan:
  seg = segment_of(np.arange(q_len), q_len, num_segments)
  counts = np.bincount(seg, minlength=num_segments)
  g = max(1, int(counts.max()))
  group_index = np.zeros((num_segments, g), np.int32)
  flat_pos = np.zeros((q_len,), np.int32)
  for i in range(num_segments):
    members = np.nonzero(seg == i)[0]
    group_index[i, :len(members)] = members
    flat_pos[members] = i * g + np.arange(len(members))
  return SegmentPlan(group_index, flat_pos, counts > 0)


def num_segments(k_len: int, segment_size: int) -> int:
  return max(1, math.ceil(k_len / segment_size))


def example_segments(ms: jax.Array) -> jax.Array:
  """m_b for the `length` schedule: [b, m, s] segment mask -> [b] int32, the number of segments
  that hold a real token of example b (at least 1, so an all-padding example reads segment 0)."""
  return jnp.maximum(jnp.sum(jnp.any(ms, axis=-1), axis=-1), 1).astype(jnp.int32)


def length_plan(ms: jax.Array, q_len: int):
  """Per-example segment rule of the `length` schedule for q decoder positions.

  ms [b, m, s] -> (m_b [b], seg [b, q]: the segment each position reads, visited [b, m]: the
  segments RAF steps through, i.e. those some position reads plus m_b - 1, which positions past q
  read when decoding; adding it changes no earlier RAF output).
  """
  m = ms.shape[1]
  mb = example_segments(ms)
  seg = segment_of(jnp.arange(q_len)[None, :], q_len, mb[:, None])
  visited = jnp.any(jax.nn.one_hot(seg, m, dtype=bool), axis=1) | jax.nn.one_hot(mb - 1, m, dtype=bool)
  return mb, seg, visited


def warn_if_unused_segments(m: int, q_len: int, k_len: int, s: int, what: str):
  if m > q_len:
    warnings.warn(
        f"SRformer: {m} segments (encoder length {k_len}, segment_size {s}) but only {q_len} decoder "
        f"positions ({what}): {m - q_len} segments are never read with softmax and RAF skips them. "
        f"Use segment_size >= {math.ceil(k_len / q_len)} or a longer decoder length.", stacklevel=3)


def split_segments(k, v, mask, s: int, faithful: bool):
  """Pads the encoder axis to a multiple of s and splits it.

  k, v [b, k, h, d]; mask [b, k] bool -> ks, vs [b, m, s, h, d], ms [b, m, s].
  Default mode zeroes padded keys/values so that they drop out of K^T V and ||K||; faithful mode
  keeps them (the authors' code) and, like it, leaves its own zero length-padding unmasked.
  """
  b, k_len, h, d = k.shape
  m = num_segments(k_len, s)
  pad = m * s - k_len
  if not faithful:
    k = jnp.where(mask[..., None, None], k, 0)
    v = jnp.where(mask[..., None, None], v, 0)
  k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
  v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
  mask = jnp.pad(mask, ((0, 0), (0, pad)), constant_values=faithful)
  return k.reshape(b, m, s, h, d), v.reshape(b, m, s, h, d), mask.reshape(b, m, s)


def key_norm(ks: jax.Array, faithful: bool) -> jax.Array:
  """||K|| over the sequence axis per head and feature: [b, m, s, h, d] -> [b, h, d] float32."""
  n = jnp.sqrt(jnp.sum(jnp.square(ks.astype(layers.accum_dtype(ks.dtype))), axis=(1, 2)))
  return n if faithful else n + NORM_EPS


def pooled_segments(ks: jax.Array, vs: jax.Array, ms: jax.Array):
  """One mean key and value per segment over its real tokens (`pooled`).

  ks, vs [b, m, s, h, d] (padding zeroed, as `split_segments` leaves it in default mode), ms
  [b, m, s] -> pk, pv [b, m, h, d] in ks's dtype, pm [b, m] bool (the segment holds a token).
  """
  acc = layers.accum_dtype(ks.dtype)
  count = jnp.sum(ms, axis=2, dtype=acc)  # [b, m]
  denom = jnp.maximum(count, 1.0)[..., None, None]
  pk = (jnp.sum(ks.astype(acc), axis=2) / denom).astype(ks.dtype)
  pv = (jnp.sum(vs.astype(acc), axis=2) / denom).astype(vs.dtype)
  return pk, pv, count > 0


def elu_feature_map(x: jax.Array) -> jax.Array:
  """phi(x) = elu(x) + 1 > 0, the feature map of linear attention (Katharopoulos et al. 2020)."""
  return jax.nn.elu(x) + 1.0


def linear_summaries(k: jax.Array, v: jax.Array, mask: jax.Array, acc):
  """S = sum_j phi(K_j) V_j^T and z = sum_j phi(K_j) over the real tokens (`linear`).

  k, v [b, k, h, d]; mask [b, k] bool -> S [b, h, d, e], z [b, h, d] in `acc`.
  """
  kp = jnp.where(mask[..., None, None], elu_feature_map(k.astype(acc)), 0)
  return jnp.einsum("bkhd,bkhe->bhde", kp, v.astype(acc)), jnp.sum(kp, axis=1)


def linear_read(qp: jax.Array, s_sum: jax.Array, z: jax.Array) -> jax.Array:
  """phi(Q) S / (phi(Q) z) on matching leading axes: qp [..., h, d], S [..., h, d, e], z [..., h, d]
  -> [..., h, e]. An input with no real token (z = 0) reads zeros."""
  num = jnp.sum(qp[..., None] * s_sum, axis=-2)
  den = jnp.sum(qp * z, axis=-1, keepdims=True)
  return num / jnp.where(den > 0, den, 1.0)


def window_start(t, q_len: int, length, width: int):
  """First key of `local_window`'s window for decoder position t (numpy or jax ints):
  centre c = floor((2t + 1) L / 2q), start = clip(c - width // 2, 0, max(L - width, 0))."""
  xp = np if isinstance(t, (int, np.integer, np.ndarray)) and isinstance(length, (int, np.integer)) else jnp
  centre = ((2 * t + 1) * length) // (2 * q_len)
  return xp.clip(centre - width // 2, 0, xp.maximum(length - width, 0))


def kv_products(ks: jax.Array, vs: jax.Array) -> jax.Array:
  """All K_i^T V_i at once: [b, m, s, h, d] x2 -> [b, m, h, d, e] float32."""
  return jnp.einsum("bmshd,bmshe->bmhde", ks, vs, preferred_element_type=layers.accum_dtype(ks.dtype))


class CrossAttention(nn.Module, ProjectionsMixin):
  """Decoder cross-attention of any kind in `config.CROSS_ATTENTION_KINDS`.

  Methods: `__call__` (teacher forcing), `init_state` (per-input decoding state), `step` (one token).
  """

  config: ModelConfig

  def setup(self):
    c = self.config
    self.setup_projections()
    if c.uses_raf:
      self.SNN_kv = nn.Dense(
          c.d_kv, use_bias=False, dtype=layers.accum_dtype(c.dtype), param_dtype=jnp.float32,
          kernel_init=nn.with_logical_partitioning(_raf_kernel_init(c.raf_weight_init_std), (None, None)))
      self.threshold = self.param(
          "threshold", nn.with_logical_partitioning(nn.initializers.constant(c.raf_threshold_init), (None,)),
          (1,), jnp.float32)
      self.leak = self.param(
          "leak", nn.with_logical_partitioning(nn.initializers.constant(c.raf_leak_init), (None,)),
          (1,), jnp.float32)
    if c.cross_attention == "gru_memory":
      # x -> (r, z, n) gate pre-activations and h -> the same, acting on the value axis (d x 3d
      # each, as a GRU's W_i* and W_h*); plain leaves rather than Dense modules, since the cell runs
      # inside a lax.scan
      part = lambda init, axes: nn.with_logical_partitioning(init, axes)  # noqa: E731
      self.gru_wx = self.param("gru_wx", part(nn.initializers.lecun_normal(), (None, None)),
                               (c.d_kv, 3 * c.d_kv), jnp.float32)
      self.gru_bx = self.param("gru_bx", part(nn.initializers.zeros_init(), (None,)), (3 * c.d_kv,),
                               jnp.float32)
      self.gru_wh = self.param("gru_wh", part(nn.initializers.orthogonal(), (None, None)),
                               (c.d_kv, 3 * c.d_kv), jnp.float32)
    if c.cross_attention in GATED_KINDS:
      self.gate = self.param(
          "gate", nn.with_logical_partitioning(nn.initializers.constant(c.raf_gate_init), (None,)),
          (c.num_heads,), jnp.float32)
    rate = c.dropout_rate if c.arch == "t5" else c.attention_dropout
    self.attn_dropout = layers.Dropout(rate, hashed=self.config.cpu_kernels)

  # ---------------------------------------------------------------------------------------------
  # pieces shared by the training and decoding paths

  @property
  def _clamp(self) -> bool:
    return self.config.arch == "bart"

  def _split(self, k, v, enc_mask):
    c = self.config
    ks, vs, ms = split_segments(k, v, enc_mask, c.segment_size, c.faithful)
    if c.faithful and c.arch == "bart":
      # The authors' BART code applies no encoder padding mask inside a segment's softmax
      # (verified against the official fixtures); their T5 code does apply it.
      ms = jnp.ones_like(ms)
    return ks, vs, ms

  def _summaries(self, kv_seg, kv_tot):
    if self._clamp:
      kv_seg = jnp.clip(kv_seg, -BART_CLAMP, BART_CLAMP)
      kv_tot = jnp.clip(kv_tot, -BART_CLAMP, BART_CLAMP)
    return kv_seg, kv_tot

  def _recurrent_input(self, kv_seg, kv_tot):
    """P for the RAF: the complement K^T V - K_i^T V_i (ablation IV: K_i^T V_i itself)."""
    return kv_seg if self.config.cross_attention == "kv_segment" else kv_tot - kv_seg

  def _raf_inputs(self, ks, vs, keep):
    """x_i = W P_i for the segments in `keep` (static indices, in order): [b, n, h, d, e].

    W acts on the value axis and is linear, so without BART's clamp
    W (K^T V - K_i^T V_i) = sum_j K_j^T (V_j W) - K_i^T (V_i W): 4 k d^2 flops whatever s is, instead
    of 2 k d^2 + 2 m d^3 (which grows as s shrinks below d). The clamp makes P nonlinear in K_i^T V_i,
    so BART (and s >= d, where the direct order is not dearer) takes the direct route.
    """
    s, d = ks.shape[2], ks.shape[-1]
    if self._clamp or s >= d:
      kv_seg, kv_tot = self._summaries(*_seg_and_total(ks, vs))
      return self.SNN_kv(self._recurrent_input(_select(kv_seg, keep), kv_tot[:, None]))
    t_seg, t_tot = _seg_and_total(ks, self.SNN_kv(vs))  # K_i^T (V_i W)
    return self._recurrent_input(_select(t_seg, keep), t_tot[:, None])

  def _masked_softmax(self, scores, mask):
    """Softmax over the last axis; mask (bool) broadcasts against scores."""
    probs = jax.nn.softmax(scores + jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min), axis=-1)
    if not self.config.faithful:
      # An all-padding segment reads nothing (faithful mode: a uniform average, like the authors').
      probs = jnp.where(mask, probs, 0.0)
    return probs

  def _segment_softmax(self, q, keys, vals, mask, deterministic, memory=None):
    """q [b,m,g,h,d], keys/vals [b,m,s,h,d], mask [b,m,s] -> [b,m,g,h,d].

    memory (`pooled`): (pk, pv [b,n,h,d], mem_mask [b,m,n]): n more keys that every group's
    softmax reads beside its own s, group i only those mem_mask[:, i] marks."""
    acc = layers.accum_dtype(q.dtype)
    scores = jnp.einsum("bmghd,bmshd->bmhgs", q, keys, preferred_element_type=acc)
    full_mask = mask[:, :, None, None, :]
    s = keys.shape[2]
    if memory is not None:
      pk, pv, mem_mask = memory
      mem_scores = jnp.einsum("bmghd,bnhd->bmhgn", q, pk, preferred_element_type=acc)
      scores = jnp.concatenate([scores, mem_scores], axis=-1)  # [b, m, h, g, s + n]
      full_mask = jnp.concatenate([full_mask, mem_mask[:, :, None, None, :]], axis=-1)
    probs = self._masked_softmax(scores, full_mask)
    probs = self.attn_dropout(probs, deterministic=deterministic)
    out = jnp.einsum("bmhgs,bmshd->bmghd", probs[..., :s].astype(vals.dtype), vals)
    if memory is not None:
      out = out + jnp.einsum("bmhgn,bnhd->bmghd", probs[..., s:].astype(pv.dtype), pv)
    return out

  def _with_previous(self, ks, vs, ms):
    """Transformer-XL keys: previous segment ++ current segment (segment 0 has no previous)."""
    prev = lambda x, fill: jnp.concatenate([jnp.full_like(x[:, :1], fill), x[:, :-1]], axis=1)
    keys = jnp.concatenate([prev(ks, 0), ks], axis=2)
    vals = jnp.concatenate([prev(vs, 0), vs], axis=2)
    mask = jnp.concatenate([prev(ms, False), ms], axis=2)
    return keys, vals, mask

  def _recurrent_outputs(self, ks, vs, active):
    """What segment i's queries add back, RAF(W P_i), before the ||K|| scaling: [b, n, h, d, e].

    `active` is either [m] bool, static (the `padded` schedule): the n segments it marks, in order;
    RAF steps through exactly these and the others (possible only when m > q) cost nothing beyond
    their share of K^T V. Or [b, m] bool, traced (the `length` schedule): all n = m segments, RAF
    stepping per example only through those it marks (the others' outputs are never read).
    """
    per_example = not isinstance(active, np.ndarray)
    keep = None if per_example else np.nonzero(active)[0]
    keep = None if keep is None or len(keep) == len(active) else keep
    if self.config.cross_attention == "gru_memory":
      kv_seg, kv_tot = self._summaries(*_seg_and_total(ks, vs))
      xs = self._recurrent_input(_select(kv_seg, keep), kv_tot[:, None])  # [b, n, h, d, e]
      xs = xs * (1.0 / key_norm(ks, self.config.faithful))[:, None, :, None, :].astype(xs.dtype)
      on = jnp.swapaxes(active, 0, 1) if per_example else jnp.ones(xs.shape[1:2], bool)  # [n(, b)]
      return self._gru_outputs(xs, on)
    if self.config.uses_raf:
      xs = self._raf_inputs(ks, vs, keep)  # [b, n, h, d, e]
      on = jnp.swapaxes(active, 0, 1) if per_example else jnp.ones(xs.shape[1:2], bool)  # [n(, b)]
      outs, _ = raf.raf_scan(xs, on, self.threshold, self.leak, axis=1)  # no transposes to and fro
      self._sow_raf_statistics(outs, on)
      return outs
    kv_seg, kv_tot = self._summaries(*_seg_and_total(ks, vs))
    return self._recurrent_input(_select(kv_seg, keep), kv_tot[:, None])

  def _gru_outputs(self, xs, on):
    """`gru_memory`'s memory over segments: h_i = GRU(h_{i-1}, x_i), h_0 = 0, stepped only where `on`.

    xs [b, n, h, d, e] (the scaled summaries); on [n] or [n, b] bool -> outs [b, n, h, d, e], h_i
    where on (zeros elsewhere: never read). The gates, as torch.nn.GRU's:
      r = sigmoid(x Wx_r + b_r + h Wh_r),  z = sigmoid(x Wx_z + b_z + h Wh_z),
      n = tanh(x Wx_n + b_n + r * (h Wh_n)),  h' = (1 - z) * n + z * h.
    """
    acc = xs.dtype
    gx = jnp.einsum("bnhde,ef->bnhdf", xs, self.gru_wx.astype(acc)) + self.gru_bx.astype(acc)
    wh = self.gru_wh.astype(acc)
    e = xs.shape[-1]

    def step(h, inp):  # h [b, h, d, e]; g [b, h, d, 3e]; o [] or [b]
      g, o = inp
      gh = jnp.einsum("bhde,ef->bhdf", h, wh)
      r = jax.nn.sigmoid(g[..., :e] + gh[..., :e])
      z = jax.nn.sigmoid(g[..., e:2 * e] + gh[..., e:2 * e])
      n = jnp.tanh(g[..., 2 * e:] + r * gh[..., 2 * e:])
      new = (1.0 - z) * n + z * h
      o = o.reshape(o.shape + (1,) * (h.ndim - o.ndim))
      return jnp.where(o, new, h), jnp.where(o, new, 0.0)

    h0 = jnp.zeros(xs.shape[:1] + xs.shape[2:], acc)
    _, outs = jax.lax.scan(step, h0, (jnp.moveaxis(gx, 1, 0), on))
    return jnp.moveaxis(outs, 0, 1)

  def _trained_recurrent_outputs(self, ks, vs, active):
    """`_recurrent_outputs` of the training path; with `config.raf_remat` the backward recomputes
    K_i^T V_i, RAF's linear and the scan from ks, vs instead of keeping per-segment d x e tensors."""
    if not self.config.raf_remat:
      return self._recurrent_outputs(ks, vs, active)
    if isinstance(active, np.ndarray):  # static (padded schedule): closed over, stays static
      return nn.checkpoint(lambda mdl, ks, vs: mdl._recurrent_outputs(ks, vs, active))(self, ks, vs)
    return nn.checkpoint(lambda mdl, ks, vs, on: mdl._recurrent_outputs(ks, vs, on))(self, ks, vs, active)

  def _sow_raf_statistics(self, outs, on):
    """Records what RAF passes on (collection 'intermediates', only when asked for it, e.g. by
    `srformer_jax.diagnostics.raf_statistics`): the fraction of entries that fired (out > 0) and
    the mean |out| over the segments it stepped through. outs [b, n, h, d, e], on [n] or [n, b]."""
    on = jnp.swapaxes(on, 0, 1) if on.ndim == 2 else on[None]  # [b, n] or [1, n]
    on = jnp.broadcast_to(on.reshape(on.shape + (1,) * (outs.ndim - on.ndim)), outs.shape)
    count = jnp.maximum(jnp.sum(on), 1)
    self.sow("intermediates", "raf_fired", jnp.sum((outs > 0) & on) / count)
    self.sow("intermediates", "raf_mean_abs_out", jnp.sum(jnp.where(on, jnp.abs(outs), 0)) / count)

  def _sow_recurrent_share(self, segment_read, recurrent_read):
    """Records (like `_sow_raf_statistics`) the recurrent term's share of the attention output's
    magnitude, mean|rec| / (mean|segment softmax| + mean|rec|): 0 when the other segments add
    nothing (SRformer then is segmented attention), 1 for recurrent_only."""
    if not self.is_mutable_collection("intermediates"):
      return
    seg = jnp.mean(jnp.abs(segment_read.astype(jnp.float32)))
    rec = jnp.mean(jnp.abs(recurrent_read.astype(jnp.float32)))
    self.sow("intermediates", "recurrent_share", rec / jnp.maximum(seg + rec, 1e-30))

  def _recurrent_scale(self, ks):
    """What the recurrent term is multiplied by, per example, head and value feature: 1 / ||K||,
    and for the gated kinds times tanh(g) per head. ks [b, m, s, h, e] -> [b, h, e] (None: 1).

    It commutes with Q @ (.), so the training path scales the read ([b, m, g, h, e]) rather than
    every segment's d x e output (a pass over [b, n, h, d, e] forward and backward), and decoding
    scales its precomputed state once."""
    c = self.config
    if c.cross_attention == "gru_memory":
      return None  # scaled before the cell (`_recurrent_outputs`)
    scale = None
    if c.cross_attention != "no_norm":
      scale = 1.0 / key_norm(ks, c.faithful)
    if c.cross_attention in GATED_KINDS:
      gate = jnp.tanh(self.gate)[:, None]  # [h, 1]
      scale = gate[None] if scale is None else scale * gate
    return scale

  @staticmethod
  def _recurrent_read(q, rec, scale):
    """Q @ rec, scaled: q [b,m,g,h,d], rec [b,m,h,d,e], scale [b,h,e] or None -> [b,m,g,h,e]."""
    read = jnp.einsum("bmghd,bmhde->bmghe", q.astype(rec.dtype), rec)
    return read if scale is None else read * scale[:, None, None].astype(read.dtype)

  # ---------------------------------------------------------------------------------------------
  # teacher forcing

  def __call__(self, x, enc, enc_mask, deterministic=True):
    """x [b, q, D] decoder states; enc [b, k, D]; enc_mask [b, k] bool -> [b, q, D]."""
    q = self.project_q(x)
    k, v = self.project_kv(enc)
    return self.project_out(self.attend(q, k, v, enc_mask, deterministic))

  def attend(self, q, k, v, enc_mask, deterministic=True):
    """The attention itself, without projections: q [b, q, h, d], k/v [b, k, h, d] -> [b, q, h, d]."""
    c = self.config
    if c.cross_attention == "full":
      return layers.dot_product_attention(
          q, k, v, layers.sequence_mask_bias(enc_mask), dropout=self.attn_dropout,
          deterministic=deterministic, cpu=self.config.cpu_kernels)
    if c.cross_attention == "linear":
      acc = layers.accum_dtype(q.dtype)
      s_sum, z = linear_summaries(k, v, enc_mask, acc)  # [b, h, d, e], [b, h, d]
      return linear_read(elu_feature_map(q.astype(acc)), s_sum[:, None], z[:, None]).astype(q.dtype)
    if c.cross_attention == "local_window":
      return self._attend_local_window(q, k, v, enc_mask, deterministic)

    b, q_len = q.shape[:2]
    s = c.segment_size
    ks, vs, ms = self._split(k, v, enc_mask)
    m = ks.shape[1]
    warn_if_unused_segments(m, q_len, k.shape[1], s, "decoder length in this forward")
    if c.segment_schedule == "length":
      return self._attend_by_length(q, ks, vs, ms, deterministic)
    plan = segment_plan(q_len, m)
    qg = q[:, plan.group_index]  # [b, m, g, h, d]

    ctx = jnp.zeros(qg.shape, layers.accum_dtype(qg.dtype))
    if c.cross_attention != "recurrent_only":
      keys, vals, mask = (self._with_previous(ks, vs, ms) if c.cross_attention == "xl"
                          else (ks, vs, ms))
      memory = None
      if c.cross_attention == "pooled":  # every other non-empty segment's mean key/value
        pk, pv, pm = pooled_segments(ks, vs, ms)
        memory = (pk, pv, pm[:, None, :] & ~np.eye(m, dtype=bool)[None])  # mask [b, m, n = m]
      ctx = ctx + self._segment_softmax(qg, keys, vals, mask, deterministic, memory)
    if c.cross_attention in RECURRENT_KINDS:
      rec = self._trained_recurrent_outputs(ks, vs, plan.active)  # [b, n, h, d, e]
      if not plan.active.all():  # back to one slot per segment; unread segments' queries are padding
        rec = jnp.zeros(rec.shape[:1] + (m,) + rec.shape[2:], rec.dtype).at[:, plan.active].set(rec)
      read = self._recurrent_read(qg, rec, self._recurrent_scale(ks))
      self._sow_recurrent_share(ctx, read)
      ctx = ctx + read
    ctx = ctx.reshape(b, m * plan.group_size, *ctx.shape[3:])[:, plan.flat_pos]
    return ctx.astype(q.dtype)

  def _attend_by_length(self, q, ks, vs, ms, deterministic):
    """The `length` schedule: each position gathers its own example's segment (one query per
    group, so the grouped helpers apply with g = 1). q [b, q, h, d], ks/vs [b, m, s, h, d]."""
    c = self.config
    b, q_len = q.shape[:2]
    _, seg, visited = length_plan(ms, q_len)
    rows = jnp.arange(b)[:, None]
    qg = q[:, :, None]  # [b, q, 1, h, d]
    ctx = jnp.zeros(qg.shape, layers.accum_dtype(qg.dtype))
    if c.cross_attention != "recurrent_only":
      keys, vals, mask = (self._with_previous(ks, vs, ms) if c.cross_attention == "xl"
                          else (ks, vs, ms))
      memory = None
      if c.cross_attention == "pooled":  # mask [b, q, n = m]: the other non-empty segments
        pk, pv, pm = pooled_segments(ks, vs, ms)
        memory = (pk, pv, pm[:, None, :] & (jnp.arange(ks.shape[1])[None, None, :] != seg[:, :, None]))
      ctx = ctx + self._segment_softmax(qg, keys[rows, seg], vals[rows, seg], mask[rows, seg],
                                        deterministic, memory)  # [b, q, s', h, d] per position
    if c.cross_attention in RECURRENT_KINDS:
      rec = self._trained_recurrent_outputs(ks, vs, visited)  # [b, m, h, d, e]
      read = self._recurrent_read(qg, rec[rows, seg], self._recurrent_scale(ks))
      self._sow_recurrent_share(ctx, read)
      ctx = ctx + read
    return ctx[:, :, 0].astype(q.dtype)

  def _window_width(self, k_len: int) -> int:
    return min(self.config.segment_size, k_len)

  def _attend_local_window(self, q, k, v, enc_mask, deterministic):
    """`local_window`: each position's softmax over its w keys, gathered per position (one query
    per group, so the grouped helper applies with m = q, g = 1). q [b, q, h, d], k/v [b, k, h, d]."""
    c = self.config
    q_len, k_len = q.shape[1], k.shape[1]
    w = self._window_width(k_len)
    t = np.arange(q_len)
    if c.segment_schedule == "length":  # each example's own length (inputs are right-padded)
      length = jnp.sum(enc_mask, axis=1, dtype=jnp.int32)[:, None]             # [b, 1]
      idx = window_start(jnp.asarray(t)[None], q_len, length, w)[..., None] + np.arange(w)  # [b, q, w]
      rows = jnp.arange(q.shape[0])[:, None, None]
      keys, vals, mask = k[rows, idx], v[rows, idx], enc_mask[rows, idx]
    else:  # the padded input's length: a static gather
      idx = window_start(t, q_len, k_len, w)[:, None] + np.arange(w)           # [q, w]
      keys, vals, mask = k[:, idx], v[:, idx], enc_mask[:, idx]               # [b, q, w, h, d]
    return self._segment_softmax(q[:, :, None], keys, vals, mask, deterministic)[:, :, 0]

  # ---------------------------------------------------------------------------------------------
  # decoding

  def init_state(self, enc, enc_mask):
    """Per-input decoding state, computed once: nothing in it changes while decoding.

    enc [b, k, D]; enc_mask [b, k] bool. A typed pytree per kind (`attention.cache`):
      full, local_window: DenseCrossState k, v [b, h, k, d], mask [b, k] (local_window under the
                 `length` schedule: length [b])
      linear:    LinearCrossState s [b, h, d, e], z [b, h, d]
      segmented: SegmentCrossState ks, vs [m, b, h, s, d], ms [m, b, s]
      recurrent: + rec [n, b, h, d, e]: RAF(W P_i) / ||K|| for the n segments decoding visits
                 (`length` schedule: all n = m segments, and mb [b], each example's m_b)
      pooled:    + pk, pv [b, h, m, d], pm [b, m]: the segments' means
    Segment-major, head-major layouts make what a step reads one contiguous block.

    Why 'rec' is precomputed: the segments a decoder visits are fixed by (t, gen_len, m), never by the
    tokens, so RAF's whole trajectory is a function of the encoder output. One `lax.scan` here (the
    training path's code) costs O(k d^2 + n d^3) once; computing K_i^T V_i and stepping RAF inside the
    decoding loop would pay that per token, since a `where` cannot skip work and at m > gen_len the
    segment changes at every token anyway. Each step then reads one segment and one d x e matrix per
    head, whatever k is.
    """
    c = self.config
    k, v = self.project_kv(enc)
    if c.cross_attention in ("full", "local_window"):
      length = (jnp.sum(enc_mask, axis=1, dtype=jnp.int32)
                if c.cross_attention == "local_window" and c.segment_schedule == "length" else None)
      return DenseCrossState(k=jnp.swapaxes(k, 1, 2), v=jnp.swapaxes(v, 1, 2), mask=enc_mask, length=length)
    if c.cross_attention == "linear":
      s_sum, z = linear_summaries(k, v, enc_mask, layers.accum_dtype(k.dtype))
      return LinearCrossState(s=s_sum, z=z)
    ks, vs, ms = self._split(k, v, enc_mask)
    m = ks.shape[1]
    warn_if_unused_segments(m, c.gen_len, k.shape[1], c.segment_size, "config.gen_len")
    to_state = lambda x: jnp.transpose(x, (1, 0, 3, 2, 4))  # [b, m, s, h, d] -> [m, b, h, s, d]
    fields = {}
    if c.cross_attention == "pooled":
      pk, pv, pm = pooled_segments(ks, vs, ms)
      fields.update(pk=jnp.swapaxes(pk, 1, 2), pv=jnp.swapaxes(pv, 1, 2), pm=pm)  # [b, h, m, d], [b, m]
    if c.segment_schedule == "length":
      fields["mb"], _, visits = length_plan(ms, c.gen_len)  # [b], -, [b, m]
    else:
      visits = _decoding_visits(c.gen_len, m)
    if c.cross_attention in RECURRENT_KINDS:
      rec = self._recurrent_outputs(ks, vs, visits)  # [b, n, h, d, e]
      scale = self._recurrent_scale(ks)
      rec = rec if scale is None else rec * scale[:, None, :, None, :].astype(rec.dtype)
      fields["rec"] = jnp.swapaxes(rec, 0, 1)
    return SegmentCrossState(ks=to_state(ks), vs=to_state(vs), ms=jnp.swapaxes(ms, 0, 1), **fields)

  def step(self, x, state, t):
    """One decoding step at position t (scalar). x [b*r, 1, D] -> (out [b*r, 1, D], state unchanged).

    The state holds b inputs; x may hold r rows per input (beam search's beams, rows grouped by
    input): every row of an input reads its one state, never a copy. Reads one segment of K/V (two
    for `xl`) and, for the recurrent kinds, that segment's RAF output.
    """
    c = self.config
    q = self.project_q(x)  # [b*r, 1, h, d]
    kind = c.cross_attention
    b = (state.k.shape[0] if kind in ("full", "local_window")
         else state.s.shape[0] if kind == "linear" else state.ks.shape[1])
    r = q.shape[0] // b
    if kind == "full":  # an input's r rows are r query positions of that input
      bias = layers.sequence_mask_bias(state.mask)
      ctx = layers.dot_product_attention(q.reshape(b, r, *q.shape[2:]), state.k, state.v, bias,
                                         head_major_kv=True, cpu=self.config.cpu_kernels)
      return self.project_out(ctx.reshape(q.shape)), state

    acc = layers.accum_dtype(q.dtype)
    # Greedy decoding (r = 1) leaves the beam axis out: with a size-1 axis in its fused
    # multiply-reduces XLA:CPU ran this step ~2x slower (T5-small, k = 512: ~35 -> ~18 ms per token,
    # benchmarks/decode_scaling.py). `rows` puts an input's state against its r rows.
    q1 = q[:, 0].astype(acc)                                         # [b, h, d]
    if r == 1 and c.cpu_kernels:
      rows = lambda a: a  # noqa: E731
    else:
      q1 = q1.reshape(b, r, *q1.shape[1:])                           # [b, r, h, d]
      rows = lambda a: a[:, None]  # noqa: E731
    out = lambda ctx: (self.project_out(ctx.reshape(b * r, 1, *ctx.shape[-2:]).astype(q.dtype)),  # noqa: E731
                       state)
    if kind == "linear":  # O(d^2) per token: the input's S and z
      return out(linear_read(elu_feature_map(q1), rows(state.s), rows(state.z)))
    if kind == "local_window":
      k_len = state.k.shape[2]
      w = self._window_width(k_len)
      if c.segment_schedule == "length":  # idx [b, w]: each example's own window
        idx = window_start(t, c.gen_len, state.length, w)[:, None] + jnp.arange(w)
        keys = jnp.take_along_axis(state.k, idx[:, None, :, None], axis=2)   # [b, h, w, d]
        vals = jnp.take_along_axis(state.v, idx[:, None, :, None], axis=2)
        mask = jnp.take_along_axis(state.mask, idx, axis=1)                  # [b, w]
      else:
        start = window_start(t, c.gen_len, k_len, w)
        keys = jax.lax.dynamic_slice_in_dim(state.k, start, w, axis=2)
        vals = jax.lax.dynamic_slice_in_dim(state.v, start, w, axis=2)
        mask = jax.lax.dynamic_slice_in_dim(state.mask, start, w, axis=1)
      return out(self._step_softmax(q1, rows, keys, vals, mask))

    ks, vs, ms = state.ks, state.vs, state.ms
    m = ks.shape[0]
    if c.segment_schedule == "length":  # seg [b]: each example its own segment
      seg = segment_of(t, c.gen_len, state.mb)
      take = lambda a, i: a[i, jnp.arange(a.shape[1])]
    else:  # seg: a scalar, the same for the whole batch
      seg = segment_of(t, c.gen_len, m)
      take = lambda a, i: jax.lax.dynamic_index_in_dim(a, i, axis=0, keepdims=False)
    ctx = jnp.zeros(q1.shape, acc)
    if c.cross_attention != "recurrent_only":
      keys, vals, mask = take(ks, seg), take(vs, seg), take(ms, seg)  # [b, h, s, d], [b, s]
      if c.cross_attention == "xl":
        prev = jnp.maximum(seg - 1, 0)
        keys = jnp.concatenate([take(ks, prev), keys], axis=2)
        vals = jnp.concatenate([take(vs, prev), vals], axis=2)
        mask = jnp.concatenate([take(ms, prev) & jnp.reshape(seg > 0, (-1, 1)), mask], axis=1)
      memory = None
      if kind == "pooled":  # the other non-empty segments' means: mask [b, m]
        memory = (state.pk, state.pv, state.pm & (jnp.arange(m)[None, :] != jnp.reshape(seg, (-1, 1))))
      ctx = ctx + self._step_softmax(q1, rows, keys, vals, mask, memory)
    if c.cross_attention in RECURRENT_KINDS:
      slot = (seg if c.segment_schedule == "length"
              else jnp.asarray(np.cumsum(_decoding_visits(c.gen_len, m)) - 1, jnp.int32)[seg])
      rec = take(state.rec, slot)                                    # [b, h, d, e]
      ctx = ctx + jnp.sum(q1[..., None] * rows(rec), axis=-2)        # [b, (r,) h, e]
    return out(ctx)

  def _step_softmax(self, q1, rows, keys, vals, mask, memory=None):
    """One decoding step's softmax: q1 [b, (r,) h, d] over keys/vals [b, h, s, d] where mask [b, s],
    and (`pooled`) memory = (pk, pv [b, h, n, d], mem_mask [b, n]) -> [b, (r,) h, d]."""
    acc = q1.dtype
    s = keys.shape[2]
    scores = jnp.sum(q1[..., None, :] * rows(keys).astype(acc), axis=-1)  # [b, (r,) h, s]
    if memory is not None:
      # m means (2048 at k = 16384, s = 8): contractions, not a broadcast product of [b, h, m, d]
      # reduced after (~3x slower per token on XLA:CPU, memory-bound at that size)
      pk, pv, mem_mask = memory
      r_ax = "r" if q1.ndim == 4 else ""
      scores = jnp.concatenate(
          [scores, jnp.einsum(f"b{r_ax}hd,bhnd->b{r_ax}hn", q1, pk.astype(acc))], -1)
      mask = jnp.concatenate([mask, mem_mask], axis=-1)
    probs = self._masked_softmax(scores, rows(mask[:, None, :]))
    ctx = jnp.sum(probs[..., :s, None] * rows(vals).astype(acc), axis=-2)  # [b, (r,) h, d]
    if memory is not None:
      ctx = ctx + jnp.einsum(f"b{r_ax}hn,bhnd->b{r_ax}hd", probs[..., s:], pv.astype(acc))
    return ctx


def _decoding_visits(gen_len: int, m: int) -> np.ndarray:
  """[m] bool: the segments decoding reads, i.e. those of positions 0..gen_len-1 plus the last one
  (positions past gen_len read segment m - 1). Adding the last segment changes no earlier RAF
  output, since RAF runs in segment order."""
  visits = segment_plan(gen_len, m).active.copy()
  visits[-1] = True
  return visits


def _select(x, keep):
  """x[:, keep] for static indices keep (None: all, without a gather)."""
  return x if keep is None else x[:, keep]


def _seg_and_total(ks, vs):
  kv_seg = kv_products(ks, vs)
  return kv_seg, jnp.sum(kv_seg, axis=1)


def _raf_kernel_init(std: float | None):
  """RAF linear init: N(0, std) if given, else identity + N(0, 0.02) so that a freshly added RAF
  passes the complement through (useful when starting from a pretrained T5/BART)."""

  def init(key, shape, dtype=jnp.float32):
    noise = jax.random.normal(key, shape, dtype)
    if std is not None:
      return std * noise
    return jnp.eye(shape[0], shape[1], dtype=dtype) + 0.02 * noise

  return init
