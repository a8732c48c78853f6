"""SRformer cross-attention: the authors' fixtures, cache/teacher-forcing identity, limits, errors."""

import dataclasses
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from srformer_jax import CROSS_ATTENTION_KINDS, ModelConfig, build_model, init_params
from srformer_jax import cost
from srformer_jax.attention import segment_of, segment_plan
from srformer_jax.config import ALTERNATIVE_KINDS, RAF_KINDS
from srformer_jax.convert import state_dict_to_params
from srformer_jax.decoding import DecodeConfig, generate, stepwise_logits
from tests import checks

FIXTURES = [f"srformer_{a}_official_s{s}.npz" for a in ("t5", "bart") for s in (8, 16)]
FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")  # see its README


def tiny(arch="t5", **kw):
  base = dict(arch=arch, vocab_size=64, d_model=32, num_heads=4, d_kv=8, d_ff=48, num_encoder_layers=2,
              num_decoder_layers=2, relative_attention_num_buckets=8, dropout_rate=0.0,
              pad_token_id=0 if arch == "t5" else 1, eos_token_id=1 if arch == "t5" else 2,
              decoder_start_token_id=0 if arch == "t5" else 2, max_position_embeddings=128,
              raf_threshold_init=0.05, raf_leak_init=0.4, raf_weight_init_std=0.5, raf_gate_init=0.5)
  base.update(kw)
  return ModelConfig(**base)


def batch(enc_len=37, dec_len=12, b=3, vocab=64, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, (b, enc_len))
  mask = np.ones((b, enc_len), np.int32)
  mask[1, 20:] = 0  # row 1: whole segments of padding for small s
  dec = rng.integers(3, vocab, (b, dec_len))
  return ids, mask, dec


@pytest.mark.parametrize("fixture", FIXTURES)
def test_official_fixtures(fixture):
  z = np.load(os.path.join(FIXTURE_DIR, fixture))
  config = ModelConfig.from_hf(json.loads(str(z["config"])), cross_attention="srformer", faithful=True)
  params, initialised = state_dict_to_params(
      {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}, config)
  assert initialised == []  # RAF weights come from the fixture
  model = build_model(config)
  ids, mask, dec = z["enc_ids"], z["enc_mask"], z["dec_ids"]
  train = model.apply({"params": params}, ids, mask, dec)
  np.testing.assert_allclose(np.asarray(train), z["train_logits"], atol=1e-4, rtol=0)
  steps = stepwise_logits(model, params, ids, mask, dec, max_len=config.gen_len)
  np.testing.assert_allclose(np.asarray(steps), z["step_logits"], atol=1e-4, rtol=0)


def _check_cache_identity(config, ids, mask, dec):
  checks.cached_equals_teacher_forced(config, init_params(config, jax.random.key(1)), ids, mask, dec)


@pytest.mark.parametrize("arch", ["t5", "bart"])
@pytest.mark.parametrize("kind,faithful", [(k, f) for k in CROSS_ATTENTION_KINDS for f in (False, True)
                                           if not (f and k in ALTERNATIVE_KINDS)])
def test_cached_decoding_equals_teacher_forcing(arch, kind, faithful):
  # s=4 < d_kv=8 exercises the V W route of the RAF input (T5), s=8 the direct one
  s = 4 if faithful else 8
  config = tiny(arch, cross_attention=kind, segment_size=s, gen_len=12, faithful=faithful)
  _check_cache_identity(config, *batch())


def test_gated_kind_starts_as_segmented_attention_and_opens_its_gate():
  """srformer_gated with its gate at 0 is segmented attention (same parameters otherwise); the gate
  gets a gradient there (RAF's linear does not yet), and an open gate adds the recurrent term."""
  ids, mask, dec = batch()
  gated = tiny(cross_attention="srformer_gated", segment_size=8, raf_gate_init=0.0)
  params = init_params(gated, jax.random.key(3))
  seg_params = jax.tree_util.tree_map_with_path(lambda p, x: x, params)
  for layer in seg_params["decoder"].values():
    if "layer_1" in layer:
      for name in ("SNN_kv", "threshold", "leak", "gate"):
        del layer["layer_1"]["EncDecAttention"][name]
  apply = lambda cfg, p: build_model(cfg).apply({"params": p}, ids, mask, dec)  # noqa: E731
  want = apply(dataclasses.replace(gated, cross_attention="segmented"), seg_params)
  np.testing.assert_allclose(np.asarray(apply(gated, params)), np.asarray(want), atol=1e-6, rtol=0)

  grads = jax.grad(lambda p: jnp.sum(apply(gated, p)[:, :, 5]))(params)
  att = grads["decoder"]["block_0"]["layer_1"]["EncDecAttention"]
  assert float(jnp.min(jnp.abs(att["gate"]))) > 0  # every head's gate can open
  assert float(jnp.max(jnp.abs(att["SNN_kv"]["kernel"]))) == 0  # a closed gate passes nothing back
  opened = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.5 if jax.tree_util.keystr(p).endswith("['gate']") else x, params)
  assert float(jnp.max(jnp.abs(apply(gated, opened) - want))) > 1e-3


