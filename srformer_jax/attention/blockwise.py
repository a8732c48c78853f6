"""Memory-efficient (blockwise, "flash") softmax attention in plain JAX.

Queries and keys are cut into blocks; each query block runs an online softmax over the key blocks
(running max m, running sum l, unnormalised output), so no [b, h, q, k] tensor ever exists: the
largest temporaries are one block's [b, h, block_q, block_k] scores. The backward (a
`jax.custom_vjp`) recomputes each block's probabilities from the saved m and l, FlashAttention-2
style, so the residuals are q, k, v, the output and m, l: O(k), not O(k^2).

Masks and bias follow the dense path (`layers.dot_product_attention` under the stacks' additive
masks) exactly:
  * a masked key adds float32's most negative number, as the dense mask bias does, so a row whose
    keys are all masked is a uniform average over all keys, as in dense; keys added here to pad k
    up to a whole block get -inf and never count;
  * causal masking is the same additive mask (key > query), and blocks above the diagonal are
    computed rather than skipped, so that holds for causal rows too (decoder lengths are a few
    blocks at most here);
  * a Toeplitz relative-position bias (T5: bias[h, i, j] = table[bucket(j - i)]) is passed as its
    [h, q + k - 1] diagonal values and expanded per block; its gradient is gathered per block by
    summing the score gradient along diagonals. Neither direction builds an [h, q, k] tensor.

Dropout on the attention probabilities: dropout(softmax(s)) @ v = (dropout(exp(s - m)) @ v) / l with
l the row sum of the *undropped* exp(s - m), so dropping the unnormalised block probabilities keeps
the dense semantics (each probability kept with 1 - rate and scaled by 1 / (1 - rate)). Masks are
drawn per block from fold_in(rng, block index), so they are not bit-identical to the dense path's
single draw (`dropout_keep` is the mask, for reference implementations).

Einsum letters: b batch, h head, q/k query/key position within a block, d head dim.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from srformer_jax import layers

MASKED = float(np.finfo(np.float32).min)  # what the dense path's additive mask adds


@dataclasses.dataclass(frozen=True)
class _Spec:
  """Static settings of one call (hashable: a custom_vjp non-differentiable argument)."""

  q_len: int
  k_len: int
  block_q: int
  block_k: int
  causal: bool
  dropout_rate: float

  @property
  def nq(self) -> int:
    return -(-self.q_len // self.block_q)

  @property
  def nk(self) -> int:
    return -(-self.k_len // self.block_k)


def blockwise_attention(q, k, v, key_mask, *, rel_bias=None, causal: bool = False,
                        block_size: int = 512, dropout_rate: float = 0.0, dropout_rng=None):
  """Softmax attention without [b, h, q, k] tensors.

  q [b, q, h, d]; k, v [b, k, h, d]; key_mask [b, k] bool (True: attend); rel_bias [h, q + k - 1]
  or None, with rel_bias[:, (key - query) + q - 1] added to the score of (query, key); causal:
  also mask key > query. Dropout is applied when dropout_rate > 0 and dropout_rng is given.
  Returns [b, q, h, d] in q's dtype. Scores, softmax and accumulation are in float32 (float64
  under a float64 config); q is not scaled.
  """
  b, q_len, h, d = q.shape
  k_len = k.shape[1]
  if dropout_rng is None:
    dropout_rate = 0.0
  spec = _Spec(q_len, k_len, min(block_size, q_len), min(block_size, k_len), causal,
               float(dropout_rate))
  if rel_bias is not None:
    rel_bias = rel_bias.astype(jnp.float32)
  return _attention(spec, q, k, v, key_mask, rel_bias, dropout_rng)


def dropout_keep(rng, rate: float, i, j, shape):
  """Keep mask of query block i x key block j ([b, h, block_q, block_k] bool), P(keep) = 1 - rate."""
  key = jax.random.fold_in(jax.random.fold_in(rng, i), j)
  return jax.random.bernoulli(key, 1.0 - rate, shape)


# ------------------------------------------------------------------------------------------------
# blocking helpers


def _blocks(x, n: int, size: int):
  """[b, t, ...] -> [n, b, size, ...], zero-padded at the end."""
  pad = n * size - x.shape[1]
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  x = x.reshape((x.shape[0], n, size) + x.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def _unblock(x, length: int):
  """[n, b, size, ...] -> [b, length, ...]."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape((x.shape[0], -1) + x.shape[3:])[:, :length]


