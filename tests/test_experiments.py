"""The experiments' own logic, without training: the grids' verdict rules, the long-input task and the
long-document corpus (built from small generated files)."""

import json

import numpy as np
import pytest

from benchmarks import long_dialogsum, scisumm_lm, sweep_stats

PAPER_S64 = {"srformer": 39.39, "recurrent_only": 36.86, "no_norm": 36.77, "no_raf": 35.84, "kv_segment": 29.72}


def _cell(kind, s, seed, r1, dev=None, commit="c0ffee", clean=True, steps=1500):
  group = sweep_stats.name(kind, s)
  return {"kind": kind, "s": s, "schedule": "padded", "seed": seed, "group": group,
          "name": group + (f"_seed{seed}" if seed else ""), "rouge1": r1 + 0.2 * seed,
          "rouge1_dev": (dev if dev is not None else r1) + 0.2 * seed, "steps": steps,
          "git_commit": commit, "git_clean": clean}


def _by(cells):
  return sweep_stats.by_group(sweep_stats.aggregate(cells))


def test_claim_holds_only_when_every_test_passes_and_names_what_is_missing():
  cells = [_cell("full", None, i, 30) for i in range(3)] + [_cell("segmented", 8, i, 25) for i in range(3)]
  v = sweep_stats.claim_at(_by(cells), 8)
  assert v["segmented_below_full"] and not v["complete"] and not v["holds"]
  cells += [_cell("srformer", 8, i, 28.5) for i in range(3)] + [_cell("xl", 8, i, 26) for i in range(3)]
  v = sweep_stats.claim_at(_by(cells), 8)
  assert v["holds"] and v["srformer_vs_full"] == pytest.approx(28.7 / 30.2)
  # srformer below 0.9 x full: the claim fails although the ordering holds
  low = [c for c in cells if c["kind"] != "srformer"] + [_cell("srformer", 8, i, 26.5) for i in range(3)]
  v = sweep_stats.claim_at(_by(low), 8)
  assert v["complete"] and v["srformer_above_segmented"] and not v["srformer_within_10pct_of_full"]
  assert not v["holds"] and v["xl_between"]  # 26.2 lies between 25.2 and 26.7
  # the dev split is judged on its own numbers
  dev = [dict(c, rouge1_dev=25.0 + 0.2 * c["seed"]) for c in cells]
  assert not sweep_stats.claim_at(_by(dev), 8, "rouge1_dev")["segmented_below_full"]


def test_shape_needs_a_flat_srformer_and_a_collapsing_segmented():
  cells = [_cell("srformer", s, 0, r) for s, r in ((8, 28.0), (16, 28.5), (32, 29.0), (64, 29.5))]
  cells += [_cell("segmented", 8, 0, 25.0), _cell("segmented", 64, 0, 28.5)]
  v = sweep_stats.shape(_by(cells), (8, 16, 32, 64))
  assert v["srformer_spread"] == pytest.approx(1.5) and v["segmented_drop"] == pytest.approx(3.5) and v["holds"]
  flat_seg = [c for c in cells if c["group"] != "segmented_s64_padded"] + [_cell("segmented", 64, 0, 27.0)]
  assert not sweep_stats.shape(_by(flat_seg), (8, 16, 32, 64))["holds"]
  partial = [c for c in cells if c["s"] != 16]
  assert not sweep_stats.shape(_by(partial), (8, 16, 32, 64))["complete"]


def test_table4_compares_srformer_with_each_ablation_and_orders_them():
  cells = [_cell("srformer", 64, i, 30) for i in range(3)]
  for kind, r1 in (("recurrent_only", 27), ("no_norm", 28), ("no_raf", 26), ("kv_segment", 25)):
    cells += [_cell(kind, 64, i, r1) for i in range(3)]
  v = sweep_stats.table4(_by(cells), 64, PAPER_S64)
  assert v["holds"] and v["order"] == ["no_norm", "recurrent_only", "no_raf", "kv_segment"]
  assert v["paper_order"] == ["recurrent_only", "no_norm", "no_raf", "kv_segment"] and not v["same_order_as_paper"]
  close = [c for c in cells if c["kind"] != "no_norm"] + [_cell("no_norm", 64, i, 29.9) for i in range(3)]
  v = sweep_stats.table4(_by(close), 64, PAPER_S64)
  assert v["complete"] and not v["srformer_above"]["no_norm"] and not v["holds"]


