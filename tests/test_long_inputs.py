"""Long inputs: blockwise attention = dense attention (forward, gradients, dropout, whole models),
remat changes nothing, and the blockwise temporaries are not quadratic in the length."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srformer_jax import ModelConfig, build_model, init_params, layers
from srformer_jax.attention import blockwise
from srformer_jax.attention.self_attention import resolve_impl
from srformer_jax.config import REMAT_POLICY_NAMES


def dense_reference(q, k, v, mask, rel_bias, causal, keep_scale=None):
  """The dense path's attention (the stacks' additive mask + a Toeplitz bias); keep_scale
  [b, h, q, k] multiplies the probabilities (dropout with a given mask)."""
  t, s = q.shape[1], k.shape[1]
  allowed = mask[:, None, None, :]
  if causal:
    allowed = allowed & jnp.tril(jnp.ones((t, s), bool))[None, None]
  bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)
  if rel_bias is not None:
    idx = np.arange(s)[None, :] - np.arange(t)[:, None] + t - 1
    bias = rel_bias[:, idx][None] + bias
  if keep_scale is None:
    return layers.dot_product_attention(q, k, v, bias)
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1) * keep_scale, v)


def inputs(t, b=3, h=2, d=4, seed=0, rel=True, dtype=jnp.float32):
  r = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(r.normal(size=(b, t, h, d)), dtype) for _ in range(3))
  mask = np.ones((b, t), bool)
  mask[1, t // 2:] = False  # a padded row
  mask[2, :] = False  # an all-padding row
  rel_bias = jnp.asarray(r.normal(size=(h, 2 * t - 1)), jnp.float32) if rel else None
  return q, k, v, jnp.asarray(mask), rel_bias


def loss_and_grads(fn, q, k, v, rel_bias, seed=1):
  """sum(out * w) and its gradients w.r.t. q, k, v (and the bias)."""
  w = jnp.asarray(np.random.default_rng(seed).normal(size=q.shape), q.dtype)
  argnums = (0, 1, 2) if rel_bias is None else (0, 1, 2, 3)
  f = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a) * w), argnums=argnums))
  return f(q, k, v, rel_bias)


@pytest.mark.parametrize("t,block,causal,rel", [
    (37, 8, False, True),   # T5 encoder: bias + padding, block does not divide t
    (32, 8, False, False),  # BART encoder: no bias, block divides t
    (33, 16, True, True),   # T5 decoder self-attention: causal, block does not divide
    (24, 8, True, False),   # BART decoder self-attention: causal, block divides
    (20, 64, False, True),  # block larger than t: one block
])
def test_blockwise_equals_dense_forward_and_gradients(t, block, causal, rel):
  q, k, v, mask, rel_bias = inputs(t, rel=rel)
  got = loss_and_grads(lambda q, k, v, r: blockwise.blockwise_attention(
      q, k, v, mask, rel_bias=r, causal=causal, block_size=block), q, k, v, rel_bias)
  want = loss_and_grads(lambda q, k, v, r: dense_reference(q, k, v, mask, r, causal), q, k, v, rel_bias)
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
  out = blockwise.blockwise_attention(q, k, v, mask, rel_bias=rel_bias, causal=causal, block_size=block)
  np.testing.assert_allclose(out, dense_reference(q, k, v, mask, rel_bias, causal), atol=1e-5, rtol=0)
  # the all-padding row is what dense makes of it: a uniform average over every key
  np.testing.assert_allclose(out[2], jnp.broadcast_to(v[2].mean(axis=0), out[2].shape), atol=1e-5)


def test_blockwise_equals_dense_in_float64():
  with jax.enable_x64(True):
    q, k, v, mask, rel_bias = inputs(29, dtype=jnp.float64)
    got = loss_and_grads(lambda q, k, v, r: blockwise.blockwise_attention(
        q, k, v, mask, rel_bias=r, block_size=8), q, k, v, rel_bias)
    want = loss_and_grads(lambda q, k, v, r: dense_reference(q, k, v, mask, r, False), q, k, v, rel_bias)
    assert got[1][0].dtype == jnp.float64
    chex.assert_trees_all_close(got[:1] + (got[1][:3],), want[:1] + (want[1][:3],), atol=1e-12, rtol=0)
    chex.assert_trees_all_close(got[1][3], want[1][3], atol=1e-5, rtol=0)  # the bias is float32


def test_blockwise_dropout_is_dense_dropout_with_the_same_mask():
  t, block, rate = 21, 8, 0.3
  q, k, v, mask, rel_bias = inputs(t)
  rng = jax.random.key(7)
  spec = blockwise._Spec(t, t, block, block, False, rate)
  keep = jnp.concatenate([jnp.concatenate([
      blockwise.dropout_keep(rng, rate, i, j, (q.shape[0], q.shape[2], block, block))
      for j in range(spec.nk)], axis=3) for i in range(spec.nq)], axis=2)[:, :, :t, :t]
  scale = jnp.where(keep, 1.0 / (1.0 - rate), 0.0)
  got = loss_and_grads(lambda q, k, v, r: blockwise.blockwise_attention(
      q, k, v, mask, rel_bias=r, block_size=block, dropout_rate=rate, dropout_rng=rng), q, k, v, rel_bias)
  want = loss_and_grads(lambda q, k, v, r: dense_reference(q, k, v, mask, r, False, scale),
                        q, k, v, rel_bias)
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
  # the masks keep each probability with 1 - rate, independently per block
  big = blockwise.dropout_keep(rng, rate, 0, 0, (64, 64, 64))
  n = big.size
  assert abs(float(big.mean()) - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / n)
  other = blockwise.dropout_keep(rng, rate, 0, 1, (64, 64, 64))
  assert float(jnp.mean(big == other)) < 0.7  # different blocks, different masks
  # rate 0 (or no rng) is the deterministic attention
  plain = blockwise.blockwise_attention(q, k, v, mask, rel_bias=rel_bias, block_size=block)
  np.testing.assert_array_equal(plain, blockwise.blockwise_attention(
      q, k, v, mask, rel_bias=rel_bias, block_size=block, dropout_rate=rate, dropout_rng=None))


def test_blockwise_memory_is_not_quadratic():
  """XLA memory analysis of forward + backward: dense temporaries grow 4x per doubling of t,
  blockwise ones about 2x (they are O(t), the block's scores are fixed)."""

  def temp_bytes(fn, t):
    x = jax.ShapeDtypeStruct((1, t, 2, 16), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, t), bool)
    rel = jax.ShapeDtypeStruct((2, 2 * t - 1), jnp.float32)
    f = jax.grad(lambda q, k, v, m, r: jnp.sum(fn(q, k, v, m, r)), argnums=(0, 1, 2, 4))
    return jax.jit(f).lower(x, x, x, mask, rel).compile().memory_analysis().temp_size_in_bytes

  dense = lambda q, k, v, m, r: dense_reference(q, k, v, m, r, False)
  flash = lambda q, k, v, m, r: blockwise.blockwise_attention(q, k, v, m, rel_bias=r, block_size=256)
  d1, d2 = temp_bytes(dense, 2048), temp_bytes(dense, 4096)
  b1, b2 = temp_bytes(flash, 2048), temp_bytes(flash, 4096)
  assert d2 > 3.5 * d1 and d2 > 4096 * 4096 * 2 * 4  # at least one [h, t, t] float32 tensor
  assert b2 < 2.5 * b1 and b2 < d2 / 20