def _padded_rel_bias(rel_bias, spec: _Spec):
  """[h, q + k - 1] -> [h, Q + K - 1] for the padded lengths Q, K (zeros outside: never used)."""
  pq = spec.nq * spec.block_q - spec.q_len
  pk = spec.nk * spec.block_k - spec.k_len
  return jnp.pad(rel_bias, ((0, 0), (pq, pk)))


def _block_bias(rel, i, j, spec: _Spec):
  """Bias of query block i x key block j from the padded diagonal values: [h, block_q, block_k]."""
  bq, bk = spec.block_q, spec.block_k
  start = j * bk - i * bq + spec.nq * bq - bq
  diag = jax.lax.dynamic_slice_in_dim(rel, start, bq + bk - 1, axis=1)  # [h, bq + bk - 1]
  idx = np.arange(bk)[None, :] - np.arange(bq)[:, None] + bq - 1
  return diag[:, idx]


def _diagonal_sums(x):
  """[h, bq, bk] -> [h, bq + bk - 1]: out[:, c] = sum of x[:, i, j] over j - i + bq - 1 = c.

  The transpose of `_block_bias`'s expansion, without a scatter: flipping the query axis turns
  diagonals into anti-diagonals, and re-reading the rows (padded by bq) with a stride one shorter
  shifts row i right by i, so that each anti-diagonal becomes a column.
  """
  h, bq, bk = x.shape
  w = bk + bq
  x = jnp.pad(x[:, ::-1, :], ((0, 0), (0, 0), (0, bq))).reshape(h, bq * w)
  return x[:, :bq * (w - 1)].reshape(h, bq, w - 1).sum(axis=1)


def _scores(qi, kj, mask_j, rel, i, j, spec: _Spec):
  """Masked scores of query block i x key block j: [b, h, block_q, block_k] in the accum dtype."""
  acc = layers.accum_dtype(qi.dtype)
  s = jnp.einsum("bqhd,bkhd->bhqk", qi, kj, preferred_element_type=acc)
  if rel is not None:
    s = s + _block_bias(rel, i, j, spec)[None]
  key_pos = j * spec.block_k + jnp.arange(spec.block_k)
  allowed = mask_j[:, None, None, :]
  if spec.causal:
    query_pos = i * spec.block_q + jnp.arange(spec.block_q)
    allowed = allowed & (key_pos[None, :] <= query_pos[:, None])[None, None]
  s = s + jnp.where(allowed, 0.0, MASKED)
  return jnp.where((key_pos < spec.k_len)[None, None, None, :], s, -jnp.inf)


def _keep_scale(rng, i, j, shape, spec: _Spec, dtype):
  """Dropout multiplier of a block (0 or 1 / (1 - rate)), or None without dropout."""
  if not spec.dropout_rate:
    return None
  keep = dropout_keep(rng, spec.dropout_rate, i, j, shape)
  return jnp.where(keep, 1.0 / (1.0 - spec.dropout_rate), 0.0).astype(dtype)


# ------------------------------------------------------------------------------------------------
# forward and backward


def _forward(spec: _Spec, q, k, v, key_mask, rel_bias, rng):
  """Returns (out [b, q, h, d], residuals)."""
  acc = layers.accum_dtype(q.dtype)
  qb = _blocks(q, spec.nq, spec.block_q)  # [nq, b, bq, h, d]
  kb = _blocks(k, spec.nk, spec.block_k)  # [nk, b, bk, h, d]
  vb = _blocks(v, spec.nk, spec.block_k)
  mb = _blocks(key_mask, spec.nk, spec.block_k)  # [nk, b, bk]
  rel = None if rel_bias is None else _padded_rel_bias(rel_bias, spec)
  b, h, d = q.shape[0], q.shape[2], v.shape[-1]
  row = (b, h, spec.block_q)

  def query_block(_, inp):
    qi, i = inp

    def key_block(carry, inp):
      m, l, o = carry
      kj, vj, mj, j = inp
      s = _scores(qi, kj, mj, rel, i, j, spec)
      m_new = jnp.maximum(m, s.max(axis=-1))
      alpha = jnp.exp(m - m_new)
      p = jnp.exp(s - m_new[..., None])
      l = alpha * l + p.sum(axis=-1)
      z = _keep_scale(rng, i, j, s.shape, spec, acc)
      pv = p if z is None else p * z
      o = alpha[..., None] * o + jnp.einsum("bhqk,bkhd->bhqd", pv.astype(vj.dtype), vj,
                                            preferred_element_type=acc)
      return (m_new, l, o), None

    init = (jnp.full(row, -jnp.inf, acc), jnp.zeros(row, acc), jnp.zeros(row + (d,), acc))
    (m, l, o), _ = jax.lax.scan(key_block, init, (kb, vb, mb, jnp.arange(spec.nk)))
    return None, (o / l[..., None], m, l)

  _, (o, m, l) = jax.lax.scan(query_block, None, (qb, jnp.arange(spec.nq)))
  out = _unblock(jnp.swapaxes(o, 2, 3), spec.q_len).astype(q.dtype)  # [nq,b,h,bq,d] -> [b,q,h,d]
  return out, (q, k, v, key_mask, rel_bias, rng, out, m, l)


