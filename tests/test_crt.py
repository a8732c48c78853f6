"""CRT (Compact Recurrent Transformer) LM and its baselines: identities, memory, data, training."""

import dataclasses
import importlib
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srformer_jax.crt import data as lm_data
from srformer_jax.crt import stream
from srformer_jax.crt.config import CRTConfig
from srformer_jax.crt.model import init_carry, init_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
L = 4


def tiny(**kw):
  c = dict(vocab_size=40, d_model=16, num_heads=2, d_ff=32, num_layers=2, segment_len=L,
           relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0)
  c.update(kw)
  return CRTConfig(**c)


def setup(config, seed=0, dtype=jnp.float32):
  params = init_params(config, jax.random.key(seed))
  if dtype == jnp.float64:
    config = dataclasses.replace(config, dtype="float64")
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
  return stream.build_model(config), params


def tokens(batch, length, seed=1, vocab=40):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, vocab)


VARIANTS = {
    "crt": dict(),  # memory token in front, GRU over the segment's outputs
    "crt_layer_pooled_ortho": dict(memory_input="layer", memory_update="pooled", cell="ortho_gru"),
    "crt_raf": dict(cell="raf"),
    "xl": dict(memory="xl", xl_len=6),
}


@pytest.mark.parametrize("name", ["crt", pytest.param("crt_layer_pooled_ortho", marks=pytest.mark.slow), "xl"])
def test_scan_equals_segment_loop_and_token_steps(name):
  """The scanned forward == a Python loop over segments == token-by-token decoding (float64)."""
  with jax.enable_x64(True):
    model, params = setup(tiny(**VARIANTS[name]), dtype=jnp.float64)
    x = tokens(2, 3 * L)
    carry0 = init_carry(model.config, 2, jnp.float64)
    scanned, carry = stream.scan_segments(model, params, x, carry0)
    assert scanned.dtype == jnp.float64
    loop, c = [], carry0
    for s in range(3):
      logits, c = model.apply({"params": params}, x[:, s * L:(s + 1) * L], c)
      loop.append(logits)
    chex.assert_trees_all_close(jnp.concatenate(loop, 1), scanned, atol=1e-5, rtol=0)
    chex.assert_trees_all_close(c, carry, atol=1e-5, rtol=0)
    steps, state = stream.stepwise_logits(model, params, x, carry0)
    chex.assert_trees_all_close(steps, scanned, atol=1e-5, rtol=0)
    chex.assert_trees_all_close(state["carry"], carry, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["crt", "xl"])
def test_generation_equals_teacher_forcing_on_its_output(name):
  model, params = setup(tiny(**VARIANTS[name]))
  prompt = tokens(2, L, seed=3)
  gen, _ = stream.generate(model, params, prompt, 2 * L + 1)  # crosses two segment boundaries
  seq = jnp.concatenate([prompt, gen], axis=1)
  logits, _ = stream.scan_segments(model, params, seq[:, :-1], init_carry(model.config, 2))
  np.testing.assert_array_equal(np.argmax(logits[:, L - 1:], -1), np.asarray(gen))
  assert len(np.unique(np.asarray(gen))) > 1  # not a degenerate constant continuation


def _segment_logits_after_edit(config):
  model, params = setup(config)
  x = tokens(1, 3 * L, seed=5)
  y = x.at[0, 1].set((x[0, 1] + 1) % config.vocab_size)  # a token of segment 1
  carry = init_carry(config, 1)
  a, _ = stream.scan_segments(model, params, x, carry)
  b, _ = stream.scan_segments(model, params, y, carry)
  return a, b


@pytest.mark.parametrize("name", ["crt", "crt_raf"])
def test_memory_carries_segment_1_into_segment_3(name):
  a, b = _segment_logits_after_edit(tiny(**VARIANTS[name]))
  assert float(jnp.max(jnp.abs(a[:, 2 * L:] - b[:, 2 * L:]))) > 1e-4


def test_segmented_baseline_forgets_segment_1():
  a, b = _segment_logits_after_edit(tiny(memory="none"))
  assert float(jnp.max(jnp.abs(a[:, :L] - b[:, :L]))) > 1e-4  # the edit is seen in its own segment
  np.testing.assert_array_equal(np.asarray(a[:, L:]), np.asarray(b[:, L:]))


