"""Checks shared by several test modules."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp

from srformer_jax import build_model
from srformer_jax.decoding import stepwise_logits


def cached_equals_teacher_forced(config, params, ids, mask, dec):
  """Decoding token by token through the cache must give the teacher-forced logits.

  The identity holds exactly in real arithmetic, so it is checked in float64 to 1e-5 (float32
  rounding alone reaches ~1e-5 on logits of size ~10 after a few layers) and in float32 to 1e-4.
  Returns the float32 teacher-forced logits. Both sides are jitted (one compile each costs less
  than running the segment scans op by op).
  """
  with jax.enable_x64(True):
    cfg64 = dataclasses.replace(config, dtype="float64")
    p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
    model = build_model(cfg64)
    full = jax.jit(model.apply)({"params": p64}, ids, mask, dec)
    steps = jax.jit(functools.partial(stepwise_logits, model))(p64, ids, mask, dec)
    assert steps.dtype == jnp.float64
    chex.assert_trees_all_close(steps, full, atol=1e-5, rtol=0)
  model = build_model(config)
  full = jax.jit(model.apply)({"params": params}, ids, mask, dec)
  steps = jax.jit(functools.partial(stepwise_logits, model))(params, ids, mask, dec)
  chex.assert_trees_all_close(steps, full, atol=1e-4, rtol=0)
  chex.assert_tree_all_finite(full)
  return full
