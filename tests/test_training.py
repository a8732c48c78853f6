"""Training, checkpoints, data handling and evaluation (all on CPU; 8 fake devices from conftest)."""

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import base
from srformer_jax import data, eval_lib, run_setup, sharding, train_lib
from srformer_jax.checkpoint import Checkpointer
from srformer_jax.config import ModelConfig
from srformer_jax.model import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(**kw):
  c = dict(arch="t5", vocab_size=64, d_model=32, num_heads=4, d_kv=8, d_ff=64, num_encoder_layers=2,
           num_decoder_layers=2, relative_attention_num_buckets=8, dropout_rate=0.1,
           cross_attention="srformer", segment_size=8, gen_len=8)
  c.update(kw)
  return ModelConfig(**c)


def random_batch(b=8, s=32, t=8, vocab=64, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.ones((b, s), np.int32)
  mask[::3, 20:] = 0
  lmask = np.ones((b, t), np.int32)
  lmask[1::2, 5:] = 0
  return {"input_ids": rng.integers(2, vocab, (b, s)).astype(np.int32), "attention_mask": mask,
          "labels": rng.integers(2, vocab, (b, t)).astype(np.int32), "label_mask": lmask}


def small_cfg(**train):
  cfg = base.base_config()
  cfg.train.update(dict(learning_rate=1e-3, num_steps=10, warmup_steps=2), **train)
  return cfg


def _trainer(model, cfg, mesh_shape, devices=None, grad_accum=1):
  tx, schedule = train_lib.make_optimizer(cfg)
  mesh = sharding.make_mesh(mesh_shape, devices)
  return train_lib.Trainer(model, tx, schedule, mesh, grad_accum=grad_accum)


@pytest.mark.parametrize("attention", ["auto", pytest.param("blockwise", marks=pytest.mark.slow)])
def test_sharded_step_equals_single_device(attention):
  assert jax.device_count() == 8, "conftest asks for 8 fake CPU devices"
  # blockwise: 32 source tokens in blocks of 12 (ragged), dropout on the attention probabilities
  model = build_model(tiny_model(attention_impl=attention, attention_block_size=12))
  cfg = small_cfg()
  single = _trainer(model, cfg, (1, 1, 1), jax.devices()[:1])
  sharded = _trainer(model, cfg, (2, 2, 2))
  rng = jax.random.key(0)
  s1 = single.init_state(jax.random.key(1))
  s8 = sharded.init_state(jax.random.key(1))
  q = s8.params["encoder"]["block_0"]["layer_0"]["SelfAttention"]["q"]["kernel"]
  assert q.sharding.spec == P("fsdp", "tensor")  # embed -> fsdp, joined_kv -> tensor
  assert len({d.id for d in q.sharding.device_set}) == 8
  emb = s8.params["shared"]["embedding"]
  assert emb.sharding.spec == P("tensor", "fsdp")  # vocab -> tensor, embed -> fsdp
  mu = s8.opt_state[1][0].mu["shared"]["embedding"]  # adamw moments follow their params
  assert mu.sharding.spec == P("tensor", "fsdp")
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), s1, s8)
  for i in range(2):
    batch = random_batch(seed=i)
    s1, m1 = single.step(s1, batch, rng)
    s8, m8 = sharded.step(s8, batch, rng)
    np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), atol=1e-5, rtol=0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0),
               s1.params, s8.params)


def test_gradient_accumulation_matches_one_big_batch():
  model = build_model(tiny_model(dropout_rate=0.0))
  cfg = small_cfg()
  one = _trainer(model, cfg, (1, 1, 1), jax.devices()[:1])
  acc = _trainer(model, cfg, (1, 1, 1), jax.devices()[:1], grad_accum=4)
  s1, s2 = one.init_state(jax.random.key(1)), acc.init_state(jax.random.key(1))
  batch = random_batch()
  s1, m1 = one.step(s1, batch, jax.random.key(0))
  s2, m2 = acc.step(s2, batch, jax.random.key(0))
  np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0),
               s1.params, s2.params)