def test_one_commit_keeps_the_clean_majority_and_names_the_rest():
  cells = [_cell("full", None, i, 30) for i in range(3)] + [_cell("segmented", 8, 0, 25, commit="beef-dirty"),
                                                            _cell("xl", 8, 0, 26, clean=False)]
  commit, kept, other = sweep_stats.one_commit(cells)
  assert commit == "c0ffee" and len(kept) == 3 and {c["kind"] for c in other} == {"segmented", "xl"}
  assert sweep_stats.one_commit([cells[3]])[0] is None


def test_report_renders_the_grid_from_one_commit(tmp_path):
  from benchmarks import report
  cells = [_cell("full", None, i, 30) for i in range(3)] + [_cell("segmented", 8, i, 25) for i in range(3)]
  cells += [_cell("srformer", 8, i, 28.5) for i in range(3)] + [_cell("xl", 8, i, 26) for i in range(3)]
  cells.append(_cell("segmented", 64, 0, 29, commit="0ld"))
  for c in cells:
    c.update(eval_examples=500, dev_examples=500, rouge1_per_example=[c["rouge1"]] * 4,
             source_gain=0.5, distinct_predictions=480, test_loss=3.0)
  payload = {"overrides": {"train.num_steps": 1500, "train.batch_size": 16, "train.learning_rate": 1e-3,
                           "train.warmup_steps": 50},
             "paper_t5_small_cnndm": {"full": 41.6, "segmented": {"8": 17.27, "64": 33.31},
                                      "srformer": {"8": 39.14, "64": 39.39}, "ablations_s64": PAPER_S64},
             "cells": cells, "cells_planned": [c["name"] for c in cells] + ["more"], "machine": "test machine"}
  (tmp_path / f"{report.GRID}.json").write_text(json.dumps(payload))
  out = report.render("grid_fig4", str(tmp_path))
  assert "12 of 14 planned cells" in out and "commit c0ffee" in out and "segmented_s64_padded (0ld)" in out
  assert "- s = 8, test: **holds**" in out and "- s = 64, test: incomplete" in out
  # one row per s, a column per kind and split: segmented, xl and srformer at s = 8 (3 seeds each)
  assert "| 8 | 3 | 25.20 [" in out and "| 26.20 [" in out and "| 28.70 [" in out and "| 17.27 / 39.14 |" in out
  assert "\n| 64 |" not in out  # segmented s = 64 ran at another commit: no row
  assert "Full attention (no segments): test 30.20 [" in out and "3 seeds; the paper's 41.60." in out
  assert "**does not hold**" not in out
  assert "incomplete" in report.render("grid_table4", str(tmp_path))
  # the budget at s = 8: srformer's distance to full on both splits (30.2 - 28.7 test, same on dev)
  budget = report.render("grid_budget", str(tmp_path))
  assert "1500 steps 1.50 / 1.50" in budget and "| full | – | 30.20 [" in budget


def _long_payload(cells, planned_extra=()):
  for c in cells:
    c.update(eval_examples=500, dev_examples=500, rouge1_per_example=[c["rouge1"]] * 4,
             rouge1_dev_per_example=[c["rouge1_dev"]] * 4, test_loss=3.0,
             rouge1_by_position=[c["rouge1"] + 4 - i for i in range(4)],
             rouge1_dev_by_position=[c["rouge1_dev"] - i for i in range(4)],
             source_gain_by_position=[0.8 - 0.2 * i for i in range(4)])
    c.setdefault("source_gain", 0.6)
    c.setdefault("distinct_predictions", 490)
  return {"overrides": {"train.num_steps": 1000, "train.batch_size": 8, "train.learning_rate": 1e-3,
                        "train.warmup_steps": 50, "data.max_source_len": 1024, "data.max_target_len": 256,
                        "decode.num_beams": 2, "decode.no_repeat_ngram_size": 4},
          "cells": cells, "cells_planned": [c["name"] for c in cells] + list(planned_extra), "machine": "test machine"}