def test_gradients_reach_the_cell_through_two_segments():
  """Loss on segment 3 only: its gradient reaches the memory entering segment 1 (two cell updates
  back) unless the memory's gradient is truncated in between."""
  model, params = setup(tiny())
  x, y = tokens(2, 3 * L, seed=7), tokens(2, 3 * L, seed=8)
  carry0 = {"mem": {"h": jax.random.normal(jax.random.key(9), (2, 16))}}

  def grads(truncate_every):
    def loss(p, c):
      ce, _ = stream.scan_segments(model, p, x, c, y, truncate_every=truncate_every)
      return jnp.sum(ce[:, 2 * L:])
    return jax.grad(loss, argnums=(0, 1))(params, carry0)

  norm = lambda t: float(sum(jnp.sum(jnp.abs(a)) for a in jax.tree.leaves(t)))
  g_params, g_mem0 = grads(0)
  assert norm(g_mem0) > 0 and norm(g_params["cell"]) > 0
  assert norm(grads(3)[1]) > 0          # truncation windows of 3 segments: still reaches segment 1
  assert norm(grads(2)[1]) == 0         # memory cut before segment 3
  assert norm(grads(1)[0]["cell"]) == 0  # every memory cut: the cell gets no gradient from segment 3


@pytest.mark.parametrize("name", ["crt", "xl"])
def test_eval_over_stream_equals_two_halves_with_memory_handed_on(name):
  with jax.enable_x64(True):
    model, params = setup(tiny(**VARIANTS[name]), dtype=jnp.float64)
    x, y = tokens(2, 5 * L + 3, seed=11), tokens(2, 5 * L + 3, seed=12)
    whole, n, carry = stream.evaluate_stream(model, params, x, y, chunk_segments=2)
    first, n1, c1 = stream.evaluate_stream(model, params, x[:, :2 * L], y[:, :2 * L])
    second, n2, c2 = stream.evaluate_stream(model, params, x[:, 2 * L:], y[:, 2 * L:], c1)
    assert n == n1 + n2 == 2 * (5 * L + 3)
    chex.assert_trees_all_close(first + second, whole, atol=1e-5, rtol=0)
    chex.assert_trees_all_close(c2, carry, atol=1e-5, rtol=0)


def test_per_token_losses_are_each_targets_own():
  """evaluate_stream(per_token=True): each target's cross-entropy, their sum the summed loss; a
  prediction changes only where its target changes (the ragged tail included)."""
  with jax.enable_x64(True):
    model, params = setup(tiny(), dtype=jnp.float64)
    x, y = tokens(2, 3 * L + 2, seed=11), tokens(2, 3 * L + 2, seed=12)
    total, n, carry = stream.evaluate_stream(model, params, x, y, chunk_segments=2)
    each, n2, carry2 = stream.evaluate_stream(model, params, x, y, chunk_segments=2, per_token=True)
    assert each.shape == (2, 3 * L + 2) and n2 == n
    np.testing.assert_allclose(float(jnp.sum(each)), float(total), rtol=1e-6)
    chex.assert_trees_all_close(carry2, carry, atol=1e-6, rtol=0)
    y2 = y.at[1, L + 1].set((y[1, L + 1] + 1) % 40)
    moved = np.asarray(stream.evaluate_stream(model, params, x, y2, per_token=True)[0] != each)
    assert moved.sum() == 1 and moved[1, L + 1]


def test_perplexity_and_positions_buckets_the_whole_split():
  """Positions restart after each end-of-document token; the buckets' tokens add up to the split's
  and their token-weighted NLL is the split's NLL."""
  from srformer_jax.crt import train as lm_train
  ids = np.array([5, 6, 0, 7, 8, 9, 10, 0, 11, 0, 12, 13], np.int32)
  np.testing.assert_array_equal(lm_train.positions_in_document(ids, 0), [0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 0, 1])
  model, params = setup(tiny())
  ids = np.array(tokens(1, 6 * L * 2 + 1, seed=3)[0])
  ids[[5, 17, 30]] = 0
  whole = lm_train.perplexity(model, params, ids, 2)
  one_pass, parts = lm_train.perplexity_and_positions(model, params, ids, 2, edges=(0, 3, 9), eos_id=0)
  assert [(b["from"], b["to"]) for b in parts] == [(0, 3), (3, 9), (9, None)]
  assert sum(b["tokens"] for b in parts) == whole["tokens"]
  nll = sum(b["nll"] * b["tokens"] for b in parts) / whole["tokens"]
  np.testing.assert_allclose(nll, whole["nll"], rtol=1e-5)
  # the same pass gives perplexity's record of the whole split (evaluate's with buckets)
  assert one_pass["tokens"] == whole["tokens"]
  np.testing.assert_allclose(one_pass["nll"], whole["nll"], rtol=1e-5)