@pytest.mark.parametrize("poison", ["update", "loss", "none"])
def test_divergence_flag_names_the_first_bad_step(poison):
  """train_step's flag: a step whose new parameters are not finite (finite loss and gradients, an
  update that overflows), or whose loss is not, is named, and the name sticks to the first such step
  when fed back; finite steps are never flagged; guard=False leaves out only the parameter norm."""
  import optax
  jnp = jax.numpy
  model = build_model(tiny_model(dropout_rate=0.0))
  overflow = optax.GradientTransformation(  # the 3rd step's update is inf
      lambda p: optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32)),
      lambda u, st, p=None: (jax.tree.map(lambda x: x * jnp.where(st.count == 2, jnp.inf, 1e-3), u),
                             optax.ScaleByScheduleState(count=st.count + 1)))
  tx = overflow if poison == "update" else optax.sgd(1e-3)
  params = _trainer(model, small_cfg(), (1, 1, 1), jax.devices()[:1]).init_state(jax.random.key(1)).params
  fresh = lambda: train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,  # noqa: E731
                                       opt_state=tx.init(params))
  poisoned = lambda p: jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), p)  # noqa: E731
  step = jax.jit(train_lib.make_train_step(model, tx, optax.constant_schedule(1e-3)))
  state, first_bad, flags = fresh(), np.int32(-1), []
  for i in range(5):
    if poison == "loss" and i == 1:  # a non-finite weight: loss and gradients follow
      state = state.replace(params=poisoned(state.params))
    state, m = step(state, random_batch(seed=i), jax.random.key(0), first_bad)
    first_bad = m["first_bad_step"]
    flags.append(int(first_bad))
    if poison == "update" and i == 2:
      assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))
      assert not np.isfinite(float(m["param_norm"]))
  assert flags == {"update": [-1, -1, 3, 3, 3], "loss": [-1, 2, 2, 2, 2], "none": [-1] * 5}[poison], flags
  unguarded = jax.jit(train_lib.make_train_step(model, tx, optax.constant_schedule(1e-3), guard=False))
  _, m = unguarded(fresh(), random_batch(), jax.random.key(0))
  assert "param_norm" not in m and int(m["first_bad_step"]) == -1
  nan = fresh().replace(params=poisoned(params))
  assert int(unguarded(nan, random_batch(), jax.random.key(0))[1]["first_bad_step"]) == 1  # loss still checked


def test_dropout_changes_with_step_but_is_reproducible():
  model = build_model(tiny_model(dropout_rate=0.3))
  cfg = small_cfg(learning_rate=0.0)  # lr 0: params fixed, only the dropout mask can differ
  tr = _trainer(model, cfg, (1, 1, 1), jax.devices()[:1])
  batch = random_batch()
  s = tr.init_state(jax.random.key(1))
  s, m_a = tr.step(s, batch, jax.random.key(0))
  s, m_b = tr.step(s, batch, jax.random.key(0))
  s2 = tr.init_state(jax.random.key(1))
  s2, m_c = tr.step(s2, batch, jax.random.key(0))
  assert float(m_a["loss"]) != float(m_b["loss"])  # dropout rng folded with the step
  assert float(m_a["loss"]) == float(m_c["loss"])



