"""Query/key/value/output projections with HF names (T5: q,k,v,o; BART: q_proj,k_proj,v_proj,out_proj)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from srformer_jax import layers
from srformer_jax import sharding as sh
from srformer_jax.config import ModelConfig

PROJ_NAMES = {"t5": ("q", "k", "v", "o"), "bart": ("q_proj", "k_proj", "v_proj", "out_proj")}


class ProjectionsMixin:
  """Adds q/k/v/o projections (created in `setup_projections`) to an attention module.

  T5 has no biases and no query scaling (folded into its init); BART has biases and scales the
  query by d_kv**-0.5 right after the projection, as HF does.
  """

  config: ModelConfig

  def setup_projections(self):
    c = self.config
    dt = jnp.dtype(c.dtype)
    bias = c.arch == "bart"
    q, k, v, o = PROJ_NAMES[c.arch]
    # A fresh T5 is initialised as HF's T5 is: T5 never scales its attention scores, so q's init
    # carries the d_kv**-0.5 (std (d_model*d_kv)**-0.5). With q initialised like k, the scores start
    # with std ~sqrt(d_kv) and every softmax saturates: a model trained from scratch barely learns
    # to read its input (see docs/segment_sweep.md). Pretrained weights replace all of these.
    std = ({q: (c.d_model * c.d_kv) ** -0.5, k: c.d_model ** -0.5, v: c.d_model ** -0.5, o: c.inner_dim ** -0.5}
           if c.arch == "t5" else {})
    for name in (q, k, v):
      setattr(self, name, layers.dense(c.inner_dim, (sh.EMBED, sh.JOINED_KV), use_bias=bias, dtype=dt,
                                       init_std=std.get(name), cpu=self.config.cpu_kernels))
    setattr(self, o, layers.dense(c.d_model, (sh.JOINED_KV, sh.EMBED), use_bias=bias, dtype=dt,
                                  init_std=std.get(o), cpu=self.config.cpu_kernels))

  def project_q(self, x: jax.Array) -> jax.Array:
    """[b, t, D] -> [b, t, h, d] (BART: scaled by d**-0.5)."""
    c = self.config
    q = layers.shape_heads(getattr(self, PROJ_NAMES[c.arch][0])(x), c.num_heads)
    if c.arch == "bart":
      q = q * jnp.asarray(c.d_kv ** -0.5, q.dtype)
    return nn.with_logical_constraint(q, (sh.BATCH, sh.LENGTH, sh.HEADS, sh.KV))

  def project_kv(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[b, t, D] -> k, v [b, t, h, d]."""
    c = self.config
    _, k_name, v_name, _ = PROJ_NAMES[c.arch]
    k = layers.shape_heads(getattr(self, k_name)(x), c.num_heads)
    v = layers.shape_heads(getattr(self, v_name)(x), c.num_heads)
    return k, v

  def project_out(self, ctx: jax.Array) -> jax.Array:
    """[b, t, h, d] -> [b, t, D]."""
    out = getattr(self, PROJ_NAMES[self.config.arch][3])(layers.merge_heads(ctx))
    return nn.with_logical_constraint(out, (sh.BATCH, sh.LENGTH, sh.EMBED))
