"""The tables in README.md and docs/*.md are what benchmarks/report.py renders from the results JSON."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from benchmarks import report


def _copy_repo_docs(dst):
  """README.md, docs/ and benchmarks/results/*.json of the repository, copied under `dst`."""
  shutil.copy(os.path.join(report.REPO, "README.md"), dst / "README.md")
  shutil.copytree(os.path.join(report.REPO, "docs"), dst / "docs")
  results = dst / "benchmarks" / "results"
  # the JSON only, folders of per-run files included (some renderers read those)
  shutil.copytree(report.RESULTS, results, ignore=lambda d, names: [
      n for n in names if not n.endswith(".json") and not os.path.isdir(os.path.join(d, n))])
  return results


def test_docs_blocks_match_the_results_json():
  stale = report.stale_blocks()
  assert not stale, ("blocks differ from the results JSON; run `python -m benchmarks.report`:\n"
                     + "\n".join(stale))


def test_every_block_has_a_renderer_and_closes():
  names = set()
  for path in report.documents():
    with open(path) as f:
      text = f.read()
    report.update_text(text, doc_dir=os.path.dirname(path))  # raises on unknown or unclosed blocks
    names |= set(report.OPEN.findall(text))
  assert {"default_job", "crt_ptb"} <= names


def test_a_block_edited_by_hand_is_stale(tmp_path):
  results = _copy_repo_docs(tmp_path)
  assert report.stale_blocks(str(tmp_path), str(results)) == []
  readme = tmp_path / "README.md"
  text = readme.read_text()
  start = text.index("<!-- report:glance_decode -->")
  line_end = text.index("\n", text.index("| ---", start))  # the first table row follows
  row_end = text.index("\n", line_end + 1)
  edited = text[:line_end + 1] + text[line_end + 1:row_end].replace("|", "| 99.9 |", 1) + text[row_end:]
  readme.write_text(edited)
  assert report.stale_blocks(str(tmp_path), str(results)) == ["README.md: glance_decode"]
  assert report.main(["--check", "--root", str(tmp_path)]) == 1
  assert report.main(["--root", str(tmp_path)]) == 0   # rewrites in place
  assert readme.read_text() == text
  assert report.main(["--check", "--root", str(tmp_path)]) == 0


def test_unclosed_or_unknown_block_is_an_error():
  with pytest.raises(ValueError, match="without a matching"):
    report.update_text("<!-- report:crt_ptb -->\nx\n")
  with pytest.raises(ValueError, match="no renderer"):
    report.update_text("<!-- report:nope -->\nx\n<!-- /report:nope -->\n")


def test_placeholders_and_crt_ptb_from_a_results_file(tmp_path):
  assert report.render("crt_ptb", str(tmp_path)) == "(no runs finished yet)"
  assert report.render("default_job", str(tmp_path)) == "(not measured yet)"
  from benchmarks import crt_ptb
  runs = [{"name": n, "seed": k, "context_len": 64, "segment_len": s, "test_ppl": p + k, "valid_ppl": p + k + 5,
           "epochs": 2.0, "flops_per_token": 3e6, "flops_per_token_without_output_layer": f,
           "train_tokens_per_s": 1000.0}
          for k in (0, 1, 2) for n, s, p, f in (("full_L", 64, 200.0, 9e5), ("segmented_L/4", 16, 230.0, 8e5),
                                               ("crt_L/4", 16, 201.0, 1e6))]
  # at a longer L the memory-less model does as well as full: the gate fails, and the claim is flagged so
  runs += [{**r, "context_len": 512, "test_ppl": {"full_L": 210.0, "segmented_L/4": 205.0, "crt_L/4": 204.0}[r["name"]]
            + r["seed"], "train_tokens_per_s": 900.0 + r["seed"]} for r in runs if r["seed"] < 2]
  (tmp_path / "crt_ptb_cpu.json").write_text(json.dumps({"runs": runs, "aggregate": crt_ptb.aggregate(runs)}))
  out = report.render("crt_ptb", str(tmp_path))
  assert out.startswith(crt_ptb.markdown(str(tmp_path / "crt_ptb_cpu.json")))
  assert "- L = 64: gate holds" in out and "claim holds" in out
  assert "- L = 512: gate does not hold" in out and "claim's rule not met but without the gate" in out
  assert "crt_L/4 below segmented_L/4 with separated intervals: no (2 seeds)" in out
  assert "| 1,000 |" in out and "| 901 |" in out  # tokens/s: the fastest seed's
  # the README's line for the long-document runs (same protocol) says the same of a failed gate
  seeded = [{**r, "seed": k} for r in runs if r["context_len"] == 512 for k in (r["seed"], r["seed"] + 2)]
  (tmp_path / "crt_scisumm_cpu.json").write_text(json.dumps({"runs": seeded,
                                                              "aggregate": crt_ptb.aggregate(seeded)}))
  line = report.render("glance_crt_scisumm", str(tmp_path))
  # (one wording, report.crt_verdict, for both)
  assert "L = 512: gate does not hold (segmented_L/4 / full_L = 0.976, intervals separated, 4 seeds)" in line
  assert "claim's rule not met but without the gate, so matching full says little (crt_L/4 / full_L = 0.971" in line
  assert "claim holds" not in line and "crt_L/4 below segmented_L/4 with separated intervals: no (4 seeds)" in line
  # and the README's CRT table does not give the claim a verdict where the gate fails
  table = report.render("glance_crt_ptb", str(tmp_path))
  assert "| holds (1.005) |" in table.splitlines()[2] and "| says little: no gate (0.971) |" in table.splitlines()[3]
  assert "marked *" not in out
  # runs trained with layers.dense_dot_general have their speed marked (all of a model's runs, or some)
  for r in runs:
    if r["context_len"] == 512 and (r["name"] == "crt_L/4" or r["name"] == "full_L" and r["seed"] == 1):
      r["dense_weight_grad"] = "layers.dense_dot_general"
  (tmp_path / "crt_ptb_cpu.json").write_text(json.dumps({"runs": runs, "aggregate": crt_ptb.aggregate(runs)}))
  out = report.render("crt_ptb", str(tmp_path))
  assert "| 901 * |" in out and "| 901 * (1 of 2 runs) |" in out and "| 1,000 |" in out
  assert "Tokens/s marked *" in out and "marked †" not in out
  # runs trained with glibc's malloc on huge pages carry a second mark, beside the first
  for r in runs:
    if r["context_len"] == 512 and r["name"] == "crt_L/4" and r["seed"] == 1:
      r["malloc_huge_pages"] = True
  (tmp_path / "crt_ptb_cpu.json").write_text(json.dumps({"runs": runs, "aggregate": crt_ptb.aggregate(runs)}))
  out = report.render("crt_ptb", str(tmp_path))
  assert "| 901 * † (1 of 2 runs) |" in out and "| 901 * (1 of 2 runs) |" in out and "Tokens/s marked †" in out
  (tmp_path / "default_job_cpu.json").write_text(json.dumps(
      {"first_loss": 7.5, "last_loss": 4.25, "steps": 600, "rouge1": 14.0, "rouge2": 2.0, "rougeL": 13.0,
       "wall_s": 300.0, "machine": {"cpu": "x86_64", "cpu_count": 2}}))
  assert "7.50 → 4.25 in 600 steps" in report.render("default_job", str(tmp_path))


def test_report_needs_no_jax():
  import subprocess
  code = ("import sys; import benchmarks.report, benchmarks.crt_ptb; "
          "sys.exit(1 if 'jax' in sys.modules else 0)")
  assert subprocess.run([sys.executable, "-c", code], cwd=report.REPO).returncode == 0


def test_segment_sweep_groups_paper_column_and_verdict(tmp_path):
  assert report.render("segment_sweep", str(tmp_path)).startswith("(not run yet")
  from benchmarks import segment_sweep as sweep
  r1 = {("full", None): 30.0, ("segmented", 8): 20.0, ("xl", 8): 24.0, ("srformer", 8): 29.0,
        ("srformer_gated", 8): 21.0}
  cells = [{"name": f"{k}_{s}_{seed}", "group": k if s is None else f"{k}_s{s}_padded", "kind": k, "s": s, "schedule": "padded",
            "seed": seed, "rouge1": v + seed * 0.3, "rouge2": 5.0, "rougeL": 20.0, "rougeLsum": 20.0,
            "test_loss": 3.0, "source_gain": 0.6, "distinct_predictions": 480, "eval_examples": 500,
            "git_commit": "0123456789abcdef-dirty" if k == "xl" else "fedcba9876543210"}
           for (k, s), v in r1.items() for seed in (0, 1, 2)]
  groups = sweep.aggregate(cells)
  payload = {"overrides": {"train.num_steps": 500, "train.batch_size": 16, "train.learning_rate": 1e-3},
             "paper_t5_small_cnndm": sweep.PAPER, "cells": cells, "groups": groups,
             "verdict": sweep.verdict(groups), "cells_planned": [c["name"] for c in cells] + ["more"]}
  (tmp_path / "segment_sweep_cpu.json").write_text(json.dumps(payload))
  out = report.render("segment_sweep", str(tmp_path))
  assert out.startswith("15 of 16 cells")
  assert "| segmented | 8 | padded | 3 | 20.30 [" in out and "| 17.27 |" in out  # the paper's Table 3
  assert "**the claim holds**" in out
  # the cells trained from an uncommitted tree are named as such, apart from the clean commit's
  assert ("code at fedcba9 (3 of 15 cells from an uncommitted tree on 0123456: xl_8_0, xl_8_1, xl_8_2; "
          "not a headline figure).") in out
  # a variant is tested by the same rule, beside the claim (here its interval overlaps segmented's)
  assert "Variant srformer_gated (not the paper's): above segmented no; within 10% of full no." in out
  cells = [dict(c, rouge1=29.0 + c["seed"]) if c["kind"] == "segmented" else c  # as good as srformer
           for c in cells]
  groups = sweep.aggregate(cells)
  (tmp_path / "segment_sweep_cpu.json").write_text(json.dumps(dict(payload, groups=groups,
                                                                   verdict=sweep.verdict(groups))))
  assert "**not shown**" in report.render("segment_sweep", str(tmp_path))


def test_segment_sweep_budget_sits_beside_the_grid(tmp_path):
  """The longer-budget cells (segment_sweep.py --tag) are rendered beside the grid's groups of the
  same kind and s, with their steps; `--tag` names the JSON that `--table` reads."""
  from benchmarks import segment_sweep as sweep

  def cell(kind, seed, steps, r1, loss):
    return {"name": f"{kind}_s8_padded" + (f"_seed{seed}" if seed else ""), "group": f"{kind}_s8_padded",
            "kind": kind, "s": 8, "schedule": "padded", "seed": seed, "rouge1": r1 + seed, "rouge2": 5.0,
            "rougeL": 20.0, "rougeLsum": 20.0, "test_loss": loss, "source_gain": 0.4,
            "distinct_predictions": 480, "eval_examples": 500, "steps": steps, "final_train_loss": loss + 0.3,
            "wall_s": 600.0, "git_commit": "fedcba9876543210", "rouge1_per_example": [r1 - 1, r1 + 1] * 50,
            "raf": {"layer0": {"raf_fired": 0.4, "recurrent_share": 0.99}} if kind == "srformer" else None}
  base = [cell(k, seed, 500, r1, loss) for k, r1, loss in (("segmented", 24.0, 3.36), ("srformer", 23.0, 3.76))
          for seed in (0, 1, 2)]
  longer = [cell("segmented", 0, 1500, 25.0, 3.30), cell("srformer", 0, 1500, 26.0, 3.40),
            dict(cell("full", 0, 1500, 28.0, 3.20), name="full", group="full", s=None)]
  for name, cells in (("segment_sweep_cpu", base), ("segment_sweep_cpu_steps1500_d549376", longer)):
    groups = sweep.aggregate(cells)
    (tmp_path / f"{name}.json").write_text(json.dumps({
        "overrides": {"train.num_steps": cells[0]["steps"], "train.learning_rate": 1e-3,
                      "train.warmup_steps": 50, "train.batch_size": 16},
        "paper_t5_small_cnndm": sweep.PAPER, "cells": cells, "groups": groups,
        "verdict": sweep.verdict(groups), "cells_planned": [c["name"] for c in cells]}))
  out = report.render("segment_sweep_budget", str(tmp_path))
  assert "fine-tuned 1500 steps" in out
  assert "| segmented | 8 | 500 | 3 | 25.00 [" in out and "| segmented | 8 | 1500 | 1 | 25.00 [" in out
  assert "| srformer | 8 | 1500 | 1 | 26.00 [" in out and "| 3.400 | 0.400 | 3.700 | 0.99 |" in out
  # the claim's rule on the longer run's own groups: segmented below full and srformer above it
  # (bootstrap intervals over test examples), within 10% of full; xl not run at this budget
  assert ("Verdict (1500 steps) at s = 8: incomplete (segmented below full: yes; srformer above segmented: "
          "yes; srformer within 10% of full: yes; cells missing for xl_between)") in out
  # the README's table: the longer run's groups beside the paper's, both budgets' verdicts
  glance = report.render("glance_segment_sweep_budget", str(tmp_path))
  assert "| srformer | 8 | 1 | 26.00 [" in glance and "| 39.14 |" in glance and "| 41.60 |" in glance
  assert "- Verdict (500 steps, the grid): not yet" in glance
  table = subprocess.run([sys.executable, "benchmarks/segment_sweep.py", "--reader=r", "--tag=steps1500_d549376",
                          f"--out={tmp_path}", "--table"], cwd=report.REPO, capture_output=True, text=True,
                         check=True).stdout
  assert "| srformer | 8 | padded | 26.00 |" in table and "| 24.00 |" not in table


def test_cpu_allocator_from_the_benchmark_summary(tmp_path):
  """The table reads cpu_allocator.summarize's rows: per-round speed-ups, faults and system time."""
  from benchmarks import cpu_allocator
  assert report.render("cpu_allocator", str(tmp_path)) == "(not measured yet)"

  def child(step, faults):
    return {"rows": {"sweep/full": {"step_s": step, "user_s": 0.5, "sys_s": step / 4, "minor_faults": faults}}}
  rounds = [{"4 KiB pages": child(0.40, 90000), "huge pages": child(0.32, 500)},
            {"huge pages": child(0.30, 600), "4 KiB pages": child(0.36, 92000)}]
  rows = cpu_allocator.summarize(rounds)
  assert rows[0]["speedup_per_round"] == pytest.approx([1.25, 1.2])
  (tmp_path / "cpu_allocator_cpu.json").write_text(json.dumps(
      {"rounds": rounds, "rows": rows, "load_avg_before": [0.1, 0.2, 0.3], "machine": {"cpu": "x86_64", "cpu_count": 2}}))
  out = report.render("cpu_allocator", str(tmp_path))
  assert "| `sweep/full` | 380 ms | 310 ms | 1.23× (1.25, 1.20) | 91,000 → 550 | 0.25 → 0.25 |" in out
  assert "2 rounds" in out and "2-core x86_64 CPU" in out


def test_noise_floor_of_difference_shares():
  assert report._noise_floor(0.042) == "4%" and report._noise_floor(0.004) == "~0%"
  assert report._noise_floor(-0.05) == "~0%"


def test_glance_cpu_efficiency_lists_the_goal_rows(tmp_path):
  rows = [{"name": "sweep/full", "step_s": 0.3, "share_of_peak": 0.4968, "goal_share_of_peak": 0.5},
          {"name": "sweep/xl_s8", "step_s": 0.3, "share_of_peak": 0.40},
          {"name": "decode/beam2", "test_set_s": 7.0, "speedup_vs_before": 2.25},
          {"name": "decode/beam4", "test_set_s": 9.0, "speedup_vs_before": 2.5}]
  (tmp_path / "cpu_efficiency_cpu.json").write_text(json.dumps(
      {"rows": rows, "matmul_peak": {"flops_per_s": 2.0e11}, "machine": {"cpu": "x86_64", "cpu_count": 2}}))
  out = report.render("glance_cpu_efficiency", str(tmp_path))
  # one decimal: a share just under its goal does not round up to it
  assert "| `sweep/full` step | 300 ms | 49.7% of the matmul peak | 50% |" in out
  assert "| beam 2, 500 test dialogues | 7.00 s | 2.25× faster than before | 2× |" in out
  assert "xl_s8" not in out and "beam4" not in out and "matmul peak 200 GFLOP/s" in out


def test_time_fn_makes_each_calls_input_before_its_clock_and_releases_the_last_output():
  """benchmarks.common.time_fn(setup=...): the setup's time is not the call's (decode_scaling times
  decoding steps from a cache made beforehand this way), and a call's output is dropped before the
  next setup, so two large outputs are never held at once."""
  import time
  import weakref

  from benchmarks import common

  class Out:  # stands in for a large array (weakly referenceable)
    pass

  seen, alive = [], []

  def setup():
    alive.append(sum(r() is not None for r in seen))  # outputs of earlier calls still held
    time.sleep(0.05)
    return len(seen)

  def fn(i):
    out = Out()
    seen.append(weakref.ref(out))
    return out

  t = common.time_fn(fn, 3, setup=setup)
  assert len(seen) == 4 and t["repeats"] == 3  # a first (compiling) call, then three timed ones
  assert t["median_s"] < 0.04 and t["first_call_s"] >= 0.05  # the first call's time includes its setup
  assert alive == [0, 0, 0, 0]


def test_every_benchmark_json_names_the_code_commit_it_measured(tmp_path):
  """benchmarks.common.write stamps a payload with the last commit that changed the code (the
  results it writes do not move it), '-dirty' when the code on disk differs; a payload's own commit
  (a grid cell's: the code that trained it) is kept."""
  import re

  from benchmarks import common

  path = common.write(str(tmp_path), "a", {"x": 1})
  stamped = json.load(open(path))["git_commit"]
  head = subprocess.run(["git", "log", "-1", "--format=%H", "--", *common.CODE], cwd=common.REPO,
                        capture_output=True, text=True).stdout.strip()
  if not head:
    pytest.skip("not a git checkout")
  assert re.fullmatch(re.escape(head) + "(-dirty)?", stamped), (stamped, head)
  path = common.write(str(tmp_path), "b", {"git_commit": "abc1234", "x": 1})
  assert json.load(open(path)) == {"git_commit": "abc1234", "x": 1}
  assert common.code_commit(("no/such/path",)) == "unknown"


def test_alternatives_table_compares_one_commit_and_says_which_side_of_srformer(tmp_path):
  """benchmarks/alternatives.py on a fake grid: cells of the majority clean commit only (a dirty
  cell is named, not averaged in), each alternative above / below SRformer by the interval rule,
  the cost columns joined by kind and s, and the README block rendered from it."""
  cells = tmp_path / "segment_sweep_cpu_steps1500"
  cells.mkdir()
  score = {("full", None): 30, ("srformer", 8): 28, ("pooled", 8): 33, ("linear", None): 20,
           ("local_window", 8): 10}
  for (kind, s), mean in score.items():
    for seed in range(2 if kind == "local_window" else 3):  # local_window: 2 of its 3 seeds so far
      name = kind if s is None else f"{kind}_s{s}_padded"
      name += f"_seed{seed}" if seed else ""
      cell = dict(name=name, kind=kind, s=s, schedule="padded", seed=seed, steps=1500,
                  rouge1=mean + 0.1 * seed, rouge1_dev=mean + 0.2 + 0.1 * seed, source_gain=0.6,
                  distinct_predictions=480, git_commit="a" * 40, git_clean=True)
      (cells / f"{name}.json").write_text(json.dumps(cell))
  dirty = dict(json.loads((cells / "pooled_s8_padded.json").read_text()), name="pooled_s64_padded", s=64,
               git_clean=False, rouge1=99.0)
  (cells / "pooled_s64_padded.json").write_text(json.dumps(dirty))
  (tmp_path / "segment_sweep_cpu_steps1500.json").write_text(json.dumps(
      {"cells_planned": [p.stem for p in cells.glob("*.json")] + ["gru_memory_s8_padded",
                                                                   "local_window_s8_padded_seed2"]}))
  cost = {"rows": [{"kind": k, "s": s, "ratio_to_full": r} for k, s, r in
                   (("full", None, 1.0), ("srformer", 8, 0.64), ("pooled", 8, 0.02), ("linear", None, 0.1))]}
  (tmp_path / "cross_attention_cost_cpu.json").write_text(json.dumps(cost))
  decode = {"git_commit": "bbbbbbb", "machine": "test machine",
            "rows": [{"kind": k, "s": s, "k": 16384, "per_token_ms": t} for k, s, t in
                     (("full", None, 200.0), ("srformer", 8, 22.0), ("pooled", 8, 36.0), ("linear", None, 17.0))]}
  (tmp_path / "decode_scaling_cpu_alternatives.json").write_text(json.dumps(decode))
  subprocess.run([sys.executable, os.path.join(report.REPO, "benchmarks", "alternatives.py"), "--out",
                  str(tmp_path)], check=True, capture_output=True)
  d = json.loads((tmp_path / "cross_attention_alternatives_cpu.json").read_text())
  assert d["cells_left_out"] == ["pooled_s64_padded"] and d["git_commit"] == "a" * 40
  assert d["verdict_s8"]["gate"] and d["verdict_s8"]["pooled"] == {"test": "above", "dev": "above"}
  assert d["verdict_s8"]["linear"] == {"test": "below", "dev": "below"}
  assert d["verdict_s8"]["local_window"] == {"waits": "2 of 3 seeds"}  # far below, but not all seeds in
  assert (len(d["alternative_cells_planned"]), len(d["alternative_cells_done"])) == (11, 8)
  pooled = next(g for g in d["groups"] if (g["kind"], g["s"]) == ("pooled", 8))
  assert (pooled["flops_vs_full"], pooled["decode_ms_per_token_k16384"]) == (0.02, 36.0)
  assert pooled["rouge1"]["mean"] == pytest.approx(33.1)
  out = report.render("alternatives", str(tmp_path))
  assert "pooled above SRformer on test, above SRformer on dev" in out
  assert "linear below SRformer on test" in out and "8 of 11" in out
  assert "local_window waits for its seeds (2 of 3 seeds)" in out
  assert "Left out, not of that commit: pooled_s64_padded" in out and "timed alone at bbbbbbb" in out


def test_segment_sweep_publish_rewrites_the_grid_json_from_result_files_and_trains_nothing(tmp_path):
  """segment_sweep.py --publish (what keeps the README current beside a running grid): the grid's
  JSON from the finished cells' result files, in grid order with the plan, nothing trained or
  evaluated, no run folder made; the JSON names the cells' commit."""
  src = os.path.join(report.RESULTS, "segment_sweep_cpu_steps1500")
  # with a longer-budget cell of the same kind and s (once crashed the figure's sorting)
  names = ["srformer_s8_padded", "full", "segmented_s8_padded", "segmented_s8_padded_steps3000"]
  (tmp_path / "out" / "segment_sweep_cpu_steps1500").mkdir(parents=True)
  for n in names:
    shutil.copy(os.path.join(src, n + ".json"), tmp_path / "out" / "segment_sweep_cpu_steps1500")
  data = tmp_path / "absent"  # the corpus is not read
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "benchmarks/segment_sweep.py", "--preset", "cpu1500", "--publish",
                  "--reader", "benchmarks/reader/cpu_infill", f"--data_dir={data}", f"--runs={tmp_path / 'runs'}",
                  f"--out={tmp_path / 'out'}"], cwd=report.REPO, env=env, check=True, timeout=300,
                 capture_output=True)
  d = json.load(open(tmp_path / "out" / "segment_sweep_cpu_steps1500.json"))
  assert [c["name"] for c in d["cells"]] == ["full", "segmented_s8_padded", "srformer_s8_padded",
                                             "segmented_s8_padded_steps3000"]
  assert len(d["cells_planned"]) == 64 and (tmp_path / "out" / "segment_sweep_cpu_steps1500_fig4.png").exists()
  assert not (tmp_path / "runs").exists()
  assert d["git_commit"] == json.load(open(os.path.join(src, "full.json")))["git_commit"]  # the cells' code