@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_dropout_keep_rate_scale_and_independence(rate):
  """layers.Dropout (a mask hashed from a per-row threefry draw and the column): the rounded rate,
  unbiased scaling, the same keep rate in every column, no correlation between neighbouring elements
  of a row or of a column, masks that differ between rng keys; evaluation is the identity."""
  from srformer_jax.layers import Dropout, dropout_rate_rounded
  r = dropout_rate_rounded(rate)
  assert abs(r - rate) <= 1 / 512 and round(r * 256) == r * 256
  x = jax.numpy.ones((64, 257, 33))  # odd sizes: 16,448 rows of 33
  drop = Dropout(rate)
  y = np.asarray(drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}))
  kept = y != 0
  n = kept.size
  assert abs(kept.mean() - (1 - r)) < 4 * np.sqrt(r * (1 - r) / n)  # binomial, 4 sigma
  np.testing.assert_allclose(y[kept], 1 / (1 - r), rtol=1e-6)
  assert abs(y.mean() - 1.0) < 4 * np.sqrt(r / (1 - r) / n)  # E[dropout(x)] = x
  rows = kept.reshape(-1, 33)
  per_column = rows.mean(0)  # each column's keep rate over 16,448 rows (5 sigma over 33 columns)
  assert np.abs(per_column - (1 - r)).max() < 5 * np.sqrt(r * (1 - r) / rows.shape[0]), per_column
  f = rows.astype(float)
  # correlations over ~540k pairs: one standard deviation is ~0.0014, so 0.007 is 5 of them
  assert abs(np.corrcoef(f[:, :-1].ravel(), f[:, 1:].ravel())[0, 1]) < 0.007  # next column
  assert abs(np.corrcoef(f[:-1].ravel(), f[1:].ravel())[0, 1]) < 0.007  # next row
  y2 = np.asarray(drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)}))
  assert abs(np.corrcoef(f.ravel(), (y2 != 0).ravel().astype(float))[0, 1]) < 0.007  # a new key: a new mask
  assert np.array_equal(np.asarray(drop.apply({}, x, deterministic=True)), np.asarray(x))
  assert np.array_equal(np.asarray(Dropout(0.0).apply({}, x, deterministic=False)), np.asarray(x))
  assert not np.asarray(Dropout(1.0).apply({}, x, deterministic=False)).any()


