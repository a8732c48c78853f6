"""benchmarks/reproduce_cells.py: a finished run trained and decoded again with the code as it is,
compared exactly with what the run wrote."""

import json
import os

import numpy as np
import pytest

from benchmarks import reproduce_cells
from configs import base
from srformer_jax import data, eval_lib, train_lib

WORDS = "the cat dog sat ran on under a mat tree house river saw big small red blue green old new".split()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A 4-step run of a tiny SRformer (jsonl data, a SentencePiece file), evaluated: the shape of a
  grid cell's workdir."""
  d = tmp_path_factory.mktemp("cell")
  rng = np.random.default_rng(0)
  rows = [{"document": " ".join(rng.choice(WORDS, 20)), "summary": " ".join(rng.choice(WORDS, 4))}
          for _ in range(24)]
  with open(d / "data.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  spm = data.train_sentencepiece([t for r in rows for t in r.values()], str(d / "spm"), 40, seed=0)
  cfg = base.base_config()
  cfg.model.update(init_from="", segment_size=8)
  cfg.model.scratch.update(d_model=32, num_heads=2, d_kv=16, d_ff=64, num_encoder_layers=1,
                           num_decoder_layers=1, relative_attention_num_buckets=8)
  cfg.data.update(source="jsonl", train_split=str(d / "data.jsonl"), eval_split=str(d / "data.jsonl"),
                  tokenizer=f"spm:{spm}", max_source_len=32, max_target_len=8, max_eval_examples=8)
  cfg.train.update(batch_size=4, num_steps=4, learning_rate=3e-3, warmup_steps=1, log_every=2,
                   save_every=4, mesh_shape=(1, 1, 1))
  cfg.decode.update(num_beams=2, batch_size=4, max_len=0)
  w = str(d / "run")
  train_lib.train(cfg, w)
  eval_lib.evaluate(cfg, w)
  return w


def _rewrite(path, edit):
  with open(path) as f:
    rows = [json.loads(line) for line in f]
  edit(rows)
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def test_a_run_reproduces_and_a_changed_one_is_caught(finished_run, tmp_path):
  r = reproduce_cells.check_cell(finished_run, 2, str(tmp_path))
  assert r["train_identical"], (r["train_then"], r["train_now"])
  assert r["predictions_identical"] and r["examples"] == 8 and r["rouge1_now"] == r["rouge1_then"]
  assert set(r["train_now"]) == set(reproduce_cells.TRAIN_FIELDS) and None not in r["train_now"].values()

  # what the run wrote differs from today's numbers by one float32 ulp in a loss, one prediction
  def nudge_loss(rows):
    row = next(x for x in rows if x["step"] == 2)
    row["loss"] = float(np.nextafter(np.float32(row["loss"]), np.float32(np.inf)))

  def change_prediction(rows):
    rows[3]["prediction"] += " cat"

  _rewrite(os.path.join(finished_run, "metrics.jsonl"), nudge_loss)
  _rewrite(os.path.join(finished_run, "predictions.jsonl"), change_prediction)
  r = reproduce_cells.check_cell(finished_run, 2, str(tmp_path))
  assert not r["train_identical"] and r["predictions_differing"] == 1 and not r["predictions_identical"]
  with pytest.raises(ValueError, match="no record of step 3"):
    reproduce_cells.check_cell(finished_run, 3, str(tmp_path))


def test_one_cell_per_kind_seed_0_smallest_s(tmp_path):
  cells, runs = tmp_path / "cells", tmp_path / "runs"
  cells.mkdir()
  for kind, s, seed, steps in (("full", None, 0, None), ("full", None, 1, None), ("srformer", 64, 0, None),
                               ("srformer", 8, 0, None), ("srformer", 8, 0, 3000), ("xl", 8, 0, None)):
    name = f"{kind}_s{s}_seed{seed}_{steps}"
    (cells / f"{name}.json").write_text(json.dumps(dict(kind=kind, s=s, seed=seed, num_steps=steps,
                                                        schedule="padded", git_commit="c0ffee")))
    if kind != "xl":  # xl's workdir is gone: nothing to train again
      (runs / name).mkdir(parents=True)
  got = [c["name"] for c in reproduce_cells.select(str(cells), str(runs))]
  assert got == ["full_sNone_seed0_None", "srformer_s8_seed0_None"]


def test_report_counts_the_cells_that_reproduce(tmp_path):
  from benchmarks import report
  assert report.render("grid_reproduce", str(tmp_path)).startswith("(not checked yet")

  def rec(kind, s, train, differing):
    return dict(kind=kind, s=s, schedule="padded", cell_commit="4ae782d" + "0" * 33, train_identical=train,
                predictions_identical=differing == 0, predictions_differing=differing, examples=500,
                rouge1_then=28.5, rouge1_now=28.5 if differing == 0 else 28.4)

  (tmp_path / "grid_reproduce_cpu.json").write_text(json.dumps(dict(
      steps=25, git_commit="abcdef1" + "0" * 33, machine={"cpu": "x86_64", "cpu_count": 2},
      records=[rec("srformer", 8, True, 0), rec("pooled", 8, True, 3), rec("full", None, False, 0)])))
  out = report.render("grid_reproduce", str(tmp_path))
  assert "**1 of 3**" in out and "code at abcdef1" in out and "ran at 4ae782d" in out
  assert "**3 differ**" in out and "**differs**" in out and "28.50 / 28.40" in out