def _backward(spec: _Spec, res, dout):
  q, k, v, key_mask, rel_bias, rng, out, m, l = res
  acc = layers.accum_dtype(q.dtype)
  qb = _blocks(q, spec.nq, spec.block_q)
  kb = _blocks(k, spec.nk, spec.block_k)
  vb = _blocks(v, spec.nk, spec.block_k)
  mb = _blocks(key_mask, spec.nk, spec.block_k)
  dob = _blocks(dout.astype(acc), spec.nq, spec.block_q)  # [nq, b, bq, h, d]
  # D_i = sum_j P_ij dP_ij = rowsum(dout * out) (dropout included: out is the dropped output)
  delta = _blocks(jnp.sum(dout.astype(acc) * out.astype(acc), axis=-1), spec.nq, spec.block_q)
  delta = jnp.swapaxes(delta, 2, 3)  # [nq, b, h, bq]
  rel = None if rel_bias is None else _padded_rel_bias(rel_bias, spec)

  def key_block(carry, inp):
    dq, drel = carry
    kj, vj, mj, j = inp

    def query_block(carry, inp):
      dk, dv, dq, drel = carry
      qi, doi, mi, li, di, i = inp
      s = _scores(qi, kj, mj, rel, i, j, spec)
      p = jnp.exp(s - mi[..., None]) / li[..., None]
      dp = jnp.einsum("bqhd,bkhd->bhqk", doi, vj, preferred_element_type=acc)
      z = _keep_scale(rng, i, j, s.shape, spec, acc)
      pz = p if z is None else p * z
      if z is not None:
        dp = dp * z
      ds = p * (dp - di[..., None])
      dv = dv + jnp.einsum("bhqk,bqhd->bkhd", pz, doi, preferred_element_type=acc)
      dk = dk + jnp.einsum("bhqk,bqhd->bkhd", ds, qi.astype(acc), preferred_element_type=acc)
      dqi = jnp.einsum("bhqk,bkhd->bqhd", ds, kj.astype(acc), preferred_element_type=acc)
      dq = dq.at[i].add(dqi)
      if drel is not None:
        diag = _diagonal_sums(ds.sum(axis=0)).astype(drel.dtype)
        start = j * spec.block_k - i * spec.block_q + spec.nq * spec.block_q - spec.block_q
        drel = jax.lax.dynamic_update_slice_in_dim(
            drel, jax.lax.dynamic_slice_in_dim(drel, start, diag.shape[1], axis=1) + diag, start, axis=1)
      return (dk, dv, dq, drel), None

    init = (jnp.zeros(kj.shape, acc), jnp.zeros(vj.shape, acc), dq, drel)
    (dk, dv, dq, drel), _ = jax.lax.scan(query_block, init, (qb, dob, m, l, delta, jnp.arange(spec.nq)))
    return (dq, drel), (dk, dv)

  dq0 = jnp.zeros(qb.shape, acc)
  drel0 = None if rel is None else jnp.zeros(rel.shape, acc)
  (dq, drel), (dk, dv) = jax.lax.scan(key_block, (dq0, drel0), (kb, vb, mb, jnp.arange(spec.nk)))
  dq = _unblock(dq, spec.q_len).astype(q.dtype)
  dk = _unblock(dk, spec.k_len).astype(k.dtype)
  dv = _unblock(dv, spec.k_len).astype(v.dtype)
  if drel is not None:
    pq = spec.nq * spec.block_q - spec.q_len
    drel = drel[:, pq:pq + rel_bias.shape[1]].astype(rel_bias.dtype)
  return dq, dk, dv, None, drel, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(spec, q, k, v, key_mask, rel_bias, rng):
  return _forward(spec, q, k, v, key_mask, rel_bias, rng)[0]


_attention.defvjp(_forward, _backward)