def test_clear_errors():
  model, params = setup(tiny())
  short = tokens(1, L - 1)
  with pytest.raises(ValueError, match="shorter than one segment"):
    stream.scan_segments(model, params, short, init_carry(model.config, 1))
  with pytest.raises(ValueError, match="shorter than one segment"):
    stream.evaluate_stream(model, params, short, short)
  with pytest.raises(ValueError, match="segment_len"):
    tiny(segment_len=0)
  with pytest.raises(ValueError, match="segment_len"):
    tiny(segment_len=-4)
  with pytest.raises(ValueError, match="unknown cell kind 'lstm'"):
    tiny(cell="lstm")
  with pytest.raises(ValueError, match="unknown memory kind"):
    tiny(memory="recurrent")
  with pytest.raises(lm_data.DataError, match="shorter than one window"):
    lm_data.StreamIterator(np.arange(40, dtype=np.int32), batch=4, window=L * 3)


def write_corpus(root, n_lines=(300, 40, 40), seed=0):
  """Synthetic text with some structure (a repeating phrase pattern) in PTB layout."""
  rng = np.random.default_rng(seed)
  words = [f"w{i}" for i in range(30)] + ["<unk>"]
  for split, n in zip(lm_data.SPLITS, n_lines):
    with open(os.path.join(root, f"ptb.{split}.txt"), "w") as f:
      for _ in range(n):
        start = int(rng.integers(0, 25))
        f.write(" " + " ".join(words[start:start + int(rng.integers(3, 9))]) + " \n")
  return str(root)