def test_more_segments_than_decoder_positions_warns_and_still_agrees():
  config = tiny(cross_attention="srformer", segment_size=4, gen_len=6)
  ids, mask, dec = batch(enc_len=37, dec_len=6)  # 10 segments, 6 positions: 4 never read
  with pytest.warns(UserWarning, match="never read"):
    _check_cache_identity(config, ids, mask, dec)


def _reference_decoding(q, k, v, mask, kernel, threshold, leak, gen_len, s):
  """The SRformer decoding rule written out step by step in numpy (default mode, T5: unscaled
  scores): RAF steps on W (K^T V - K_i^T V_i) each time the segment changes. Returns [b, t, h, e]."""
  b, k_len, h, d = k.shape
  m = -(-k_len // s)
  pad = ((0, 0), (0, m * s - k_len), (0, 0), (0, 0))
  k = np.pad(np.where(mask[..., None, None], k, 0), pad)
  v = np.pad(np.where(mask[..., None, None], v, 0), pad)
  mask = np.pad(mask, ((0, 0), (0, m * s - k_len)))
  knorm = np.sqrt((k ** 2).sum(1)) + 1e-6  # [b, h, d]
  kv_tot = np.einsum("bkhd,bkhe->bhde", k, v)
  mem, out, last, ctxs = np.zeros_like(kv_tot), None, -1, []
  for t in range(q.shape[1]):
    i = min(m - 1, t * m // gen_len)
    ki, vi, mi = k[:, i * s:(i + 1) * s], v[:, i * s:(i + 1) * s], mask[:, i * s:(i + 1) * s]
    if i != last:
      x = (kv_tot - np.einsum("bkhd,bkhe->bhde", ki, vi)) @ kernel
      mem = leak * mem + x
      y = mem / threshold - 1
      mem = mem - threshold * (y > 0)
      out, last = np.maximum(y, 0), i
    scores = np.einsum("bhd,bkhd->bhk", q[:, t], ki)
    scores = np.where(mi[:, None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True, initial=-1e300))
    probs = np.where(mi[:, None], probs, 0)
    probs = probs / np.maximum(probs.sum(-1, keepdims=True), 1e-300)
    ctxs.append(np.einsum("bhk,bkhe->bhe", probs, vi) + np.einsum("bhd,bhde->bhe", q[:, t], out) / knorm)
  return np.stack(ctxs, 1)


def test_decoding_steps_raf_once_per_segment_change_even_past_gen_len():
  # 10 segments for gen_len 6: decoding skips segments, and past gen_len it reads the last one,
  # which no position < gen_len reads. s=4 < d_kv=8, so the module takes its V W route.
  from srformer_jax.attention import CrossAttention
  config = tiny(cross_attention="srformer", segment_size=4, gen_len=6, dtype="float64")
  rng = np.random.default_rng(0)
  b, k_len, steps = 2, 37, 9
  mask = np.ones((b, k_len), bool)
  mask[1, 20:] = False  # row 1: segments 5..9 all padding
  with jax.enable_x64(True):
    enc = jnp.asarray(rng.normal(size=(b, k_len, config.d_model)))
    xs = jnp.asarray(rng.normal(size=(b, steps, config.d_model)))
    attn = CrossAttention(config)
    variables = nn.unbox(attn.init(jax.random.key(0), xs, enc, mask))
    with pytest.warns(UserWarning, match="never read"):
      state = attn.apply(variables, enc, mask, method=attn.init_state)
    outs = []
    for t in range(steps):
      out, state = attn.apply(variables, xs[:, t:t + 1], state, t, method=attn.step)
      outs.append(out)
    q = attn.apply(variables, xs, method=attn.project_q)
    k, v = attn.apply(variables, enc, method=attn.project_kv)
    p = variables["params"]
    ctx = _reference_decoding(np.asarray(q), np.asarray(k), np.asarray(v), mask,
                              np.asarray(p["SNN_kv"]["kernel"]), float(p["threshold"][0]),
                              float(p["leak"][0]), config.gen_len, config.segment_size)
    want = attn.apply(variables, jnp.asarray(ctx), method=attn.project_out)
    np.testing.assert_allclose(np.concatenate(outs, 1), want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("arch", ["t5", "bart"])
@pytest.mark.parametrize("kind", ["srformer", "segmented", "xl", "no_raf", "no_norm"])
def test_one_segment_is_full_attention(arch, kind):
  ids, mask, dec = batch(enc_len=29)
  full_cfg = tiny(arch, cross_attention="full")
  params = init_params(tiny(arch, cross_attention="srformer"), jax.random.key(2))
  base = build_model(full_cfg).apply({"params": params}, ids, mask, dec)
  for s in (29, 32, 100):  # s >= k: one segment, so K^T V - K_0^T V_0 = 0 and RAF outputs 0
    out = build_model(tiny(arch, cross_attention=kind, segment_size=s)).apply({"params": params}, ids, mask, dec)
    chex.assert_trees_all_close(out, base, atol=1e-5, rtol=0)


def test_segment_rule_and_plan():
  np.testing.assert_array_equal(segment_of(np.arange(8), 8, 4), [0, 0, 1, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(segment_of(np.arange(5), 5, 3), [0, 0, 1, 1, 2])  # floor(t*m/q)
  np.testing.assert_array_equal(segment_of(np.arange(3), 3, 5), [0, 1, 3])
  plan = segment_plan(5, 3)
  assert plan.group_size == 2
  np.testing.assert_array_equal(plan.group_index, [[0, 1], [2, 3], [4, 0]])
  np.testing.assert_array_equal(plan.flat_pos, [0, 1, 2, 3, 4])
  assert segment_plan(3, 5).active.tolist() == [True, True, False, True, False]


@pytest.mark.parametrize("arch", ["t5", pytest.param("bart", marks=pytest.mark.slow)])
def test_raf_gradients_finite_and_nonzero(arch):
  config = tiny(arch, cross_attention="srformer", segment_size=8)
  ids, mask, dec = batch()
  model = build_model(config)
  params = init_params(config, jax.random.key(3))
  w = jax.random.normal(jax.random.key(4), (3, 12, 64))

  def loss(p):
    return jnp.sum(model.apply({"params": p}, ids, mask, dec) * w)

  grads = jax.grad(loss)(params)
  chex.assert_tree_all_finite(grads)
  layer = (grads["decoder"]["block_0"]["layer_1"]["EncDecAttention"] if arch == "t5"
           else grads["model"]["decoder"]["layers_0"]["encoder_attn"])
  for name in ("SNN_kv", "threshold", "leak"):
    g = layer[name]["kernel"] if name == "SNN_kv" else layer[name]
    assert float(jnp.max(jnp.abs(g))) > 0, name


BF16_EPS = 2.0 ** -8  # bfloat16's relative precision (8 significand bits)


@pytest.mark.parametrize("kind", CROSS_ATTENTION_KINDS)
def test_bf16_forward_is_the_float32_forward_within_bfloat16_rounding(kind):
  """bfloat16 compute (float32 parameters) gives the float32 logits up to its rounding: over the
  tiny model's logits (|logit| <= ~5) the mean difference within 4 bfloat16 epsilons and the largest
  within 32 (measured: ~1.5-2.5 and ~7-17 over the kinds; a skipped or mis-cast term is far beyond)."""
  f32 = tiny(cross_attention=kind, segment_size=8)
  ids, mask, dec = batch()
  params = init_params(f32, jax.random.key(5))
  want = np.asarray(build_model(f32).apply({"params": params}, ids, mask, dec))
  logits = build_model(dataclasses.replace(f32, dtype="bfloat16")).apply({"params": params}, ids, mask, dec)
  assert logits.dtype == jnp.float32
  diff = np.abs(np.asarray(logits) - want)
  assert diff.mean() <= 4 * BF16_EPS and diff.max() <= 32 * BF16_EPS, (diff.mean(), diff.max())


@pytest.mark.parametrize("faithful", [False, True])
def test_all_padding_segments_and_rows_are_finite(faithful):
  config = tiny(cross_attention="srformer", segment_size=4, faithful=faithful)
  ids, mask, dec = batch()
  mask[2] = 0  # a row that is entirely padding
  params = init_params(config, jax.random.key(6))
  model = build_model(config)
  chex.assert_tree_all_finite(model.apply({"params": params}, ids, mask, dec))
  chex.assert_tree_all_finite(stepwise_logits(model, params, ids, mask, dec))


def test_padding_does_not_change_segment_softmax():
  """Default mode: what lies under the padding mask has no effect on any kind."""
  ids, mask, dec = batch(enc_len=24)
  mask[:, 20:] = 0
  ids_b = ids.copy()
  ids_b[:, 20:] = 7  # other tokens under the padding
  for kind in ("segmented", "srformer", "xl", "no_raf"):
    config = tiny(cross_attention=kind, segment_size=8)
    params = init_params(config, jax.random.key(7))
    model = build_model(config)
    a = model.apply({"params": params}, ids, mask, dec)
    b = model.apply({"params": params}, ids_b, mask, dec)
    chex.assert_trees_all_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["srformer", "full", "xl", "pooled"])
def test_beam_search_state_reordering(kind):
  """Beam scores must equal the teacher-forced score of the returned sequence (every beam reads
  its own input's cross-attention state, held once per input)."""
  config = tiny(cross_attention=kind, segment_size=8, gen_len=10)
  params = init_params(config, jax.random.key(8))
  model = build_model(config)
  ids, mask, _ = batch()
  dc = DecodeConfig(max_len=10, num_beams=3, length_penalty=0.0, early_stopping=False)
  seqs, scores = jax.jit(generate, static_argnums=(0, 4, 5))(model, params, ids, mask, dc, True)
  dec = np.concatenate([np.full((3, 1), config.decoder_start_token_id), np.asarray(seqs)[:, :-1]], 1)
  logp = jax.nn.log_softmax(model.apply({"params": params}, ids, mask, dec))
  tok_lp = np.take_along_axis(np.asarray(logp), np.asarray(seqs)[..., None], -1)[..., 0]
  for row in range(3):
    seq = np.asarray(seqs[row])
    eos = np.nonzero(seq == config.eos_token_id)[0]
    n = eos[0] + 1 if len(eos) else len(seq)
    np.testing.assert_allclose(float(scores[row]), tok_lp[row, :n].sum(), atol=1e-4)


@pytest.mark.parametrize("kind,schedule", [("srformer", "padded"), ("srformer", "length"), ("xl", "padded"),
                                           ("segmented", "padded"), ("recurrent_only", "padded"), ("full", "padded")])
def test_cross_step_one_row_equals_each_of_several_rows(kind, schedule):
  """The cross-attention step has two layouts: one decoding row per input (greedy, the beam axis
  left out for speed) and r rows per input (beam search). Every row of an input that is fed the
  same tokens gets the same logits as the single row."""
  config = tiny(cross_attention=kind, segment_size=8, gen_len=6, segment_schedule=schedule)
  params = init_params(config, jax.random.key(3))
  model = build_model(config)
  ids, mask, dec = batch(dec_len=6)
  enc = model.apply({"params": params}, ids, mask, method=model.encode)
  step = jax.jit(lambda c, t: model.apply({"params": params}, t, c, method=model.decode_step))
  one = model.apply({"params": params}, enc, mask, 6, method=model.init_cache)
  two = model.apply({"params": params}, enc, mask, 6, 2, method=model.init_cache)
  for t in range(6):
    tok = jnp.asarray(dec[:, t], jnp.int32)
    a, one = step(one, tok)
    b, two = step(two, jnp.repeat(tok, 2))  # rows grouped by input
    np.testing.assert_allclose(np.asarray(b).reshape(3, 2, -1), np.repeat(np.asarray(a)[:, None], 2, 1),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # compiles every kind at k = 1024 (~40 s); benchmarks/cross_attention_cost.py reports the table
def test_cross_attention_flops_table():
  rows = cost.table_1(q_len=128, k_len=1024, d=64, segment_sizes=(64, 16, 8))
  print("\n" + cost.format_table(rows))
  by = {(r["kind"], r["s"]): r for r in rows}
  q, k, d = 128, 1024, 64
  for r in rows:  # XLA's count is the analytic matmul count plus elementwise work, which the
    # analytic count leaves out: a few flops per element of the softmax scores and, for SRformer,
    # of every segment's d x d RAF state and of K (||K||). (RAF's outputs are computed outside its
    # loop, so XLA, which counts a loop body once, sees that work for every segment.)
    m = k // r["s"]
    elements = {"full": q * k, "segmented": q * r["s"], "srformer": q * r["s"] + m * d * d + k * d}[r["kind"]]
    assert r["analytic"] <= r["flops"] <= r["analytic"] + 8 * elements, r
  assert by[("segmented", 64)]["ratio"] <= 0.07
  # RAF's d x d linear and the K_i^T V_i products cost ~4 k d^2: at d = s = 64 and q = 128 that is
  # 0.5 of full attention's 4 q k d by itself, so srformer lands at ~0.6 (0.59 in its matmuls, the
  # rest elementwise; see README, Table 1).
  assert 0.55 <= by[("srformer", 64)]["ratio"] <= 0.62
  # the V W route keeps small segments about as cheap as large ones (the direct route's 2 m d^3
  # would be 4x the s = 64 cost at s = 8)
  assert by[("srformer", 8)]["flops"] <= 1.10 * by[("srformer", 64)]["flops"]


def test_decode_step_cost_does_not_grow_with_input_length():
  sr = [cost.decode_step_cost("srformer", k, d=64, s=64)["flops"] for k in (256, 1024, 4096)]
  full = [cost.decode_step_cost("full", k, d=64, s=64)["flops"] for k in (256, 1024, 4096)]
  assert sr[0] == sr[1] == sr[2]
  assert full[2] > 3.5 * full[1] > 3.5 * 3.5 * full[0] * 0.9


def test_config_errors():
  with pytest.raises(ValueError, match="segment_size must be a positive"):
    tiny(cross_attention="srformer", segment_size=0)
  with pytest.raises(ValueError, match="segment_size must be a positive"):
    tiny(cross_attention="srformer", segment_size=-8)
  with pytest.raises(ValueError, match="unknown cross_attention 'sparse'"):
    tiny(cross_attention="sparse")
  with pytest.raises(ValueError, match="raf_threshold_init"):
    tiny(cross_attention="srformer", raf_threshold_init=0.0)
  for kind in RAF_KINDS:
    assert tiny(cross_attention=kind).uses_raf


@pytest.mark.parametrize("kind", ["full", "srformer"])
def test_fresh_t5_is_initialised_as_hf_t5(kind):
  """T5 never scales attention scores; HF folds d_kv**-0.5 into q's init. A fresh model must too, or
  every softmax starts saturated (score std ~sqrt(d_kv)) and a model trained from scratch barely
  learns to read its input. Checks the init stds and that attention scores start with std ~1."""
  config = ModelConfig(arch="t5", vocab_size=512, d_model=256, num_heads=4, d_kv=64, d_ff=512,
                       num_encoder_layers=1, num_decoder_layers=1, cross_attention=kind, segment_size=8)
  params = init_params(config, jax.random.key(0))
  enc = params["encoder"]["block_0"]["layer_0"]["SelfAttention"]
  cross = params["decoder"]["block_0"]["layer_1"]["EncDecAttention"]
  d, dk, inner = config.d_model, config.d_kv, config.num_heads * config.d_kv
  for attn in (enc, cross):
    for name, want in (("q", (d * dk) ** -0.5), ("k", d ** -0.5), ("v", d ** -0.5), ("o", inner ** -0.5)):
      np.testing.assert_allclose(float(np.std(attn[name]["kernel"])), want, rtol=0.05, err_msg=name)
  np.testing.assert_allclose(float(np.std(enc["relative_attention_bias"]["embedding"])), d ** -0.5, rtol=0.3)
  x = jax.random.normal(jax.random.key(1), (4, 64, d))  # RMS-normalised inputs, as each layer sees them
  q = (x @ cross["q"]["kernel"]).reshape(4, 64, config.num_heads, dk)
  k = (x @ cross["k"]["kernel"]).reshape(4, 64, config.num_heads, dk)
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k)
  assert 0.7 < float(jnp.std(scores)) < 1.4, float(jnp.std(scores))
