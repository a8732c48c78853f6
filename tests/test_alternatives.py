"""The cheap cross-attentions (`config.ALTERNATIVE_KINDS`) against their equations written out in numpy.

Each reference loops over examples, heads and decoder positions and reads the module docstring's
rule directly (no grouping, no cache), so a wrong window, a mean over padding, a memory that reads
its own segment or a GRU gate in the wrong place shows as a mismatch. Decoding = teacher forcing
for these kinds is in test_srformer.py / test_segment_schedule.py with every other kind.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from srformer_jax import ModelConfig, build_model, init_params
from srformer_jax.attention import CrossAttention
from srformer_jax.config import ALTERNATIVE_KINDS
from tests.test_srformer import batch, tiny

Q_LEN, K_LEN, HEADS, D = 7, 21, 2, 4


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(3, Q_LEN, HEADS, D))
  k = rng.normal(size=(3, K_LEN, HEADS, D))
  v = rng.normal(size=(3, K_LEN, HEADS, D))
  mask = np.ones((3, K_LEN), bool)
  mask[1, 13:] = False  # whole segments of padding at s = 4
  mask[2, 5:] = False   # shorter than the window at s = 8
  return q, k, v, mask


def _softmax_read(q, keys, vals):
  """One query's softmax over the given keys (numpy; no keys: zeros, as the module's default mode)."""
  if len(keys) == 0:
    return np.zeros(vals.shape[-1])
  scores = keys @ q
  p = np.exp(scores - scores.max())
  return (p / p.sum()) @ vals


def _segments(mask_row, s):
  m = -(-len(mask_row) // s)
  return m, [np.nonzero(mask_row[i * s:(i + 1) * s])[0] + i * s for i in range(m)]


def reference(kind, q, k, v, mask, s, gru=None):
  """The kind's output [b, q, h, d] by its definition (T5: unscaled scores; `padded` schedule)."""
  b, q_len, h, _ = q.shape
  out = np.zeros(q.shape)
  for bi in range(b):
    real = np.nonzero(mask[bi])[0]
    m, segs = _segments(mask[bi], s)
    for hh in range(h):
      kk, vv = k[bi, :, hh], v[bi, :, hh]
      memory = []  # gru_memory: h_i per segment, stepped at each segment change
      if kind == "gru_memory":
        knorm = np.sqrt((kk[real] ** 2).sum(0)) + 1e-6
        ktv = kk[real].T @ vv[real]
        state, last = np.zeros((D, D)), -1
      for t in range(q_len):
        qt = q[bi, t, hh]
        if kind == "linear":
          phi = lambda x: np.where(x > 0, x + 1, np.exp(x))  # noqa: E731
          kp = phi(kk[real])
          den = phi(qt) @ kp.sum(0)
          out[bi, t, hh] = (phi(qt) @ (kp.T @ vv[real])) / den if den > 0 else 0
          continue
        if kind == "local_window":
          w = min(s, len(kk))
          centre = (2 * t + 1) * len(kk) // (2 * q_len)
          start = min(max(centre - w // 2, 0), len(kk) - w)
          idx = [j for j in range(start, start + w) if mask[bi, j]]
          out[bi, t, hh] = _softmax_read(qt, kk[idx], vv[idx])
          continue
        i = min(m - 1, t * m // q_len)
        keys, vals = kk[segs[i]], vv[segs[i]]
        if kind == "pooled":  # one mean key/value per other segment that holds a token
          others = [j for j in range(m) if j != i and len(segs[j])]
          keys = np.concatenate([keys, [kk[segs[j]].mean(0) for j in others]]) if others else keys
          vals = np.concatenate([vals, [vv[segs[j]].mean(0) for j in others]]) if others else vals
        read = _softmax_read(qt, keys, vals)
        if kind == "gru_memory":
          if i != last:
            x = (ktv - kk[segs[i]].T @ vv[segs[i]]) / knorm  # scaled per value feature
            gx, gh = x @ gru["wx"] + gru["bx"], state @ gru["wh"]
            sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
            r, z = sig(gx[:, :D] + gh[:, :D]), sig(gx[:, D:2 * D] + gh[:, D:2 * D])
            n = np.tanh(gx[:, 2 * D:] + r * gh[:, 2 * D:])
            state, last = (1 - z) * n + z * state, i
          read = read + qt @ state
        out[bi, t, hh] = read
  return out


def _module(kind, s):
  config = ModelConfig(arch="t5", vocab_size=8, d_model=HEADS * D, num_heads=HEADS, d_kv=D, d_ff=8,
                       num_encoder_layers=1, num_decoder_layers=1, cross_attention=kind,
                       segment_size=s, gen_len=Q_LEN, dropout_rate=0.0, dtype="float64")
  return CrossAttention(config)


@pytest.mark.parametrize("s", [4, 8])
@pytest.mark.parametrize("kind", ALTERNATIVE_KINDS)
def test_alternative_kind_equals_its_definition(kind, s):
  q, k, v, mask = _inputs()
  with jax.enable_x64(True):
    module = _module(kind, s)
    args = tuple(jnp.asarray(x) for x in (q, k, v)) + (jnp.asarray(mask),)
    params = nn.unbox(module.init(jax.random.key(0), *args, method=CrossAttention.attend))
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
    got = np.asarray(module.apply(params, *args, method=CrossAttention.attend))
  gru = None
  if kind == "gru_memory":
    p = params["params"]
    gru = {"wx": np.asarray(p["gru_wx"]), "bx": np.asarray(p["gru_bx"]) + 0.3,  # a bias that acts
           "wh": np.asarray(p["gru_wh"])}
    with jax.enable_x64(True):
      params = {"params": dict(p, gru_bx=jnp.asarray(gru["bx"]))}
      got = np.asarray(module.apply(params, *args, method=CrossAttention.attend))
  np.testing.assert_allclose(got, reference(kind, q, k, v, mask, s, gru), atol=1e-10, rtol=0)


def test_alternative_kinds_reject_faithful_mode():
  for kind in ALTERNATIVE_KINDS:
    with pytest.raises(ValueError, match="not part of the authors' code"):
      tiny(cross_attention=kind, faithful=True)


def test_local_window_and_linear_ignore_what_lies_under_the_padding():
  """What the mask hides changes nothing (ids under the padding replaced)."""
  ids, mask, dec = batch(enc_len=24)
  mask[:, 20:] = 0
  other = ids.copy()
  other[:, 20:] = 7
  for kind in ALTERNATIVE_KINDS:
    config = tiny(cross_attention=kind, segment_size=8)
    params = init_params(config, jax.random.key(7))
    model = build_model(config)
    np.testing.assert_allclose(model.apply({"params": params}, ids, mask, dec),
                               model.apply({"params": params}, other, mask, dec), atol=1e-6, rtol=0)


def test_gru_memory_trains_its_cell():
  """Every GRU parameter gets a gradient through the decoder's loss."""
  config = tiny(cross_attention="gru_memory", segment_size=4)
  params = init_params(config, jax.random.key(3))
  ids, mask, dec = batch()
  model = build_model(config)
  grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, ids, mask, dec)[:, :, 5]))(params)
  att = grads["decoder"]["block_0"]["layer_1"]["EncDecAttention"]
  for name in ("gru_wx", "gru_bx", "gru_wh"):
    assert float(jnp.max(jnp.abs(att[name]))) > 0, name
  assert not dataclasses.replace(config).uses_raf  # no RAF parameters for this kind
  assert "SNN_kv" not in att