def test_corpus_vocab_eos_unk_and_batchify(tmp_path):
  for split, text in (("train", " a b <unk> \n b c \n"), ("valid", " a z \n"), ("test", " c \n")):
    (tmp_path / f"ptb.{split}.txt").write_text(text)
  vocab, ids = lm_data.load_corpus(lm_data.split_paths(str(tmp_path)))
  assert vocab.words == ["<eos>", "a", "b", "<unk>", "c"]
  assert vocab.decode(ids["train"]) == ["a", "b", "<unk>", "<eos>", "b", "c", "<eos>"]
  assert vocab.decode(ids["valid"]) == ["a", "<unk>", "<eos>"]  # z is out of vocabulary
  np.testing.assert_array_equal(lm_data.batchify(np.arange(10), 3), [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
  it = lm_data.StreamIterator(np.arange(40, dtype=np.int32), batch=2, window=4)  # streams of 20
  seen = [next(it) for _ in range(5)]
  assert [r for _, _, r in seen] == [True, False, False, False, True]  # 4 windows an epoch, then wrap
  np.testing.assert_array_equal(seen[1][0], [[4, 5, 6, 7], [24, 25, 26, 27]])
  np.testing.assert_array_equal(seen[1][1], [[5, 6, 7, 8], [25, 26, 27, 28]])
  resumed = lm_data.StreamIterator(np.arange(40, dtype=np.int32), batch=2, window=4)
  resumed.restore(json.loads(json.dumps(it.state())))
  np.testing.assert_array_equal(next(resumed)[0], next(it)[0])


def lm_cfg(tmp_path, memory="crt"):
  from configs import lm_ptb
  cfg = lm_ptb.lm_config(memory, "half", context_len=2 * L)
  cfg.model.update(d_model=16, num_heads=2, d_ff=32, relative_attention_num_buckets=8, dropout_rate=0.1)
  cfg.data.update(data_dir=write_corpus(tmp_path), eval_batch_size=2)
  cfg.train.update(batch_size=8, num_steps=4, warmup_steps=1, log_every=1, save_every=2, eval_every=2,
                   learning_rate=3e-3)
  return cfg


def test_train_resume_is_exact_and_eval(tmp_path):
  from srformer_jax.crt import train as lm_train
  cfg = lm_cfg(tmp_path)
  cfg.train.keep_best = False  # the best-validation state: test_early_stop_keeps_best_validation_state
  straight = lm_train.train(cfg, str(tmp_path / "a"))
  lm_train.train(cfg, str(tmp_path / "b"), stop_after=2)
  resumed = lm_train.train(cfg, str(tmp_path / "b"))
  assert resumed["step"] == straight["step"] == 4
  assert resumed["loss"] == pytest.approx(straight["loss"], abs=1e-6)
  assert resumed["valid_nll"] == pytest.approx(straight["valid_nll"], abs=1e-6)
  with open(tmp_path / "b" / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert rows[-1]["loss"] < rows[0]["loss"]
  assert os.path.exists(tmp_path / "b" / "loss.png")
  res = lm_train.evaluate(cfg, str(tmp_path / "b"))
  assert res["step"] == 4 and res["test"]["tokens"] > 0
  assert res["test"]["ppl"] == pytest.approx(np.exp(res["test"]["nll"]))
  assert res["valid"]["nll"] == pytest.approx(straight["valid_nll"], abs=1e-5)


@pytest.mark.parametrize("name,arg", [("crt_ptb", "half"), ("crt_ptb", "quarter"), ("transformer_ptb", None),
                                      ("segmented_ptb", "half"), ("segmented_ptb", "quarter"),
                                      ("xl_ptb", "half")])
def test_config_files_load(name, arg):
  from srformer_jax.crt import train as lm_train
  module = importlib.import_module(f"configs.{name}")
  cfg = module.get_config(arg) if arg else module.get_config()
  config = lm_train.model_config(cfg, vocab_size=10000)
  assert config.segment_len * cfg.train.segments_per_step == 128
  assert config.memory == {"crt_ptb": "crt", "xl_ptb": "xl"}.get(name, "none")


@pytest.mark.slow
def test_benchmark_quick(tmp_path):
  import subprocess
  import sys
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device, as the benchmark runs (not the suite's 8 fake ones)
  run = lambda *a: subprocess.run([sys.executable, "benchmarks/crt_ptb.py", "--quick", "--out", str(tmp_path),
                                   "--workdir", str(tmp_path / "runs"), *a], cwd=REPO, capture_output=True,
                                  text=True, env=env)
  out = run("--only", "full_L,segmented_L/4,crt_L/4")
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / "crt_ptb_quick.json") as f:
    payload = json.load(f)
  rows = payload["runs"]
  assert {(r["name"], r["seed"]) for r in rows if r["context_len"] == 16} == {
      (n, k) for n in ("full_L", "segmented_L/4", "crt_L/4") for k in (0, 1)}
  assert all(np.isfinite(r["test_ppl"]) and r["flops_per_token"] > 0 and r["checkpoint"] == "best" for r in rows)
  assert set(payload["aggregate"]["gate"]) == {"16", "32"}
  assert all(m["test_ppl"]["n"] == (2 if m["context_len"] == 16 else 1) for m in payload["aggregate"]["models"])
  assert os.path.exists(tmp_path / "crt_ptb_quick.png")
  listed = run("--plan").stdout.split("\n")
  assert "done  L16_crt_L_4_seed1" in listed and "todo  L16_xl_L_2_seed0" in listed
  out = subprocess.run([sys.executable, "benchmarks/crt_ptb.py", "--quick", "--flops_sweep", "--out",
                        str(tmp_path)], cwd=REPO, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert os.path.exists(tmp_path / "crt_ptb_flops_quick.png")


@pytest.mark.slow
def test_benchmark_scisumm_quick(tmp_path):
  """The ScisummNet preset end to end on a synthetic corpus built by scisumm_lm: the four models,
  per-position test perplexity, the commit each run trained at, the by-position figure."""
  import subprocess
  import sys
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "benchmarks/crt_ptb.py", "--quick", "--preset", "scisumm", "--out",
                        str(tmp_path), "--workdir", str(tmp_path / "runs")], cwd=REPO, capture_output=True,
                       text=True, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / "crt_scisumm_quick.json") as f:
    payload = json.load(f)
  assert [r["name"] for r in payload["runs"]] == ["full_L", "segmented_L/4", "crt_L/4", "xl_L/2"]
  for r in payload["runs"]:
    buckets = r["test_by_position"]
    assert [(b["from"], b["to"]) for b in buckets] == [(0, 8), (8, None)]
    assert sum(b["tokens"] for b in buckets) == r["test_tokens"]
    assert r["git_commit"] and "git_clean" in r
  assert payload["corpus"]["splits"]["test"]["documents"] == 2
  assert os.path.exists(tmp_path / "crt_scisumm_quick_by_position.png")


def test_early_stop_keeps_best_validation_state(tmp_path, monkeypatch):
  """Validation improves, then not: training stops after `patience` evaluations without a new best,
  the best state is kept and evaluated, and a rerun trains no further."""
  from srformer_jax.crt import train as lm_train
  cfg = lm_cfg(tmp_path)
  cfg.train.update(num_steps=10, eval_every=1, save_every=5, patience=2)
  script = iter([3.0, 2.5, 2.7, 2.6, 2.9, 2.2, 2.0])  # best at the 2nd evaluation; 2 worse ones follow
  real = lm_train.perplexity

  def scripted(model, params, ids, batch):
    out = real(model, params, ids, batch)
    return dict(out, nll=next(script), ppl=0.0)

  monkeypatch.setattr(lm_train, "perplexity", scripted)
  workdir = str(tmp_path / "run")
  last = lm_train.train(cfg, workdir)
  assert last["step"] == 4
  with open(os.path.join(workdir, "best.json")) as f:
    assert json.load(f)["step"] == 2
  with open(os.path.join(workdir, "stopped.json")) as f:
    assert json.load(f)["step"] == 4
  assert lm_train.train(cfg, workdir)["step"] == 4  # a rerun trains no further
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]
  monkeypatch.setattr(lm_train, "perplexity", real)
  best = lm_train.evaluate(cfg, workdir, splits=("valid",))
  latest = lm_train.evaluate(cfg, workdir, splits=("valid",), which="latest")
  assert (best["step"], best["checkpoint"]) == (2, "best")
  assert (latest["step"], latest["checkpoint"]) == (4, "latest")
  assert best["valid"]["nll"] != latest["valid"]["nll"]


def test_benchmark_aggregate_gate_and_claim():
  """Per-model intervals over seeds, and the gate / claim verdicts of benchmarks/crt_ptb.py."""
  from benchmarks import crt_ptb, stats
  flops = {"flops_per_token": 2.0, "flops_per_token_without_output_layer": 1.0}
  runs = []
  for name, ppls in (("full_L", (100.0, 101.0, 99.0)), ("segmented_L/4", (110.0, 111.0, 109.5)),
                     ("crt_L/4", (100.5, 101.5, 100.0))):
    runs += [dict(name=name, seed=k, context_len=64, segment_len=16, test_ppl=p, valid_ppl=p + 5, epochs=4.0,
                  train_tokens_per_s=1000.0, **flops) for k, p in enumerate(ppls)]
  agg = crt_ptb.aggregate(runs)
  full = next(m for m in agg["models"] if m["name"] == "full_L")
  assert full["test_ppl"]["mean"] == pytest.approx(100.0)
  assert full["test_ppl"]["hi"] - 100.0 == pytest.approx(stats.t975(2) * 1.0 / np.sqrt(3))
  assert agg["gate"]["64"]["holds"] and agg["gate"]["64"]["intervals_separated"]
  assert agg["claim"]["64"]["holds"]
  # the memory-less model only 2% worse: the gate fails, and the claim says nothing then
  for r in runs:
    if r["name"] == "segmented_L/4":
      r["test_ppl"] = r["test_ppl"] / 110.0 * 102.0
  agg = crt_ptb.aggregate(runs)
  assert not agg["gate"]["64"]["holds"]
  assert not agg["claim"]["64"]["holds"]


def test_stats_intervals():
  from benchmarks import stats
  ci = stats.mean_ci([1.0, 2.0, 3.0])
  assert ci["mean"] == 2.0 and ci["hi"] - 2.0 == pytest.approx(4.303 * 1.0 / np.sqrt(3))
  assert stats.mean_ci([5.0])["lo"] is None
  assert stats.separated({"lo": 0, "hi": 1}, {"lo": 1.5, "hi": 2})
  assert not stats.separated({"lo": 0, "hi": 1}, {"lo": 0.5, "hi": 2})
  assert not stats.separated({"lo": None, "hi": None}, {"lo": 1.5, "hi": 2})
  boot = stats.bootstrap_ci(np.arange(100.0))
  assert boot["lo"] < 49.5 < boot["hi"] and boot["hi"] - boot["lo"] < 20


@pytest.mark.parametrize("name", ["crt", "crt_raf", "xl"])
def test_bfloat16_compute_trains_with_a_float32_carry(name):
  """dtype="bfloat16" (mixed precision): the scanned window runs forward and backward, the carried
  memory stays float32 across segments, and the loss is close to the float32 model's."""
  config = tiny(**VARIANTS[name])
  model32, params = setup(config)
  model16 = stream.build_model(dataclasses.replace(config, dtype="bfloat16"))
  x = tokens(2, 3 * L)
  carry = init_carry(config, 2)

  def loss(model, p):
    ce, new = stream.scan_segments(model, p, x, carry, x, deterministic=True)
    return ce.mean(), new

  (l16, new16), g16 = jax.value_and_grad(lambda p: loss(model16, p), has_aux=True)(params)
  (l32, _), _ = jax.value_and_grad(lambda p: loss(model32, p), has_aux=True)(params)
  assert jax.tree.map(lambda a: a.dtype, new16) == jax.tree.map(lambda a: a.dtype, carry)
  assert all(bool(jnp.isfinite(g).all()) and g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
  np.testing.assert_allclose(float(l16), float(l32), rtol=2e-2)


def test_train_lm_killed_between_two_saves_resumes_as_uninterrupted(tmp_path):
  """A run killed after logging steps past its last checkpoint (here: checkpoint 4 saved, steps 5
  and 6 logged, checkpoint 6 lost) resumes from step 4 with metrics.jsonl trimmed back to it, and
  ends with the rows and the state of a run never interrupted."""
  import shutil
  from srformer_jax.crt import train as lm_train
  from tests.test_multiprocess import lm_params
  cfg = lm_cfg(tmp_path)
  cfg.train.update(num_steps=6, save_every=2, eval_every=3, keep_checkpoints=5)
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  lm_train.train(cfg, a)
  lm_train.train(cfg, b)
  shutil.rmtree(os.path.join(b, "checkpoints", "6"))  # the kill: step 6's save never finished
  rows = lambda w: [json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]  # noqa: E731
  assert [r["step"] for r in rows(b)] == list(range(1, 7))
  lm_train.train(cfg, b)
  got, want = rows(b), rows(a)
  assert [r["step"] for r in got] == list(range(1, 7))  # 5 and 6 logged once, by the resumed run
  for key in ("loss", "grad_norm", "param_norm", "epoch"):
    np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want], atol=1e-6, rtol=0)
  assert [r.get("valid_nll") is not None for r in got] == [False, False, True, False, False, True]
  jax.tree.map(np.testing.assert_array_equal, lm_params(cfg, b), lm_params(cfg, a))