# ------------------------------------------------------------------------------------------------
# whole models


def tiny(arch, **kw):
  base = dict(arch=arch, vocab_size=64, d_model=32, num_heads=4, d_kv=8, d_ff=48, num_encoder_layers=2,
              num_decoder_layers=1, relative_attention_num_buckets=8, relative_attention_max_distance=16,
              dropout_rate=0.0, pad_token_id=0 if arch == "t5" else 1, max_position_embeddings=128,
              cross_attention="srformer", segment_size=8, gen_len=12, raf_weight_init_std=0.5)
  base.update(kw)
  return ModelConfig(**base)


def model_batch(enc_len=37, dec_len=12, b=3, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.ones((b, enc_len), np.int32)
  mask[1, 20:] = 0
  mask[2, :] = 0  # an all-padding input
  return rng.integers(3, 64, (b, enc_len)), mask, rng.integers(3, 64, (b, dec_len))


def logits_and_grads(config, params, batch):
  ids, mask, dec = batch
  model = build_model(config)
  f = lambda p: model.apply({"params": p}, ids, mask, dec)
  logits, vjp = jax.vjp(f, params)
  w = jnp.asarray(np.random.default_rng(1).normal(size=logits.shape), logits.dtype)
  return logits, vjp(w)[0]


@pytest.fixture(scope="module", params=["t5", "bart"])
def dense_reference_model(request):
  """(float64 config, params, batch, dense logits and gradients), shared by the model tests."""
  with jax.enable_x64(True):
    config = tiny(request.param, dtype="float64", attention_impl="dense")
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), init_params(config, jax.random.key(0)))
    batch = model_batch()
    return config, params, batch, jax.jit(lambda p: logits_and_grads(config, p, batch))(params)


