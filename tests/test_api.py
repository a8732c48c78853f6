"""The user-facing API: load_run / summarize / the CLI, the HF export's config, input validation."""

import dataclasses
import io
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from srformer_jax import (DecodeConfig, ModelConfig, api, build_model, data, eval_lib, generate_jit,
                          init_params, load_hf_checkpoint, load_run, save_hf_checkpoint, summarize,
                          run_setup, train_lib)
from srformer_jax.config import HF_FIELDS, SRFORMER_PREFIX
from srformer_jax.decoding import _generate_jitted

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the cat dog sat ran on under a mat tree house river saw big small red blue green old new "
         "man woman child went to from with and but then later quickly slowly home park city").split()


def _text(rng, n):
  return " ".join(rng.choice(WORDS, n)) + "."


def run_cfg(data_file):
  cfg = base.base_config()
  cfg.model.init_from = ""
  cfg.model.segment_size = 8
  cfg.model.scratch.update(d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=1,
                           num_decoder_layers=1, relative_attention_num_buckets=8)
  cfg.data.update(source="jsonl", train_split=data_file, eval_split=data_file, tokenizer="train_spm",
                  spm_vocab_size=60, max_source_len=32, max_target_len=8, max_eval_examples=8)
  cfg.train.update(batch_size=4, num_steps=2, learning_rate=3e-3, warmup_steps=1, log_every=1,
                   save_every=2, mesh_shape=(1, 1, 1))
  cfg.decode.update(num_beams=1, batch_size=4, max_len=0, no_repeat_ngram_size=0)
  return cfg


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A 2-step run of a tiny T5 SRformer on random word documents: (workdir, config, documents)."""
  d = tmp_path_factory.mktemp("run")
  rng = np.random.default_rng(0)
  docs = [_text(rng, 20) for _ in range(24)]
  with open(d / "data.jsonl", "w") as f:
    for doc in docs:
      f.write(json.dumps({"document": doc, "summary": _text(rng, 4)}) + "\n")
  cfg = run_cfg(str(d / "data.jsonl"))
  w = str(d / "w")
  train_lib.train(cfg, w)
  return w, cfg, docs


# ------------------------------------------------------------------------------------------------
# load_run / summarize / CLI


def test_load_run_reads_the_saved_config(trained_run):
  w, cfg, _ = trained_run
  run = load_run(w)
  assert json.loads(run.config.to_json_best_effort()) == json.loads(cfg.to_json_best_effort())
  with open(os.path.join(w, "model_config.json")) as f:
    assert run.model_config == ModelConfig.from_dict(json.load(f))
  assert run.decode_config == DecodeConfig(max_len=8, length_penalty=2.0)
  # the parameters of the last step: the train step measured their norm on the device (metrics.jsonl)
  with open(os.path.join(w, "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f][-1]
  assert last["step"] == cfg.train.num_steps
  np.testing.assert_allclose(float(optax.global_norm(run.params)), last["param_norm"], rtol=1e-6)


def test_load_run_without_saved_config_needs_one(trained_run, tmp_path):
  w, cfg, _ = trained_run
  import shutil
  copy = str(tmp_path / "old_run")
  shutil.copytree(w, copy)
  os.remove(os.path.join(copy, "run_config.json"))
  with pytest.raises(FileNotFoundError, match="pass config="):
    load_run(copy)
  run = load_run(copy, config=cfg)
  assert run.model_config.cross_attention == "srformer"
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_run(str(tmp_path / "nope"))


def _eval_decode(run, docs, dc):
  """What evaluation does (eval_lib.evaluate's loop) for these documents."""
  out = []
  for batch, _, n in data.eval_batches(data.ListSource([(d, "") for d in docs]), run.tokenizer,
                                       run_setup.batch_spec(run.config, run.config.decode.batch_size)):
    tokens = generate_jit(run.model, run.params, batch["input_ids"], batch["attention_mask"], dc)
    out += [run.tokenizer.decode(r) for r in np.asarray(tokens)[:n]]
  return out


def test_summarize_equals_evaluation_and_compiles_once_per_bucket(trained_run):
  w, _, docs = trained_run
  run = load_run(w)
  expected = _eval_decode(run, docs[:8], run.decode_config)  # 2 batches of decode.batch_size=4
  before = _generate_jitted._cache_size()
  assert summarize(docs[:8], run) == expected
  # 7 texts: batches of 4 and 3 rows, both padded to 4 rows: the shape evaluation compiled
  assert summarize(docs[:7], run) == expected[:7]
  assert _generate_jitted._cache_size() == before
  one = summarize(docs[0], run)  # one string in, one string out; a batch of 1 row
  assert isinstance(one, str) and _generate_jitted._cache_size() == before + 1
  assert summarize([], run) == []
  # decode overrides replace the config's settings
  dc = dataclasses.replace(run.decode_config, max_len=2)
  assert summarize(docs[:4], run, max_len=2) == _eval_decode(run, docs[:4], dc)


def test_summarize_argument_errors(trained_run):
  run = load_run(trained_run[0])
  with pytest.raises(ValueError, match="batch_size must be >= 1"):
    summarize(["a text"], run, batch_size=0)
  with pytest.raises(TypeError, match=r"unknown decode settings \['beams'\]"):
    summarize(["a text"], run, beams=2)
  with pytest.raises(ValueError, match="length_penalty must be a finite number"):
    summarize(["a text"], run, length_penalty=float("nan"))
  with pytest.raises(TypeError, match=r"texts\[1\] is a int"):
    summarize(["a text", 3], run)


def test_cli_summarizes_files_and_stdin(trained_run, tmp_path, monkeypatch):
  w, _, docs = trained_run
  files = []
  for i, doc in enumerate(docs[:3]):
    files.append(str(tmp_path / f"doc{i}.txt"))
    with open(files[-1], "w") as f:
      f.write(doc[:40] + "\n" + doc[40:])  # a document over two lines is still one document
  out = subprocess.run([sys.executable, "-m", "srformer_jax.cli", "--workdir", w, *files],
                       cwd=REPO, capture_output=True, text=True, check=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
  run = load_run(w)
  expected = summarize([doc[:40] + "\n" + doc[40:] for doc in docs[:3]], run)
  assert out.stdout.splitlines() == [s.replace("\n", " ") for s in expected]
  # stdin: whole input is one document, or one per non-empty line with --lines
  from srformer_jax.cli import read_documents
  monkeypatch.setattr(sys, "stdin", io.StringIO("first line\n\nsecond line\n"))
  assert read_documents([], lines=False) == ["first line\n\nsecond line\n"]
  monkeypatch.setattr(sys, "stdin", io.StringIO("first line\n\nsecond line\n"))
  assert read_documents(["-"], lines=True) == ["first line", "second line"]


# ------------------------------------------------------------------------------------------------
# HF export keeps every ModelConfig field


def _changed(value, name):
  """A valid value of a ModelConfig field that differs from `value`."""
  # faithful stays False here (it excludes segment_schedule="length"); the export test below
  # round-trips faithful=True
  choices = dict(cross_attention="xl", dtype="bfloat16", feed_forward_proj="gated-silu",
                 activation_function="relu", segment_schedule="length", faithful=False)
  if name in choices:
    return choices[name]
  if isinstance(value, bool):
    return not value
  if isinstance(value, int):
    return value + 3
  if isinstance(value, float):
    return value + 0.25
  if value is None:
    return 3
  return None  # a type this test does not know: only checked structurally below


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_hf_config_keeps_every_field(arch):
  base_cfg = ModelConfig(arch=arch, vocab_size=50, d_model=16, num_heads=2, d_kv=8, d_ff=32,
                         num_encoder_layers=1, num_decoder_layers=2)
  changes = {}
  for f in dataclasses.fields(ModelConfig):
    new = _changed(getattr(base_cfg, f.name), f.name)
    if f.name != "arch" and new is not None:
      changes[f.name] = new
  cfg = dataclasses.replace(base_cfg, **changes)
  hf = cfg.to_hf()
  for f in dataclasses.fields(ModelConfig):  # every field is written, under HF's name or ours
    assert f.name == "arch" or f.name in HF_FIELDS[arch] or SRFORMER_PREFIX + f.name in hf, f.name
  back = ModelConfig.from_hf(json.loads(json.dumps(hf)))
  assert dataclasses.asdict(back) == dataclasses.asdict(cfg)


def test_hf_export_roundtrip_keeps_fields_and_greedy_output(tmp_path):
  cfg = ModelConfig(arch="t5", vocab_size=64, d_model=32, num_heads=4, d_kv=8, d_ff=64,
                    num_encoder_layers=1, num_decoder_layers=1, relative_attention_num_buckets=8,
                    cross_attention="srformer", segment_size=4, gen_len=3, faithful=True,
                    raf_threshold_init=0.05, raf_leak_init=0.3, raf_weight_init_std=0.5)
  params = init_params(cfg, jax.random.key(3))
  out = save_hf_checkpoint(params, cfg, tmp_path / "export")
  cfg2, params2, initialised = load_hf_checkpoint(out)
  assert initialised == []
  assert dataclasses.asdict(cfg2) == dataclasses.asdict(cfg)
  rng = np.random.default_rng(0)
  ids = rng.integers(2, 64, (4, 23)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 9:] = 0
  dc = DecodeConfig(max_len=10)
  a = generate_jit(build_model(cfg), params, ids, mask, dc)
  b = generate_jit(build_model(cfg2), params2, ids, mask, dc)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------------------------
# input validation


@pytest.fixture(scope="module")
def tiny():
  cfg = ModelConfig(arch="t5", vocab_size=64, d_model=32, num_heads=4, d_kv=8, d_ff=64,
                    num_encoder_layers=1, num_decoder_layers=1, relative_attention_num_buckets=8,
                    cross_attention="srformer", segment_size=4, gen_len=4)
  return build_model(cfg), init_params(cfg, jax.random.key(0))


def _ids(b=2, k=9, seed=0):
  return np.random.default_rng(seed).integers(2, 64, (b, k)).astype(np.int32)


def test_out_of_vocabulary_ids_are_refused(tiny):
  model, params = tiny
  ids, dec = _ids(), _ids(k=3)
  for bad, msg in ((64, r"input_ids holds token id 64, but the model's vocabulary has 64"),
                   (-1, r"input_ids holds the negative token id -1")):
    wrong = ids.copy()
    wrong[1, 4] = bad
    with pytest.raises(ValueError, match=msg):
      model.apply({"params": params}, wrong, None, dec)
    with pytest.raises(ValueError, match=msg):
      generate_jit(model, params, jnp.asarray(wrong), None, DecodeConfig(max_len=3))
  wrong = dec.copy()
  wrong[0, 0] = 100
  with pytest.raises(ValueError, match="decoder_input_ids holds token id 100"):
    model.apply({"params": params}, ids, None, wrong)


def test_attention_mask_none_means_all_ones(tiny):
  model, params = tiny
  ids, dec = _ids(), _ids(k=3)
  ones = np.ones_like(ids)
  np.testing.assert_array_equal(model.apply({"params": params}, ids, None, dec),
                                model.apply({"params": params}, ids, ones, dec))
  dc = DecodeConfig(max_len=4)
  np.testing.assert_array_equal(generate_jit(model, params, ids, None, dc),
                                generate_jit(model, params, ids, ones, dc))
  with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 5\) but input_ids has \(2, 9\)"):
    model.apply({"params": params}, ids, ones[:, :5], dec)


@pytest.mark.parametrize("shape,msg", [((2, 0), "input_ids has length 0"),
                                       ((0, 9), "input_ids has batch size 0"),
                                       ((9,), r"shape \[batch, length\].*add a batch axis")])
def test_empty_and_misshaped_inputs(tiny, shape, msg):
  model, params = tiny
  ids = np.full(shape, 3, np.int32)
  dec = _ids(k=3)
  with pytest.raises(ValueError, match=msg):
    model.apply({"params": params}, ids, None, dec)
  with pytest.raises(ValueError, match=msg):  # at trace time, inside jit too
    jax.jit(lambda p, i: model.apply({"params": p}, i, None, dec))(params, ids)
  with pytest.raises(ValueError, match=msg):
    generate_jit(model, params, ids, None, DecodeConfig(max_len=3))


def test_float_ids_name_the_argument(tiny):
  model, params = tiny
  ids, dec = _ids(), _ids(k=3)
  with pytest.raises(TypeError, match="input_ids must be integer token ids, got dtype float32"):
    model.apply({"params": params}, ids.astype(np.float32), None, dec)
  with pytest.raises(TypeError, match="decoder_input_ids must be integer token ids"):
    jax.jit(lambda p: model.apply({"params": p}, ids, None, dec.astype(np.float32)))(params)
  with pytest.raises(TypeError, match="input_ids must be integer token ids"):
    generate_jit(model, params, ids.astype(np.float32), None, DecodeConfig(max_len=3))
  with pytest.raises(TypeError, match="dc must be a DecodeConfig"):
    generate_jit(model, params, ids, None, {"max_len": 3})


@pytest.mark.parametrize("kw,err,msg", [
    (dict(length_penalty=math.nan), ValueError, "length_penalty must be a finite number"),
    (dict(length_penalty=math.inf), ValueError, "length_penalty must be a finite number"),
    (dict(no_repeat_ngram_size=-1), ValueError, "no_repeat_ngram_size must be >= 0"),
    (dict(min_len=-1), ValueError, "min_len must be >= 0"),
    (dict(max_len=0), ValueError, "max_len must be >= 1"),
    (dict(max_len=8.0), TypeError, "max_len must be an int"),
    (dict(num_beams=0), ValueError, "num_beams must be >= 1"),
    (dict(max_len=4, min_len=5), ValueError, "min_len 5 > max_len 4"),
    (dict(early_stopping="yes"), TypeError, "early_stopping must be True or False"),
    (dict(ngram_scope_ids=[5, 6]), TypeError, "ngram_scope_ids must be a tuple of token ids"),
])
def test_decode_config_validates(kw, err, msg):
  with pytest.raises(err, match=msg):
    DecodeConfig(**kw)


def test_public_names():
  import srformer_jax
  for name in ("load_run", "summarize", "Run"):
    assert name in srformer_jax.__all__
  for name in srformer_jax.__all__:  # every public name is there and says what it is
    assert (getattr(srformer_jax, name).__doc__ or "").strip(), name


def test_package_dependencies_are_the_runtime_requirements():
  """pyproject's dependencies (pip install -e .) lower-bound what requirements.txt pins for runtime."""
  import tomllib  # pyproject requires Python 3.11
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)
  assert project["build-system"]["build-backend"] == "setuptools.build_meta"
  with open(os.path.join(root, "requirements.txt")) as f:
    runtime = f.read().split("# Tests")[0]
  pinned = [line.split("#")[0].strip() for line in runtime.splitlines()]
  pinned = sorted(p.replace("==", ">=") for p in pinned if p)
  assert sorted(project["project"]["dependencies"]) == pinned


