"""Recurrent Accumulate-and-Fire (RAF): the gate that carries the other segments' summary.

One RAF step on an input x (already passed through RAF's linear layer):

    mem   <- leak * mem + x
    y     =  mem / threshold - 1
    mem   <- mem - threshold * [y > 0]        (soft reset; the spike indicator has no gradient)
    out   =  relu(y)

This is exactly the update of the authors' `RAF_apply`. It runs once per segment change, so over a
whole sequence it is a loop over segments (`raf_scan`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def raf_step(mem: jax.Array, x: jax.Array, threshold: jax.Array, leak: jax.Array):
  """One RAF update. mem, x: same shape; threshold, leak: scalars (shape (1,) or ()).

  Returns (new_mem, out).
  """
  mem = leak * mem + x
  y = mem / threshold - 1.0
  spike = jax.lax.stop_gradient((y > 0).astype(mem.dtype))
  mem = mem - threshold * spike
  return mem, jax.nn.relu(y)


def raf_scan(xs: jax.Array, active: jax.Array, threshold: jax.Array, leak: jax.Array,
             mem0: jax.Array | None = None, axis: int = 0):
  """Runs RAF over segments.

  Args:
    xs: inputs, one per segment along `axis` (e.g. [segments, batch, ...] or, with axis=1,
      [batch, segments, ...]).
    active: [segments] or [segments, batch] bool (per example, for the `length` segment schedule);
      a segment that no decoder position reads does not advance the memory, as in step-wise
      decoding.
    threshold, leak: RAF scalars.
    mem0: initial membrane potential, xs without its segment axis (zeros if None).
    axis: the segment axis of xs (and of outs).

  Returns:
    (outs, like xs; final mem). The out of an inactive segment is zeros.

  The same values as stepping `raf_step`, with a gradient of its own (`_raf_scan_bwd`): the loops
  carry only the membrane (forward) and its cotangent (backward), one fused elementwise update per
  segment, and the threshold's and leak's gradients are two reductions after the loop. JAX's own
  gradient of a scan of `raf_step` reduced both scalars' cotangents over every element inside the
  loop, once per segment, and kept more per-segment tensors: at the segment sweep's shapes (32
  segments of [16, 4, 32, 32]) one SRformer cross-attention layer's forward + backward went from
  ~55 to ~40 ms on a 2-core CPU. `axis=1` steps along the second axis in place, so a caller with
  [batch, segments, ...] tensors needs no transposes. tests/test_segment_schedule.py checks values
  and every gradient against stepping `raf_step`.
  """
  if active.ndim == 2 and axis not in (0, 1):
    raise ValueError(f"raf_scan: a per-example `active` [segments, batch] needs the batch axis next to "
                     f"the segment axis (axis 0 or 1), got axis={axis}")
  if mem0 is None:
    mem0 = jnp.zeros(xs.shape[:axis] + xs.shape[axis + 1:], xs.dtype)
  return _raf_scan(xs, active, threshold, leak, mem0, axis)


def _broadcast_active(active: jax.Array, like: jax.Array) -> jax.Array:
  """active [] or [batch] against one segment's [batch, ...]."""
  return active.reshape(active.shape + (1,) * (like.ndim - active.ndim))


def _stacked_active(active: jax.Array, xs: jax.Array, axis: int) -> jax.Array:
  """active [segments] or [segments, batch] against the stacked xs (segment axis `axis`)."""
  if active.ndim == 2 and axis == 1:
    active = active.T  # [batch, segments]
  elif active.ndim == 1:
    active = active.reshape((1,) * axis + active.shape)
  return active.reshape(active.shape + (1,) * (xs.ndim - active.ndim))


def _membranes(xs, active, threshold, leak, mem0, axis):
  """(final mem, the membrane before each segment's step, stacked like xs)."""

  def body(i, carry):
    mem, prev = carry
    x = jax.lax.dynamic_index_in_dim(xs, i, axis, keepdims=False)
    new_mem, _ = raf_step(mem, x, threshold, leak)
    prev = jax.lax.dynamic_update_index_in_dim(prev, mem, i, axis)
    return jnp.where(_broadcast_active(active[i], x), new_mem, mem), prev

  return jax.lax.fori_loop(0, xs.shape[axis], body, (mem0, jnp.zeros_like(xs)))


def _outputs(xs, active, threshold, leak, prev, axis):
  """Every segment's RAF output from the membrane before its step: relu(y), zeros when inactive."""
  y = (leak * prev + xs) / threshold - 1.0
  return jnp.where(_stacked_active(active, xs, axis), jax.nn.relu(y), jnp.zeros_like(y))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _raf_scan(xs, active, threshold, leak, mem0, axis):
  mem, prev = _membranes(xs, active, threshold, leak, mem0, axis)
  return _outputs(xs, active, threshold, leak, prev, axis), mem


def _raf_scan_fwd(xs, active, threshold, leak, mem0, axis):
  mem, prev = _membranes(xs, active, threshold, leak, mem0, axis)
  return (_outputs(xs, active, threshold, leak, prev, axis), mem), (xs, active, threshold, leak, prev)


def _raf_scan_bwd(axis, res, cts):
  """Per active segment i: a_i = leak * prev_i + x_i, y_i = a_i / thr - 1, s_i = [y_i > 0] (no
  gradient), mem_i = a_i - thr * s_i, out_i = relu(y_i). With M_i the cotangent of mem_i (from the
  later segments and the final mem): da_i = s_i * g_i / thr + M_i, M_{i-1} = leak * da_i (inactive
  segments pass M on unchanged and get no gradient); dx_i = da_i, d leak = sum_i da_i * prev_i,
  d thr = -sum_i (s_i g_i a_i / thr^2 + M_i s_i)."""
  xs, active, threshold, leak, prev = res
  g, g_mem = cts
  on = _stacked_active(active, xs, axis)
  a = leak * prev + xs
  spike = (a / threshold - 1.0 > 0).astype(xs.dtype)
  dy = jnp.where(on, g * spike, jnp.zeros_like(g))  # cotangent of y_i
  c = dy / threshold
  n = xs.shape[axis]

  def body(j, carry):
    m, da = carry
    i = n - 1 - j
    ci = jax.lax.dynamic_index_in_dim(c, i, axis, keepdims=False)
    oi = _broadcast_active(active[i], ci)
    da_i = jnp.where(oi, ci + m, jnp.zeros_like(ci))
    return jnp.where(oi, leak * da_i, m), jax.lax.dynamic_update_index_in_dim(da, da_i, i, axis)

  d_mem0, da = jax.lax.fori_loop(0, n, body, (g_mem, jnp.zeros_like(c)))
  m_after = da - c  # M_i on active segments (da_i - dy_i / thr); masked by spike * on below
  d_threshold = -jnp.sum(dy * a / (threshold * threshold) + jnp.where(on, m_after * spike, 0.0))
  d_leak = jnp.sum(da * prev)
  return (da, None, d_threshold.reshape(jnp.shape(threshold)).astype(threshold.dtype),
          d_leak.reshape(jnp.shape(leak)).astype(leak.dtype), d_mem0)


_raf_scan.defvjp(_raf_scan_fwd, _raf_scan_bwd)