def test_train_lm_py_diverging_exits_1_and_saves_no_nonfinite_state(tmp_path):
  """train_lm.py at learning rate 1e6: one line, exit 1, every checkpoint finite (the loop's
  divergence flag, as train.py's)."""
  import subprocess
  import sys
  from srformer_jax import checkpoint
  from tests.test_multiprocess import lm_params
  corpus = write_corpus(tmp_path)
  w = str(tmp_path / "run")
  flags = {"model.d_model": 16, "model.num_heads": 2, "model.d_ff": 32, "model.segment_len": 4,
           "model.relative_attention_num_buckets": 8, "train.segments_per_step": 2, "train.batch_size": 8,
           "train.num_steps": 8, "train.learning_rate": 1e6, "train.warmup_steps": 0, "train.log_every": 4,
           "train.save_every": 1, "train.eval_every": 0, "data.data_dir": corpus}
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "train_lm.py", "--config=configs/crt_ptb.py:half", f"--workdir={w}",
                        "--eval=false"] + [f"--config.{k}={v}" for k, v in flags.items()],
                       cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert out.returncode == 1, out.stderr[-3000:]
  lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and "training diverged: non-finite loss, gradient norm or parameters at step" in lines[0]
  bad = int(lines[0].split("at step ")[1].split()[0])
  from configs import crt_ptb
  cfg = crt_ptb.get_config("half")
  for k, v in flags.items():
    section, key = k.split(".")
    cfg[section][key] = v
  ck = checkpoint.Checkpointer(os.path.join(w, "checkpoints"))
  steps = ck.manager.all_steps()
  ck.close()
  assert steps and max(steps) == bad - 1
  params = lm_params(cfg, w)  # the newest, the state before the flagged step
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
