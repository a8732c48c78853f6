"""User errors: one line on stderr and a non-zero exit from every entry point (--verbose: the
traceback); the checks behind them; harmless library warnings kept out of the way."""

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from srformer_jax import data, entry, run_setup, summarize
from tests.test_api import run_cfg, trained_run  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")


def _run(args, stdin=None, cwd=REPO):
  return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, input=stdin,
                        env=ENV, timeout=120)


def _one_line_error(out, *needles):
  """The process failed with exactly one stderr line, which holds every needle."""
  assert out.returncode != 0, out.stderr[-2000:]
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, out.stderr[-3000:]
  for n in needles:
    assert n in lines[0], lines[0]
  return lines[0]


# ------------------------------------------------------------------------------------------------
# entry points (subprocesses)


def test_train_py_config_typo_suggests_the_field(tmp_path):
  out = _run(["train.py", f"--workdir={tmp_path / 'w'}", "--config.train.batchsize=3"])
  _one_line_error(out, "config.train has no field 'batchsize'", "did you mean config.train.batch_size?")
  verbose = _run(["train.py", f"--workdir={tmp_path / 'w'}", "--config.train.batchsize=3", "--verbose"])
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr


@pytest.mark.parametrize("value", ["0", "-4"])
def test_train_py_rejects_batch_size_before_reading_data(tmp_path, value):
  w = tmp_path / "w"
  out = _run(["train.py", f"--workdir={w}", f"--config.train.batch_size={value}"])
  _one_line_error(out, f"config.train.batch_size must be a positive integer, got {value}")
  assert not os.path.exists(w / "corpus")  # the docstring corpus was not even built


def test_train_py_missing_data_file_names_the_field(tmp_path):
  missing = str(tmp_path / "nope.jsonl")
  out = _run(["train.py", f"--workdir={tmp_path / 'w'}", "--config.data.source=jsonl",
              f"--config.data.train_split={missing}"])
  _one_line_error(out, repr(missing), "config.data.train_split")


def test_eval_py_without_a_run(tmp_path):
  out = _run(["eval.py", f"--workdir={tmp_path / 'nothing'}"])
  _one_line_error(out, "does not exist")
  (tmp_path / "empty").mkdir()
  out = _run(["eval.py", f"--workdir={tmp_path / 'empty'}"])
  _one_line_error(out, "run train.py first")


def test_eval_py_refuses_a_model_override_that_contradicts_the_run(trained_run, tmp_path):  # noqa: F811
  w, cfg, _ = trained_run
  assert cfg.model.scratch.d_model == 32
  out = _run(["eval.py", f"--workdir={w}", "--config.model.scratch.d_model=128"])
  _one_line_error(out, "--config.model.scratch.d_model=128", "config.model.scratch.d_model=32",
                  "contradicts")