def test_ngram_ban_restarts_after_the_separator():
  """Joined summaries (benchmarks/long_dialogsum.py): with ngram_scope_ids, each part may repeat the
  n-grams of the parts before it, and the separator comes back however often, while an n-gram
  repeated inside one part is still banned. Without it (HF's ban) a second separator is banned."""
  from srformer_jax.decoding import _ban_repeated_ngrams
  sep = (7, 8)
  # tokens 3 4 | 7 8 | 3 4 | 7 8 ... : part 1 "3 4", separator, part 2 "3" so far
  seqs = jnp.asarray([[3, 4, 7, 8, 3, 0, 0, 0, 0, 0]])
  logits = jnp.zeros((1, 10))
  ban = lambda t, ids=(): np.asarray(_ban_repeated_ngrams(logits, seqs, t, 2, ids))[0] < -1  # noqa: E731
  assert ban(5)[4] and not ban(5, sep)[4]  # "3 4" again: banned across the whole output, free in part 2
  seqs = jnp.asarray([[3, 4, 7, 8, 5, 6, 3, 4, 5, 0]])
  assert ban(9, sep)[6]  # "5 6" again inside part 2: still banned
  seqs = jnp.asarray([[3, 4, 7, 8, 5, 6, 7, 0, 0, 0]])  # a second separator, half written:
  assert ban(7)[8] and not ban(7, sep)[8]  # HF's rule bans its end ("7 8" again), the scope does not
  assert DecodeConfig(ngram_scope_ids=sep).ngram_scope_ids == sep


def test_ngram_scope_separator_becomes_the_ids_between_words(trained_run):
  run = load_run(trained_run[0])
  ids = eval_lib.separator_ids(run.tokenizer, "###")
  assert ids and run.tokenizer.eos_id not in ids
  text = run.tokenizer.encode("a short summary. ### another one.")
  assert any(tuple(text[i:i + len(ids)]) == ids for i in range(len(text)))
  cfg = run.config.copy_and_resolve_references()
  cfg.decode.ngram_scope_separator = "###"
  assert eval_lib.decode_config(cfg, run.tokenizer).ngram_scope_ids == ids
  with pytest.raises(ValueError, match="pass the run's tokenizer"):
    eval_lib.decode_config(cfg)