def test_long_grid_gate_rule_and_positions(tmp_path):
  from benchmarks import report
  cells = [_cell("full", None, i, 30) for i in range(3)] + [_cell("segmented", 8, i, 25) for i in range(3)]
  cells += [_cell("srformer", 8, i, 28.5) for i in range(3)] + [_cell("xl", 8, i, 31) for i in range(3)]
  # per position: one interval per position over the seeds
  by = _by([dict(c) for c in _long_payload([dict(c) for c in cells])["cells"]])
  pos = by["full"]["rouge1_by_position"]
  assert [p["mean"] for p in pos] == pytest.approx([34.2, 33.2, 32.2, 31.2]) and pos[0]["n"] == 3
  # the long rule leaves xl out: xl above srformer does not fail it (the 1500-step grid's rule would)
  assert sweep_stats.claim_at(by, 8, with_xl=False)["holds"] and not sweep_stats.claim_at(by, 8)["holds"]
  payload = _long_payload([dict(c) for c in cells], planned_extra=["segmented_s64_padded"])
  (tmp_path / f"{report.LONG}.json").write_text(json.dumps(payload))
  out = report.render("long_dialogsum", str(tmp_path))
  assert "12 of 13 planned cells" in out and "gate: **passes**" in out
  assert "- s = 8, test: **holds**" in out and "- s = 64, test: incomplete" in out
  assert "| full | – | 3 | 30.20 [" in out and "34.2 / 33.2 / 32.2 / 31.2" in out
  assert "| 0.80 / 0.60 / 0.40 / 0.20 |" in out  # the source gain of each summary's tokens
  assert "Not run yet (1): segmented_s64_padded." in out
  assert "claim at s = 8: **holds**" in report.render("glance_long_dialogsum", str(tmp_path))
  # a full attention that does not read its source: the gate fails and the comparison says so
  blind = [dict(c, source_gain=0.1) if c["kind"] == "full" else dict(c) for c in cells]
  (tmp_path / f"{report.LONG}.json").write_text(json.dumps(_long_payload(blind)))
  out = report.render("long_dialogsum", str(tmp_path))
  assert "gate: **fails**" in out and "not a comparison" in out
  glance = report.render("glance_long_dialogsum", str(tmp_path))
  assert "Gate fails, so the claim is not judged" in glance and "claim at s = 8" not in glance
  # a grid planned at s = 8 alone reports no rule at s = 64
  (tmp_path / f"{report.LONG}.json").write_text(json.dumps(_long_payload([dict(c) for c in cells])))
  out = report.render("long_dialogsum", str(tmp_path))
  assert "- s = 8, test:" in out and "s = 64" not in out


def test_long_grid_cells_and_its_cut():
  from benchmarks import segment_sweep
  designed = dict(segment_sweep.PRESETS["long1024"], seeds=(0, 1, 2), large_s_seeds=(0,))
  names = [c["name"] for c in segment_sweep.cells_long(designed)]
  assert len(names) == 15 and names[:4] == ["full", "segmented_s8_padded", "srformer_s8_padded", "xl_s8_padded"]
  assert names[-3:] == ["segmented_s64_padded", "srformer_s64_padded", "xl_s64_padded"]
  # no seeds at the largest s: the smallest s alone (the grid as cut once its gate failed)
  cut = segment_sweep.cells_long(dict(designed, seeds=(0,), large_s_seeds=()))
  assert [c["name"] for c in cut] == names[:4]


def test_long_dialogsum_puts_every_evaluation_dialogue_once_at_each_position():
  groups = long_dialogsum.eval_groups(500, seed=1)
  assert groups.shape == (500, 4)
  for i in range(4):
    assert sorted(groups[:, i]) == list(range(500))  # each dialogue once at position i
  assert all(len(set(g)) == 4 for g in groups)  # four different dialogues in an input
  train = long_dialogsum.train_groups(10, regroupings=3, seed=0)
  assert train.shape == (6, 4) and all(len(set(train[r * 2:(r + 1) * 2].ravel())) == 8 for r in range(3))
  with pytest.raises(ValueError, match="does not split"):
    long_dialogsum.eval_groups(10, seed=0)