def test_train_lm_py_one_line_error(tmp_path):
  out = _run(["train_lm.py", f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={tmp_path / 'no_ptb'}"])
  _one_line_error(out, "no corpus file at", "config.data.data_dir")


@pytest.mark.parametrize("script", ["train.py", "train_lm.py"])
def test_train_batch_that_does_not_split_over_the_devices(tmp_path, script):
  """A batch the data-parallel devices cannot share is one line, before any data is read (the
  missing PTB directory would be the error otherwise), not jax's IndivisibleError mid-step."""
  w = tmp_path / "w"
  args = [script, f"--workdir={w}", "--config.train.batch_size=3"]
  if script == "train_lm.py":
    args.append(f"--config.data.data_dir={tmp_path / 'no_ptb'}")
  out = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=dict(ENV, XLA_FLAGS="--xla_force_host_platform_device_count=2"))
  _one_line_error(out, "config.train.batch_size 3 does not split over the mesh's 2 data-parallel devices",
                  "a multiple of 2")
  assert not os.path.exists(w / "corpus")


def test_cli_empty_input_and_missing_run(trained_run, tmp_path):  # noqa: F811
  w = trained_run[0]
  out = _run(["-m", "srformer_jax.cli", "--workdir", w], stdin="  \n")
  _one_line_error(out, "stdin is empty")
  out = _run(["-m", "srformer_jax.cli", "--workdir", str(tmp_path / "nope")], stdin="a text")
  _one_line_error(out, "does not exist")
  # outside the repository too (the installed package, or PYTHONPATH)
  out = subprocess.run([sys.executable, "-m", "srformer_jax.cli", "--workdir", w], input="", text=True,
                       capture_output=True, cwd=str(tmp_path), timeout=120,
                       env=dict(ENV, PYTHONPATH=REPO))
  _one_line_error(out, "stdin is empty")


# ------------------------------------------------------------------------------------------------
# the checks behind them (in process)


def test_summarize_refuses_empty_text(trained_run):  # noqa: F811
  with pytest.raises(ValueError, match=r"texts\[0\] is empty"):
    summarize("", trained_run[0])
  with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
    summarize(["a text", " \n"], trained_run[0])


def test_unknown_field_suggests_the_closest():
  cfg = run_cfg("x.jsonl")
  assert entry.unknown_field(cfg, "train.batch_size") is None
  assert "did you mean config.model.scratch.d_model?" in entry.unknown_field(cfg, "model.scratch.dmodel")
  assert "config has no field 'trian'" in entry.unknown_field(cfg, "trian.batch_size")


def test_validate_config():
  cfg = run_cfg("x.jsonl")
  run_setup.validate_config(cfg)
  for path, value, msg in (("train.batch_size", 0, "must be a positive integer"),
                           ("decode.batch_size", -1, "must be a positive integer"),
                           ("train.grad_accum", 3, "must be a multiple of config.train.grad_accum")):
    bad = run_cfg("x.jsonl")
    section, key = path.split(".")
    bad[section][key] = value
    with pytest.raises(entry.ConfigError, match=msg):
      run_setup.validate_config(bad)


def test_copied_workdir_reuses_its_tokenised_cache(trained_run, tmp_path):  # noqa: F811
  w, cfg, _ = trained_run
  copy = str(tmp_path / "copy")
  shutil.copytree(w, copy, copy_function=shutil.copy)  # new modification times too
  assert run_setup.source_id(cfg, "train_split", copy) == run_setup.source_id(cfg, "train_split", w)
  tok = run_setup.build_tokenizer(cfg, copy)

  def no_source():
    raise AssertionError("the copied cache was not used: tokenising again")

  table = data.tokenized_split(no_source, tok, run_setup.batch_spec(cfg), os.path.join(copy, "tokenized"),
                               run_setup.source_id(cfg, "train_split", copy))
  assert len(table) == 24
  before = run_setup.source_id(cfg, "train_split", copy)
  with open(cfg.data.train_split) as f:
    original = f.read()
  try:
    with open(cfg.data.train_split, "a") as f:  # other content: another key
      f.write(json.dumps({"document": "one more", "summary": "more"}) + "\n")
    assert run_setup.source_id(cfg, "train_split", copy) != before
  finally:
    with open(cfg.data.train_split, "w") as f:
      f.write(original)


def test_tensorboardx_nan_warning_is_silenced(caplog):
  from srformer_jax import train_lib  # noqa: F401 (installs the filter)
  from tensorboardX import x2num
  with caplog.at_level(logging.WARNING):
    x2num.check_nan(np.array([np.nan]))
    logging.getLogger("tensorboardX.x2num").warning("another warning")
  assert [r.getMessage() for r in caplog.records] == ["another warning"]


def test_eval_py_no_usable_checkpoint(trained_run, tmp_path):  # noqa: F811
  w = str(tmp_path / "damaged")
  shutil.copytree(trained_run[0], w)
  step_dir = os.path.join(w, "checkpoints", "2")
  assert os.path.exists(os.path.join(step_dir, "checksums.json"))
  for root, _, names in os.walk(os.path.join(step_dir, "state")):
    for n in names:
      if os.path.getsize(os.path.join(root, n)) > 1000:  # the array chunks, cut in half
        with open(os.path.join(root, n), "r+b") as f:
          f.truncate(os.path.getsize(os.path.join(root, n)) // 2)
  out = _run(["eval.py", f"--workdir={w}"])
  _one_line_error(out, "no usable checkpoint in", "step 2")


# ------------------------------------------------------------------------------------------------
# the cases that reached a traceback (each one line, exit 1, before any work)


@pytest.mark.parametrize("override,needle", [
    ("--config.model.segment_size=0", "config.model.segment_size: segment_size must be a positive integer"),
    ("--config.model.segment_size=-4", "config.model.segment_size: segment_size must be a positive integer"),
    ("--config.model.raf_threshold_init=0", "config.model.raf_threshold_init: raf_threshold_init must be > 0"),
    ("--config.data.max_source_len=0", "config.data.max_source_len must be a positive integer"),
    ("--config.train.mesh_shape=(4,1,1)", "config.train.mesh_shape (4, 1, 1): mesh (4, 1, 1) needs 4 devices"),
    ("--config.model.kernels=gpu", "config.model.kernels: kernels must be one of"),
])
def test_train_py_invalid_model_data_or_mesh_field_is_one_line_before_any_work(tmp_path, override, needle):
  w = tmp_path / "w"
  out = _run(["train.py", f"--workdir={w}", override], cwd=REPO)
  assert out.returncode == 1
  _one_line_error(out, needle)
  assert not os.path.exists(w / "corpus")  # nothing was built or tokenised


def test_a_damaged_tokenizer_is_one_line_in_train_eval_and_the_cli(trained_run, tmp_path):  # noqa: F811
  w, cfg, _ = trained_run
  copy = tmp_path / "run"
  shutil.copytree(w, copy)
  spm = copy / "spm" / "spm.model"
  spm.write_bytes(spm.read_bytes()[:100])  # truncated
  data_file = cfg.data.train_split
  base = [f"--workdir={copy}", "--config.data.source=jsonl", f"--config.data.train_split={data_file}",
          f"--config.data.eval_split={data_file}", "--config.data.tokenizer=train_spm"]
  for args in (["eval.py", *base], ["-m", "srformer_jax.cli", f"--workdir={copy}"]):
    out = _run(args, stdin="Some text to summarize.")
    assert out.returncode == 1
    _one_line_error(out, "cannot be read", "spm.model")
  out = _run(["train.py", *base, "--config.train.num_steps=4"])
  assert out.returncode == 1
  _one_line_error(out, "cannot be read", "spm.model")


@pytest.mark.parametrize("script", ["train.py", "eval.py", "train_lm.py"])
def test_a_workdir_that_is_a_file_is_one_line(tmp_path, script):
  f = tmp_path / "not_a_dir"
  f.write_text("x")
  out = _run([script, f"--workdir={f}"])
  assert out.returncode == 1
  _one_line_error(out, "is a file, not a run directory")


def test_an_empty_eval_split_is_refused_before_training(tmp_path):
  train, empty = tmp_path / "train.jsonl", tmp_path / "empty.jsonl"
  train.write_text("".join(json.dumps({"document": f"doc {i} text", "summary": "sum"}) + "\n" for i in range(8)))
  empty.write_text(json.dumps({"document": "", "summary": ""}) + "\n")
  w = tmp_path / "w"
  args = ["train.py", f"--workdir={w}", "--config.data.source=jsonl", f"--config.data.train_split={train}",
          f"--config.data.eval_split={empty}", "--config.data.tokenizer=train_spm"]
  out = _run(args + ["--config.data.spm_vocab_size=40"])  # more pieces than 8 short lines make
  assert out.returncode == 1
  _one_line_error(out, "config.data.spm_vocab_size 40 does not fit the training text", "too high")
  out = _run(args + ["--config.data.spm_vocab_size=22"])
  assert out.returncode == 1
  # found after the training split was read (its log lines stand before), but before any step
  assert "Traceback" not in out.stderr
  errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, out.stderr[-3000:]
  line = errors[0]
  for needle in ("config.data.eval_split", "no usable examples", "read 1, kept 0; skipped: 1 empty"):
    assert needle in line, line
  assert "Stats(" not in line
  assert not os.path.exists(w / "checkpoints")  # found before any training


def test_eval_py_checks_overrides_against_the_model_when_there_is_no_run_config(trained_run, tmp_path):  # noqa: F811
  w, cfg, _ = trained_run
  copy = tmp_path / "old"
  shutil.copytree(w, copy)
  os.remove(copy / "run_config.json")
  data_file = cfg.data.train_split
  out = _run(["eval.py", f"--workdir={copy}", "--config.data.source=jsonl", f"--config.data.eval_split={data_file}",
              "--config.data.tokenizer=train_spm", "--config.model.segment_size=16"])
  assert out.returncode == 1
  _one_line_error(out, "--config.model.segment_size=16", "segment_size=8", "model_config.json", "contradicts")


def test_train_lm_py_invalid_model_field_is_one_line(tmp_path):
  out = _run(["train_lm.py", f"--workdir={tmp_path / 'w'}", "--config.model.segment_len=0"])
  assert out.returncode == 1
  _one_line_error(out, "config.model.segment_len: segment_len (L) must be positive")