@pytest.mark.parametrize("overrides", [
    # 37 source and 12 target tokens in blocks of 8: ragged blocks in the encoder and the decoder
    dict(attention_impl="blockwise", attention_block_size=8, remat_policy="full", raf_remat=True),
    pytest.param(dict(attention_impl="blockwise", attention_block_size=16), marks=pytest.mark.slow),
    pytest.param(dict(remat_policy="dots"), marks=pytest.mark.slow),
], ids=["blockwise_remat", "blockwise", "dense_remat_dots"])
def test_model_equals_dense(dense_reference_model, overrides):
  config, params, batch, (want_logits, want_grads) = dense_reference_model
  with jax.enable_x64(True):
    cfg = dataclasses.replace(config, **overrides)
    logits, grads = jax.jit(lambda p: logits_and_grads(cfg, p, batch))(params)
  assert logits.dtype == jnp.float64
  chex.assert_trees_all_close(logits, want_logits, atol=1e-10, rtol=0)
  # T5's bias table is float32 in both paths (compute_bias casts), so its gradient is float32-exact
  chex.assert_trees_all_close(grads, want_grads, atol=1e-5, rtol=0)


def test_blockwise_model_float32_and_dropout():
  config = tiny("t5", dropout_rate=0.2)
  flash = dataclasses.replace(config, attention_impl="blockwise", attention_block_size=8)
  params = init_params(config, jax.random.key(0))
  ids, mask, dec = model_batch()

  @jax.jit
  def run(rng):
    apply = lambda cfg, **kw: build_model(cfg).apply({"params": params}, ids, mask, dec, **kw)
    return (apply(config), apply(flash),
            apply(flash, deterministic=False, rngs={"dropout": rng}))

  dense, det, dropped = run(jax.random.key(3))
  np.testing.assert_allclose(det, dense, atol=1e-4, rtol=0)
  assert not np.allclose(dropped, det, atol=1e-3)  # the dropout rng reaches the blockwise path


def test_resolve_impl():
  t5 = tiny("t5", dtype="bfloat16")
  assert resolve_impl(t5, 1024, True, False, "cpu") == "dense"
  assert resolve_impl(t5, 1025, True, False, "cpu") == "blockwise"
  assert resolve_impl(t5, 16384, True, True, "gpu") == "blockwise"  # T5 bias: no cuDNN
  bart = tiny("bart", dtype="bfloat16")
  assert resolve_impl(bart, 1024, False, False, "gpu") == "cudnn"
  assert resolve_impl(bart, 4096, False, True, "gpu") == "blockwise"  # attention dropout on
  assert resolve_impl(dataclasses.replace(bart, dtype="float32"), 4096, False, False, "gpu") == "blockwise"
  with pytest.raises(ValueError, match="needs a GPU"):
    resolve_impl(dataclasses.replace(bart, attention_impl="cudnn"), 64, False, False, "cpu")
  assert set(layers.REMAT_POLICIES) | {"none"} == set(REMAT_POLICY_NAMES)
  with pytest.raises(ValueError, match="attention_impl"):
    tiny("t5", attention_impl="flash")
  with pytest.raises(ValueError, match="remat_policy"):
    tiny("t5", remat_policy="some")
