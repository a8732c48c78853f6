"""Recurrent Accumulate-and-Fire (RAF): the gate that carries the other segments' summary.

One RAF step on an input x (already passed through RAF's linear layer):

    mem   <- leak * mem + x
    y     =  mem / threshold - 1
    mem   <- mem - threshold * [y > 0]        (soft reset; the spike indicator has no gradient)
    out   =  relu(y)

This is exactly the update of the authors' `RAF_apply`. It runs once per segment change, so over a
whole sequence it is a `jax.lax.scan` over segments.
"""

from __future__ import annotations

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
             mem0: jax.Array | None = None):
  """Runs RAF over segments.

  Args:
    xs: [segments, ...] inputs, one per segment (segment axis first).
    active: [segments] or [segments, batch] bool (per example, for the `length` segment schedule);
      a segment that no decoder position reads does not advance the memory, as in step-wise
      decoding.
    threshold, leak: RAF scalars.
    mem0: initial membrane potential (zeros if None).

  Returns:
    (outs [segments, ...], final mem). The out of an inactive segment is zeros.
  """
  if mem0 is None:
    mem0 = jnp.zeros(xs.shape[1:], xs.dtype)

  def body(mem, inp):
    x, on = inp
    new_mem, out = raf_step(mem, x, threshold, leak)
    on = on.reshape(on.shape + (1,) * (x.ndim - on.ndim))  # broadcast over the trailing axes
    return jnp.where(on, new_mem, mem), jnp.where(on, out, jnp.zeros_like(out))

  mem, outs = jax.lax.scan(body, mem0, (xs, active))
  return outs, mem