@pytest.mark.parametrize("shape", [(), (7,), (5, 1), (3, 0), (2, 3, 5)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dropout_edge_shapes_and_unbiased_bfloat16(shape, dtype):
  """Scalars, vectors, a last axis of 1 and empty arrays keep their shape and dtype; kept values are
  x / (1 - rate) as exactly as the dtype holds it (in bfloat16 the scale is applied in float32, not
  rounded to bfloat16 first); the mask helper takes rates 0 and 1."""
  import jax.numpy as jnp
  from srformer_jax.layers import Dropout, dropout_keep_mask, dropout_rate_rounded
  x = jnp.full(shape, 3.0, dtype)
  y = Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
  assert y.shape == x.shape and y.dtype == x.dtype
  want = np.asarray(jnp.asarray(3.0 / (1 - dropout_rate_rounded(0.1)), jnp.float32).astype(dtype), np.float32)
  kept = np.asarray(y, np.float32)[np.asarray(y, np.float32) != 0]
  assert (kept == want).all(), (kept, want)
  assert dropout_keep_mask(jax.random.key(0), 0.0, shape).all()
  assert not dropout_keep_mask(jax.random.key(0), 1.0, shape).any()
  assert dropout_keep_mask(jax.random.key(0), 1.0, shape).shape == shape


@pytest.mark.parametrize("shape,dtype", [((5, 7), "float32"), ((3, 4, 7), "float32"), ((3, 4, 7), "bfloat16")])
def test_dense_dot_general_is_the_matmul_and_its_gradient(shape, dtype):
  """layers.dense_dot_general (the weight gradient laid out for XLA:CPU) computes what nn.Dense with
  lax.dot_general computes: outputs and both gradients, through a bias, a cast and an activation."""
  import jax.numpy as jnp
  from flax import linen as nn
  from srformer_jax import layers
  dt = jnp.dtype(dtype)
  x = jax.random.normal(jax.random.key(0), shape)
  ours = layers.dense(6, (None, None), use_bias=True, dtype=dt)
  xla = nn.Dense(6, use_bias=True, dtype=dt, param_dtype=jnp.float32)
  assert ours.dot_general is layers.dense_dot_general
  params = xla.init(jax.random.key(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias

  def loss(module, p, x):
    return jnp.sum(jnp.tanh(module.apply({"params": p}, x).astype(jnp.float32)) ** 2)

  tol = 1e-5 if dtype == "float32" else 2e-2
  np.testing.assert_allclose(ours.apply(params, x).astype(np.float32), xla.apply(params, x).astype(np.float32),
                             rtol=tol, atol=tol)
  (g_ours, gx_ours), (g_xla, gx_xla) = (jax.grad(loss, argnums=(1, 2))(m, params["params"], x) for m in (ours, xla))
  for a, b in zip(jax.tree.leaves((g_ours, gx_ours)), jax.tree.leaves((g_xla, gx_xla))):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol)
  # a contraction that is not a dense layer's goes to lax.dot_general unchanged
  a, b = jax.random.normal(jax.random.key(2), (4, 3)), jax.random.normal(jax.random.key(3), (4, 5))
  dims = (((0,), (0,)), ((), ()))
  np.testing.assert_array_equal(layers.dense_dot_general(a, b, dims), jax.lax.dot_general(a, b, dims))


@pytest.mark.parametrize("score_dtype,bias_dtype", [("float32", "float32"), ("float64", "float32"),
                                                     ("bfloat16", "float32")])
def test_add_bias_is_the_sum_and_its_gradient(score_dtype, bias_dtype):
  """layers.add_bias (the bias gradient summed over the batch as a matmul) computes what `+` computes:
  the sum and both gradients, each in its operand's dtype, also under remat (whose partial
  evaluation checks the cotangents' dtypes: a float32 bias on float64 scores once failed there)."""
  import jax.numpy as jnp
  from srformer_jax import layers
  with jax.enable_x64(True):
    scores = jax.random.normal(jax.random.key(0), (3, 2, 5, 7)).astype(score_dtype)
    pos = jax.random.normal(jax.random.key(1), (1, 2, 5, 7)).astype(bias_dtype)
    mask = jax.random.normal(jax.random.key(2), (3, 1, 1, 7)).astype(score_dtype)

    def loss(add, s, p, m):
      return jnp.sum(jnp.sin(add(add(s, p), m).astype(jnp.float32)))

    plus = lambda a, b: a + b  # noqa: E731
    got = jax.grad(jax.checkpoint(lambda *a: loss(layers.add_bias, *a)), argnums=(0, 1, 2))(scores, pos, mask)
    want = jax.grad(lambda *a: loss(plus, *a), argnums=(0, 1, 2))(scores, pos, mask)
    np.testing.assert_array_equal(layers.add_bias(scores, pos), scores + pos)
    tol = 1e-2 if score_dtype == "bfloat16" else 1e-6
    for g, w in zip(got, want):
      assert g.dtype == w.dtype and g.shape == w.shape
      np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_accumulating_dot_general_and_tied_logits(dtype):
  """layers.accumulating_dot_general: float32 operands go to lax.dot_general unchanged (bit for bit);
  bfloat16 operands give a bfloat16 result, the float32 sum of their products rounded once. The tied
  output projection (layers.Embed.attend) is that product against the embedding."""
  import jax.numpy as jnp
  from srformer_jax import layers
  dt = jnp.dtype(dtype)
  a = jax.random.normal(jax.random.key(0), (3, 5, 64)).astype(dt)
  b = jax.random.normal(jax.random.key(1), (64, 7)).astype(dt)
  dims = (((2,), (0,)), ((), ()))
  out = layers.accumulating_dot_general(a, b, dims)
  assert out.dtype == dt and out.shape == (3, 5, 7)
  exact = np.einsum("bqd,dv->bqv", np.asarray(a, np.float64), np.asarray(b, np.float64))
  if dtype == "float32":
    np.testing.assert_array_equal(out, jax.lax.dot_general(a, b, dims))
  else:  # one rounding of a float32 sum: within half a bfloat16 ulp (2^-9 relative) of the exact product
    np.testing.assert_allclose(np.asarray(out, np.float64), exact, rtol=2 ** -8, atol=1e-4)
  emb = layers.embed(7, 64, (None, None), dtype=dt)
  params = emb.init(jax.random.key(2), jnp.zeros((1,), jnp.int32))
  table = np.asarray(params["params"]["embedding"].unbox() if hasattr(params["params"]["embedding"], "unbox")
                     else params["params"]["embedding"])
  logits = emb.apply(params, a, method="attend")
  assert logits.dtype == dt
  # against the product in float64 of the same (rounded) operands, not the call attend makes
  exact = np.einsum("bqd,vd->bqv", np.asarray(a, np.float64), np.asarray(jnp.asarray(table, dt), np.float64))
  np.testing.assert_allclose(np.asarray(logits, np.float64), exact, rtol=2 ** -8 if dtype != "float32" else 1e-5,
                             atol=1e-4 if dtype != "float32" else 1e-6)
  if dtype == "float32":
    np.testing.assert_array_equal(logits, jnp.dot(a, jnp.asarray(table).T))


# standard-library modules whose docstrings make the tests' corpus (~600 pairs)
TEST_DOCSTRING_MODULES = "email,json,argparse,logging,asyncio,collections,concurrent,http,unittest,xml,pathlib,zipfile"


def docstring_cfg(num_steps=6, save_every=3):
  cfg = base.base_config()
  cfg.model.init_from = ""
  cfg.model.segment_size = 8
  cfg.model.scratch.update(d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=1,
                           num_decoder_layers=1, relative_attention_num_buckets=8)
  cfg.data.docstring_modules = TEST_DOCSTRING_MODULES  # a small corpus, read in a second
  cfg.data.update(source="docstrings", train_split="train", eval_split="test", tokenizer="train_spm",
                  spm_vocab_size=300, max_source_len=48, max_target_len=16, max_eval_examples=6)
  cfg.train.update(batch_size=8, num_steps=num_steps, learning_rate=3e-3, warmup_steps=2, log_every=1,
                   save_every=save_every, mesh_shape=(1, 1, 1))
  cfg.decode.update(num_beams=2, batch_size=4, max_len=0)
  return cfg


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r["loss"]) for r in map(json.loads, f)]


def _final_params(cfg, workdir):
  return run_setup.load_trained_model(cfg, workdir)[2]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  """The docstring corpus and a tokenizer trained on it, shared by the runs below."""
  d = tmp_path_factory.mktemp("docstrings")
  cfg = docstring_cfg()
  src = run_setup.load_source(cfg, "train_split", str(d))
  run_setup.build_tokenizer(cfg, str(d), [t for p in src.pairs for t in p])
  return str(d)


def test_docstring_corpus_is_the_same_in_every_process():
  # The offline default job must be reproducible: no per-process text (object addresses in
  # signature defaults, hash-randomised orderings) may reach the corpus.
  code = ("import hashlib, json; from srformer_jax import corpus; "
          f"print(hashlib.sha256(json.dumps(corpus.stdlib_rows({TEST_DOCSTRING_MODULES!r})).encode()).hexdigest())")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  digests = {subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                            check=True, env=dict(os.environ, PYTHONHASHSEED=seed)).stdout.split()[-1]
             for seed in ("1", "2")}
  assert len(digests) == 1