def test_long_dialogsum_positions_round_trip():
  rows = [{"dialogue": f"d{i}", "summary": f"summary {i}."} for i in range(4)]
  e = long_dialogsum.joined(rows, np.asarray([[2, 0, 3, 1]]), "summary")[0]
  assert long_dialogsum.split_positions(e["summary"]) == ["summary 2.", "summary 0.", "summary 3.", "summary 1."]
  assert long_dialogsum.split_positions("one ### two") == ["one", "two", "", ""]


def test_scisumm_corpus_splits_by_document_with_a_train_vocabulary(tmp_path):
  rng = np.random.default_rng(0)
  words = [f"w{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(60)]
  src = tmp_path / "src.jsonl"
  with open(src, "w") as f:
    for d in range(30):
      text = " ".join(rng.choice(words, 80)) + " In 2019, we got 3.5% (p < 0.01)."
      f.write(json.dumps({"id": f"D{d:02d}", "article": text if d != 7 else "too short"}) + "\n")
  stats = scisumm_lm.build(str(tmp_path / "out"), str(src), valid_docs=3, test_docs=3, vocab_size=40, min_words=50)
  assert stats["documents_left_out"] == 1
  docs = stats["documents"]
  assert len(docs["valid"]) == len(docs["test"]) == 3 and len(docs["train"]) == 23
  assert not set(docs["train"]) & (set(docs["valid"]) | set(docs["test"]))
  lines = (tmp_path / "out" / "scisumm.train.txt").read_text().splitlines()
  assert len(lines) == 23  # one document a line: the reader's <eos> ends each document
  vocab = {w for line in lines for w in line.split()}
  assert len(vocab - {"<unk>"}) <= 40 and "<unk>" in vocab
  assert scisumm_lm.tokenize("In 2019, we got 3.5% (p < 0.01). Don't!") == [
      "in", "N", "we", "got", "N", "p", "N", "don't"]


def test_scisumm_plan_is_seed_major_with_xl_on_one_seed():
  from benchmarks import crt_ptb
  runs = [crt_ptb.run_id(r) for r in crt_ptb.plan(crt_ptb.PRESETS["scisumm"])]
  assert runs[:4] == ["L512_full_L_seed0", "L512_segmented_L_4_seed0", "L512_crt_L_4_seed0", "L512_xl_L_2_seed0"]
  assert len(runs) == 10 and [r for r in runs if "xl" in r] == ["L512_xl_L_2_seed0"]
  assert "model_seeds" not in crt_ptb.settings_for(crt_ptb.PRESETS["scisumm"], 512)  # not a model setting


def test_segment_share_counts_what_one_segment_and_the_reference_read(tmp_path):
  from benchmarks import report, segment_share
  # a 100-token input, a 10-token reference, k 256, q 64: at s = 64 (m = 4) positions 0..9 all read
  # segment 0 (64 tokens); at s = 8 (m = 32) they visit segments 0..4 (40 tokens)
  x = segment_share.shares(np.array([100]), np.array([10]), 256, 64, 64)
  assert (x["m"], x["segment_share"], x["reference_reads_share"]) == (4, 0.64, 0.64)
  x = segment_share.shares(np.array([100, 300]), np.array([10, 100]), 256, 64, 8)
  assert x["segment_share"] == pytest.approx((0.08 + 8 / 256) / 2)
  assert x["reference_reads_share"] == pytest.approx((0.4 + 1.0) / 2)  # the second: cut at k and q
  task = lambda name, sizes: dict(task=name, examples=2, k=256, q=64, source_tokens_median=100.0,  # noqa: E731
                                  source_cut_at_k=0.5, reference_tokens_median=10.0,
                                  sizes=[dict(s=s, m=256 // s, segment_share=v, reference_reads_share=0.7)
                                         for s, v in sizes])
  (tmp_path / "segment_share.json").write_text(json.dumps(dict(tasks=[
      task("paper (x)", [(8, 0.01), (64, 0.09)]), task("ours (y)", [(8, 0.05), (16, 0.1), (64, 0.4)])])))
  out = report.render("segment_share", str(tmp_path))
  assert "ours s = 8: the paper's s = 64; ours s = 16: the paper's s = 64; ours s = 64: 4x the paper's largest" in out