def _workdir(tmp_path, corpus_dir, name):
  w = tmp_path / name
  w.mkdir()
  for sub in ("corpus", "spm"):
    shutil.copytree(os.path.join(corpus_dir, sub), w / sub)
  return str(w)


@pytest.mark.slow  # the default suite checks exact resume in test_train_system (resume after a crash)
def test_kill_and_resume_is_exact(tmp_path, corpus_dir):
  cfg = docstring_cfg(num_steps=6, save_every=3)
  straight = _workdir(tmp_path, corpus_dir, "straight")
  train_lib.train(cfg, straight)
  resumed = _workdir(tmp_path, corpus_dir, "resumed")
  train_lib.train(cfg, resumed, stop_after=3)  # "killed" after the checkpoint at step 3
  assert Checkpointer(os.path.join(resumed, "checkpoints")).latest_step() == 3
  train_lib.train(cfg, resumed)
  a, b = _losses(straight), _losses(resumed)
  assert [s for s, _ in a] == list(range(1, 7)) == [s for s, _ in b]
  np.testing.assert_array_equal([l for _, l in a], [l for _, l in b])
  jax.tree.map(np.testing.assert_array_equal, _final_params(cfg, straight), _final_params(cfg, resumed))
  other = docstring_cfg(num_steps=6, save_every=3)
  other.train.grad_clip = 0.0  # another optimizer state structure: evaluation still reads the params
  jax.tree.map(np.testing.assert_array_equal, _final_params(cfg, straight), _final_params(other, straight))
  assert os.path.exists(os.path.join(straight, "loss.png"))


@pytest.mark.slow  # evaluate() runs in the default suite through the tfds end-to-end test
def test_offline_default_loss_falls_and_evaluates(tmp_path, corpus_dir):
  """The default config's pipeline, shortened (the full run is the README's main command)."""
  spec = importlib.util.spec_from_file_location("default_cfg", os.path.join(REPO, "configs", "default.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config()
  cfg.data.spm_vocab_size = 300  # the shared corpus_dir tokenizer
  cfg.data.max_eval_examples = 8
  cfg.train.update(num_steps=40, log_every=5, save_every=40, batch_size=16, warmup_steps=5)
  w = _workdir(tmp_path, corpus_dir, "default")
  train_lib.train(cfg, w)
  losses = [l for _, l in _losses(w)]
  assert losses[-1] < losses[0] - 1.0, losses
  scores = eval_lib.evaluate(cfg, w)
  assert scores["num_examples"] == 8
  assert set(eval_lib.ROUGE_TYPES) <= set(json.load(open(os.path.join(w, "rouge.json"))))
  with open(os.path.join(w, "predictions.jsonl")) as f:
    assert len(f.readlines()) == 8


def _tiny_spiece(out_dir, vocab_size=200):
  """A T5-style spiece.model (pad 0, eos 1, unk 2) trained on random words: the HF T5 tokenizer
  loads it from a checkpoint directory and adds its 100 sentinel tokens."""
  rng = np.random.default_rng(0)
  words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 9))) for _ in range(400)]
  texts = [" ".join(rng.choice(words, 30)) for _ in range(300)]
  path = data.train_sentencepiece(texts, os.path.join(out_dir, "spiece"), vocab_size)
  assert path == os.path.join(out_dir, "spiece.model")


def test_tfds_mock_paper_config_end_to_end(tmp_path, hf_dirs):
  import tensorflow_datasets as tfds
  # a tiny T5 stands in for t5-small, with a tiny T5-style tokenizer (300 ids) beside it
  ckpt = tmp_path / "tiny_t5"
  shutil.copytree(hf_dirs["t5_v1_0"].path, ckpt)
  _tiny_spiece(str(ckpt))
  spec = importlib.util.spec_from_file_location(
      "paper", os.path.join(REPO, "configs", "t5_small_cnn_dailymail.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config()
  cfg.model.init_from = str(ckpt)
  cfg.model.segment_size = 16
  cfg.data.update(max_source_len=64, max_target_len=16, max_eval_examples=4)
  cfg.train.update(batch_size=4, num_steps=3, log_every=1, save_every=3, mesh_shape=(1, 1, 1))
  cfg.decode.update(batch_size=4, num_beams=2)
  w = str(tmp_path / "run")
  with pytest.raises(data.DataError, match="could not load tfds 'cnn_dailymail'.*tfds build"):
    train_lib.train(cfg, w)  # no prepared data and no network: a clear error
  with tfds.testing.mock_data(num_examples=12):
    with pytest.raises(ValueError, match="tokenizer has 300 tokens, model only 99"):
      train_lib.train(cfg, w)
  # widen the tiny model's vocabulary to the tokenizer's
  from srformer_jax.convert import load_state_dict
  from safetensors.numpy import save_file
  sd = load_state_dict(ckpt)
  sd = {k: np.resize(v, (320,) + v.shape[1:]) if v.shape[0] == 99 else v for k, v in sd.items()}
  save_file(sd, str(ckpt / "model.safetensors"))
  c = json.load(open(ckpt / "config.json"))
  c["vocab_size"] = 320
  json.dump(c, open(ckpt / "config.json", "w"))
  with tfds.testing.mock_data(num_examples=12):
    train_lib.train(cfg, w)
    scores = eval_lib.evaluate(cfg, w)
  assert len(_losses(w)) == 3
  assert scores["num_examples"] == 4 and scores["cross_attention"] == "srformer"
  assert os.path.exists(os.path.join(w, "rouge.json"))


def test_every_config_loads():
  from srformer_jax.crt import train as lm_train
  files = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
  shared = ("base.py", "lm_ptb.py")  # pieces the configs share (no get_config)
  names = [os.path.basename(f) for f in files
           if not os.path.basename(f).startswith("_") and os.path.basename(f) not in shared]
  assert len(names) >= 9
  for f in files:
    if os.path.basename(f) in names:
      spec = importlib.util.spec_from_file_location(f, f)
      mod = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(mod)
      cfg = mod.get_config()
      # each config passes the validation train.py / train_lm.py run before any work
      if "memory" in cfg.model:  # a CRT / LM-baseline config (train_lm.py; see tests/test_crt.py)
        lm_train.validate_config(cfg)
      else:
        run_setup.validate_config(cfg)


# ------------------------------------------------------------------------------------------------
# bad input


class CharTokenizer:
  pad_id, eos_id, vocab_size = 0, 1, 300

  def encode(self, text):
    return [min(ord(ch), 299) for ch in text] + [1]

  def decode(self, ids):
    return "".join(chr(i) for i in ids if i > 1)


def test_jsonl_bad_lines_are_counted_not_fatal(tmp_path, caplog):
  p = tmp_path / "d.jsonl"
  with open(p, "wb") as f:
    f.write(b'{"document": "a good document", "summary": "good"}\n')
    f.write(b'{"document": "", "summary": "empty document"}\n')
    f.write(b'{"document": "bad bytes \xff\xfe", "summary": "x"}\n')
    f.write(b'not json at all\n')
    f.write(b'{"text": "wrong keys"}\n')
    f.write(b'\n')
    f.write(b'{"document": "another one", "summary": "fine"}\n')
  src = data.read_jsonl(str(p))
  assert len(src) == 2
  assert (src.stats.read, src.stats.skipped_empty, src.stats.skipped_bad_line) == (6, 1, 3)
  assert "lines [3, 4, 5]" in caplog.text


def test_missing_and_empty_data_files(tmp_path):
  with pytest.raises(data.DataError, match="does not exist"):
    data.read_jsonl(str(tmp_path / "nope.jsonl"))
  (tmp_path / "empty.jsonl").write_text('{"document": "", "summary": ""}\n')
  with pytest.raises(data.DataError, match="no usable examples"):
    data.read_jsonl(str(tmp_path / "empty.jsonl"))
  with pytest.raises(data.DataError, match="spm:<file>"):
    data.load_tokenizer("sentencepiece.model")


def test_long_summaries_truncate_skip_or_error():
  src = data.ListSource([("doc " * 5, "short"), ("doc", "a very long summary indeed")])
  tok = CharTokenizer()
  spec = data.BatchSpec(batch_size=2, max_source_len=8, max_target_len=10)
  it = data.BatchIterator(src, tok, spec, shuffle=False)
  batch = next(it)
  assert batch["labels"].shape == (2, 10) and batch["labels"][1, -1] == tok.eos_id
  assert it.stats.truncated_target == 1 and it.stats.truncated_source == 1
  it = data.BatchIterator(src, tok, data.BatchSpec(2, 8, 10, long_target="skip"), shuffle=False)
  batch = next(it)  # the long one is skipped, the short one fills the batch twice
  assert it.stats.skipped_too_long >= 1
  assert all(tok.decode(row) == "short" for row in batch["labels"])
  it = data.BatchIterator(src, tok, data.BatchSpec(2, 8, 10, long_target="error"), shuffle=False)
  with pytest.raises(data.DataError, match="exceeds max_target_len=10"):
    next(it)
  only_long = data.ListSource([("doc", "a very long summary indeed")])
  it = data.BatchIterator(only_long, tok, data.BatchSpec(2, 8, 10, long_target="skip"))
  with pytest.raises(data.DataError, match="no usable examples"):
    next(it)


def test_batch_iterator_position_is_exact():
  src = data.ListSource([(f"document {i}", f"summary {i}") for i in range(11)])
  spec = data.BatchSpec(batch_size=3, max_source_len=16, max_target_len=12)
  a = data.BatchIterator(src, CharTokenizer(), spec, seed=5)
  first = [next(a) for _ in range(5)]  # crosses an epoch boundary
  b = data.BatchIterator(src, CharTokenizer(), spec, seed=5)
  for _ in range(2):
    next(b)
  c = data.BatchIterator(src, CharTokenizer(), spec, seed=5)
  c.restore(b.state())
  for want in first[2:]:
    got = next(c)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_rouge_scores():
  s = eval_lib.rouge(["the cat sat on the mat."], ["the cat sat on the mat."])
  assert all(abs(v - 100.0) < 1e-6 for v in s.values())
  s = eval_lib.rouge(["dogs run"], ["the cat sat on the mat."])
  assert s["rouge1"] == 0.0
  # stemming: "running" matches "run"
  assert eval_lib.rouge(["cats running"], ["cat run"])["rouge1"] == 100.0


def test_bad_mesh_and_config_errors():
  with pytest.raises(ValueError, match="needs 16 devices, 8 available"):
    sharding.make_mesh((4, 4, 1))
  assert sharding.make_mesh((1, 2, 1)).devices.size == 2
  with pytest.raises(ValueError, match="at most one mesh dimension"):
    sharding.make_mesh((-1, -1, 1))


def test_batch_shards_follow_the_rules():
  """sharding.batch_shards: how many ways the batch axis splits (data x fsdp under the default
  rules, not tensor), as the batch sharding itself splits it."""
  for shape, want in (((8, 1, 1), 8), ((2, 2, 2), 4), ((1, 1, 8), 1), ((1, 4, 2), 4)):
    mesh = sharding.make_mesh(shape)
    assert sharding.batch_shards(mesh) == want
    assert sharding.batch_sharding(mesh).shard_shape((8 * want, 3))[0] == 8
  only_data = [(sharding.BATCH, "data")] + [r for r in sharding.DEFAULT_RULES if r[0] != sharding.BATCH]
  assert sharding.batch_shards(sharding.make_mesh((2, 2, 2)), only_data) == 2


def test_is_argmax_matches_argmax_with_ties():
  """train_lib.is_argmax (the accuracy metric without XLA:CPU's argmax) is `argmax == label`,
  including rows with tied maxima (ties go to the first index) and bfloat16-rounded logits."""
  import jax.numpy as jnp
  from srformer_jax.train_lib import is_argmax
  rng = np.random.default_rng(0)
  logits = rng.integers(0, 4, (6, 9, 5)).astype(np.float32)  # many ties
  logits[0, 0] = 0.0                                        # all tied
  logits = np.concatenate([logits, np.asarray(jnp.asarray(rng.normal(size=(6, 9, 5)), jnp.bfloat16), np.float32)])
  labels = rng.integers(0, 5, logits.shape[:2])
  labels[0, 0] = 0
  want = np.argmax(logits, -1) == labels
  got = np.asarray(is_argmax(jnp.asarray(logits), jnp.asarray(labels)))
  np.testing.assert_array_equal(got, want)
  assert want.any() and not want.all()
  ties = (logits == logits.max(-1, keepdims=True)).sum(-1) > 1
  assert (ties & want).any() and (ties & ~want & (logits[..., :].max(-1) == np.take_along_axis(
      logits, labels[..., None], -1)[..., 0])).any()  # tied at the top but not the first: not counted
