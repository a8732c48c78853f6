"""The paper's effect on real text: ROUGE vs segment size for every cross-attention kind.

Trains the same small T5 from scratch (one tokenizer, seed, schedule and step budget) once per cell:
full attention; segmented, xl and srformer at several segment sizes (Fig. 4 / Table 3), with the
paper's `padded` segment schedule and, for segmented and srformer, the `length` schedule; and the
four ablations at one segment size (Table 4). Each cell is an ordinary `train.py` workdir under
--runs, so a killed sweep resumes where it stopped (a finished cell, one with rouge.json, is kept).
Writes `<out>/segment_sweep_<preset>.json`, `..._fig4.png` (ROUGE-1 vs s) and `..._ablations.png`.

  python benchmarks/segment_sweep.py --preset cpu --data_dir ../shared/data/dialogsum
  python benchmarks/segment_sweep.py --preset gpu --data_dir ../shared/data/dialogsum
  python benchmarks/segment_sweep.py --quick ...   # smoke test (pytest -m slow)

The `cpu1500` preset is the whole evidence at the budget where the paper's effect shows (1500
fine-tuning steps from the reader): Fig. 4 across s, Table 4 at s = 64 and 8, the budget at s = 8
(3000 steps) and the cheap alternatives (`config.ALTERNATIVE_KINDS`), every cell scored on the test
and the dev split. Each finished cell also writes `<out>/<name>/<cell>.json`, which is all a later
run needs to skip it (the workdirs may be gone); commit those as they come:

  python benchmarks/segment_sweep.py --preset cpu1500 --reader benchmarks/reader/cpu_infill \
      --runs /path/outside/the/repo
"""

from __future__ import annotations

import argparse
import ast
import collections
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import common, stats  # noqa: E402
from benchmarks.sweep_stats import aggregate  # noqa: E402,F401  (the groups of a list of cells)

from srformer_jax.config import ALTERNATIVE_KINDS, RAF_KINDS  # noqa: E402

_STATS_LOCK = threading.Lock()
ABLATIONS = ("recurrent_only", "no_norm", "no_raf", "kv_segment")
# Not the paper's: the cheap cross-attentions a practitioner would try instead (issue 39)
ALTERNATIVES = ALTERNATIVE_KINDS
SEGMENTLESS = ("full", "linear")  # kinds that read the whole input: no segment size
# Not the paper's: kinds measured beside it (at the smallest s, every seed), see config.py
VARIANTS = ("srformer_gated",)
# Paper (T5-small on CNN/DailyMail, ROUGE-1): Table 3 and Table 4 (s = 64).
PAPER = {
    "full": 41.60,
    "segmented": {8: 17.27, 16: 21.56, 64: 33.31},
    "srformer": {8: 39.14, 16: 39.32, 64: 39.39},
    "ablations_s64": {"srformer": 39.39, "recurrent_only": 36.86, "no_norm": 36.77, "no_raf": 35.84,
                      "kv_segment": 29.72},
}

# Model / schedule per preset. "cpu" is issue 17's grid fine-tuned from the reader: full; segmented,
# srformer and xl at s in {8, 16, 32, 64}; the length schedule at s = 8; the four ablations at s = 8;
# 3 seeds for full and for segmented / xl / srformer at s = 8 and 64 (33 cells), and srformer_gated at
# s = 8 with every seed (36 in all). Its budget, about five hours of a quiet 2-core machine, two
# single-threaded cells at a time (~1.8 s a step each, ~1 min of evaluation per cell), gives every
# cell 500 fine-tuning steps of batch 16 (0.6 epoch of DialogSum).
# "gpu" is a T5-small-shaped model with every cell and many more steps.
PRESETS = {
    "cpu": dict(
        sizes=(8, 16, 32, 64), length_sizes=(8,), ablation_size=8, workers=2, seeds=(0, 1, 2),
        overrides={"train.num_steps": 500, "train.batch_size": 16, "train.save_every": 100,
                   "train.log_every": 25, "train.learning_rate": 1e-3, "train.warmup_steps": 50,
                   "decode.num_beams": 2}),
    # The whole evidence at 1500 fine-tuning steps (issues 35 and 39), cells from `cells_steps1500`:
    # ~8 minutes a cell on a quiet 2-core CPU (two single-threaded cells at a time, ~0.56 s a step
    # each, plus the test and dev evaluations), 64 cells.
    "cpu1500": dict(
        name="segment_sweep_cpu_steps1500", sizes=(8, 16, 32, 64), workers=2, seeds=(0, 1, 2),
        dev_file="dialogsum.dev.jsonl", dev_summary_key="summary", budget_steps=3000,
        overrides={"train.num_steps": 1500, "train.batch_size": 16, "train.save_every": 100,
                   "train.log_every": 25, "train.learning_rate": 1e-3, "train.warmup_steps": 50,
                   "decode.num_beams": 2}),
    # Issue 36, part A: four dialogues in, four summaries out (benchmarks/long_dialogsum.py), k 1024
    # and q 256: full; segmented, srformer and xl at s = 8 (m = 128, the paper's k / s) and s = 64,
    # 3 seeds at s = 8, one at s = 64 (15 cells); the data are built into <runs>/data. The pilot (30
    # steps of full and srformer s = 8, two single-threaded cells at a time, as the grid runs): 2.1-2.2
    # s a step at batch 8 (32 dialogues, twice the 1500-step grid's), ~3 min for the two evaluations.
    # So 1000 steps (2.6 passes over the training dialogues), ~40 min a cell, ~5 h for the 15 cells;
    # 1500 steps and 3 seeds at s = 64 too would take ~10 h.
    # Cut after the first four cells (seed 0 at s = 8; seeds=(0, 1, 2), large_s_seeds=(0,) is the
    # grid above): after 1000 steps full attention's source gain was still at the 30-step pilot's
    # level, far below the gate's 0.5, so no comparison can be judged at this budget and more seeds
    # would only measure noise (docs/segment_sweep.md, "Long inputs").
    "long1024": dict(
        name="long_dialogsum_cpu", long=True, sizes=(8, 64), workers=2, seeds=(0,), large_s_seeds=(),
        dev_file="long_dialogsum.dev.jsonl", dev_summary_key="summary",
        overrides={"train.num_steps": 1000, "train.batch_size": 8, "train.save_every": 100,
                   "train.log_every": 25, "train.learning_rate": 1e-3, "train.warmup_steps": 50,
                   "decode.num_beams": 2, "data.max_source_len": 1024, "data.max_target_len": 256,
                   "decode.batch_size": 25,
                   # four joined summaries name the speakers ~14 times (`#Person1#` is three pieces):
                   # a 3-gram block would allow each name once; 4 did best on the 1500-step cells
                   # decoded again (benchmarks/ngram_block.py, docs/segment_sweep.md)
                   "decode.no_repeat_ngram_size": 4,
                   # ... within each summary: across them the separator (long_dialogsum.SEPARATOR) and
                   # its "<end of sentence> ### #Person1#" repeat, and a whole-output ban cut every
                   # output after its second summary
                   "decode.ngram_scope_separator": "###"}),
    "gpu": dict(
        sizes=(8, 16, 32, 64), length_sizes=(8, 16, 32, 64), ablation_size=64, seeds=(0, 1, 2),
        overrides={"train.num_steps": 20000, "train.batch_size": 32, "train.save_every": 2000,
                   "train.log_every": 100, "train.learning_rate": 5e-4, "train.warmup_steps": 1000,
                   "model.dtype": "bfloat16", "decode.num_beams": 4, "model.scratch.d_model": 512,
                   "model.scratch.num_heads": 8, "model.scratch.d_kv": 64, "model.scratch.d_ff": 2048,
                   "model.scratch.num_encoder_layers": 6, "model.scratch.num_decoder_layers": 6}),
    "quick": dict(
        sizes=(8, 64), length_sizes=(8,), ablation_size=8, seeds=(0, 1),
        overrides={"train.num_steps": 6, "train.batch_size": 4, "train.save_every": 3,
                   "train.log_every": 2, "decode.num_beams": 1, "data.max_eval_examples": 8,
                   "decode.batch_size": 8, "model.scratch.d_model": 32, "model.scratch.num_heads": 2,
                   "model.scratch.d_kv": 16, "model.scratch.d_ff": 64,
                   "model.scratch.num_encoder_layers": 1, "model.scratch.num_decoder_layers": 1}),
}


def cells(preset: dict) -> list[dict]:
  """The grid, in the order it runs: the verdict's cells (full; segmented, srformer and xl at the
  smallest s) with all their seeds first, then the largest s, the other sizes, the length schedule,
  and the ablations last, so an interrupted sweep has the most telling cells."""
  sizes = sorted(preset["sizes"])
  out = [dict(kind="full", s=None, schedule="padded")]
  for s in sizes:
    out += [dict(kind=kind, s=s, schedule="padded") for kind in ("segmented", "srformer")]
  for s in sorted(preset["length_sizes"]):
    out += [dict(kind=kind, s=s, schedule="length") for kind in ("segmented", "srformer")]
  out += [dict(kind="xl", s=s, schedule="padded") for s in sizes]
  out += [dict(kind=kind, s=preset["ablation_size"], schedule="padded") for kind in ABLATIONS]
  out += [dict(kind=kind, s=sizes[0], schedule="padded") for kind in VARIANTS]
  # seeds (data order, dropout, new-parameter init): every seed of the preset for the cells the
  # claim rests on (full; segmented, xl, srformer at the smallest and largest s; the variants),
  # seed 0 elsewhere
  main = {(k, s) for k in ("segmented", "xl", "srformer") for s in (sizes[0], sizes[-1])}
  main |= {(k, sizes[0]) for k in VARIANTS}
  seeded = []
  for seed in preset.get("seeds", (0,)):
    seeded += [dict(c, seed=seed) for c in out
               if seed == 0 or c["kind"] == "full" or (c["schedule"] == "padded" and (c["kind"], c["s"]) in main)]
  for c in seeded:
    c["group"] = c["kind"] if c["s"] is None else f"{c['kind']}_s{c['s']}_{c['schedule']}"
    c["name"] = c["group"] + (f"_seed{c['seed']}" if c["seed"] else "")

  def rank(c):  # the verdict's cells (every seed) first, then the variants, the largest s, the
    # rest, ablations last
    if c["kind"] in ABLATIONS:
      return 5
    if c["kind"] in VARIANTS:
      return 1
    if c["kind"] == "full" or (c["schedule"] == "padded" and c["s"] == sizes[0]):
      return 0
    if c["schedule"] == "padded":
      return 2 if c["s"] == sizes[-1] else 3
    return 4
  return sorted(seeded, key=lambda c: (rank(c), c["seed"]))  # stable: grid order within a rank


def cells_steps1500(preset: dict) -> list[dict]:
  """The `cpu1500` grid, in the order it runs (a stopped run has the most telling cells):
    0. full; segmented, srformer and xl at s = 8 and s = 64 (3 seeds each): Fig. 4's verdicts;
    1. the four ablations at s = 64 (3 seeds): Table 4's verdict;
    2. the alternatives at s = 8 (3 seeds; `linear` has no segments, so it runs once per seed);
    3. one seed each: segmented, srformer and xl at s = 16 and 32; the length schedule at s = 8;
       the ablations at s = 8; srformer_gated at s = 8; the alternatives at s = 64;
    4. full, segmented s = 8 and srformer s = 8 fine-tuned `budget_steps` (one seed).
  Seed order within a rank: seed 0 of every cell first."""
  seeds, sizes = preset["seeds"], preset["sizes"]
  lo, hi = sizes[0], sizes[-1]
  out = []

  def add(rank, kind, s, schedule="padded", seeds=(0,), num_steps=None):
    for seed in seeds:
      out.append(dict(kind=kind, s=None if kind in SEGMENTLESS else s, schedule=schedule, seed=seed,
                      rank=rank, **({"num_steps": num_steps} if num_steps else {})))

  add(0, "full", None, seeds=seeds)
  for s in (lo, hi):
    for kind in ("segmented", "srformer", "xl"):
      add(0, kind, s, seeds=seeds)
  for kind in ABLATIONS:
    add(1, kind, hi, seeds=seeds)
  for kind in ALTERNATIVES:
    add(2, kind, lo, seeds=seeds)
  for s in sizes[1:-1]:
    for kind in ("segmented", "srformer", "xl"):
      add(3, kind, s)
  for kind in ("segmented", "srformer"):
    add(3, kind, lo, schedule="length")
  for kind in ABLATIONS:
    add(3, kind, lo)
  for kind in VARIANTS:
    add(3, kind, lo)
  for kind in ALTERNATIVES:
    if kind not in SEGMENTLESS:
      add(3, kind, hi)
  for kind in ("full", "segmented", "srformer"):
    add(4, kind, lo, num_steps=preset["budget_steps"])
  for c in out:
    c["group"] = (c["kind"] if c["s"] is None else f"{c['kind']}_s{c['s']}_{c['schedule']}") + (
        f"_steps{c['num_steps']}" if "num_steps" in c else "")
    c["name"] = c["group"] + (f"_seed{c['seed']}" if c["seed"] else "")
  return sorted(out, key=lambda c: (c["rank"], c["seed"]))  # stable: listed order within a rank


def cells_long(preset: dict) -> list[dict]:
  """The long-input grid: full and segmented / srformer / xl at the smallest s (every seed) first,
  then the largest s (the seeds `large_s_seeds`, default every seed)."""
  out = []
  lo, hi = min(preset["sizes"]), max(preset["sizes"])
  for rank, kinds_sizes in ((0, [("full", None)] + [(k, lo) for k in ("segmented", "srformer", "xl")]),
                            (1, [(k, hi) for k in ("segmented", "srformer", "xl")])):
    for kind, s in kinds_sizes:
      for seed in preset.get("large_s_seeds", preset["seeds"]) if rank else preset["seeds"]:
        group = kind if s is None else f"{kind}_s{s}_padded"
        out.append(dict(kind=kind, s=s, schedule="padded", seed=seed, rank=rank, group=group,
                        name=group + (f"_seed{seed}" if seed else "")))
  return sorted(out, key=lambda c: (c["rank"], c["seed"]))


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
  p.add_argument("--quick", action="store_true", help="the 'quick' preset (smoke test)")
  p.add_argument("--data_dir", default=os.path.join(REPO, "..", "shared", "data", "dialogsum"),
                 help="folder with the train/test JSONL files")
  p.add_argument("--train_file", default="dialogsum.train.jsonl")
  p.add_argument("--test_file", default="dialogsum.test.jsonl")
  p.add_argument("--document_key", default="dialogue")
  p.add_argument("--summary_key", default="summary")
  p.add_argument("--eval_summary_key", default="summary1", help="reference field of the test file")
  p.add_argument("--dev_file", default=None,
                 help="a second evaluation split scored beside the test file (default: the preset's)")
  p.add_argument("--dev_summary_key", default=None, help="reference field of the dev file")
  p.add_argument("--reader", default="",
                 help="the pretrained reader every cell fine-tunes from (a HF directory with spm.model, "
                      "made by benchmarks/reader.py); without it every cell trains from scratch")
  p.add_argument("--tag", default="",
                 help="a variant of the protocol under its own name: writes segment_sweep_<preset>_<tag>.* "
                      "and trains in runs/segment_sweep_<preset>_<tag> (e.g. --tag steps1500 with --set "
                      "train.num_steps=1500)")
  p.add_argument("--runs", default=None, help="workdirs of the cells (default runs/<the output name>)")
  p.add_argument("--out", default=common.RESULTS, help="directory for the JSON and PNGs")
  p.add_argument("--only", default="", help="comma-separated cell names to run (default: all)")
  p.add_argument("--set", action="append", default=[],
                 help="extra config override for every cell, e.g. --set train.num_steps=300")
  p.add_argument("--workers", type=int, default=None,
                 help="cells trained at once, each single-threaded (on a 2-core CPU, 2 workers give "
                      "~1.6x the cells per hour of one 2-thread cell; keep 1 on a GPU; default: "
                      "the preset's)")
  p.add_argument("--platform", default=None, help="JAX_PLATFORMS for the cells (default: jax's choice)")
  p.add_argument("--collect", action="store_true",
                 help="rewrite the JSON and PNGs from the finished cells only, training nothing")
  p.add_argument("--publish", action="store_true",
                 help="rewrite the JSON and PNGs from the cells' result files only: trains and evaluates "
                      "nothing (safe beside a running grid, whose unfinished cells it leaves alone)")
  p.add_argument("--table", action="store_true",
                 help="print the README's markdown table from the JSON of this preset and exit")
  return p.parse_args()


def train_tokenizer(args, runs: str, train_path: str, vocab_size: int) -> str:
  """One SentencePiece model for every cell, trained on the training split (as train.py would)."""
  path = os.path.join(runs, "spm", "spm.model")
  if not os.path.exists(path):
    from srformer_jax import data
    src = data.read_jsonl(train_path, args.document_key, args.summary_key)
    texts = [t for pair in src.pairs[:20000] for t in pair]
    data.train_sentencepiece(texts, path[:-len(".model")], vocab_size, seed=0)
  return path


def run_cell(cell: dict, args, runs: str, overrides: dict) -> dict:
  workdir = os.path.join(runs, cell["name"])
  os.makedirs(workdir, exist_ok=True)
  timing_file = os.path.join(workdir, "sweep_timing.json")
  timing = json.load(open(timing_file)) if os.path.exists(timing_file) else {"wall_s": 0.0, "invocations": 0}
  if timing.pop("running_since", None) is not None or (
      not os.path.exists(timing_file) and os.path.isdir(os.path.join(workdir, "checkpoints"))):
    timing["wall_incomplete"] = True  # an earlier invocation was killed hard: its time is not counted
  if not os.path.exists(os.path.join(workdir, "rouge.json")):
    flags = cell_flags(overrides, cell)
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--config",
           os.path.join(REPO, "configs", "dialogsum_sweep.py"), f"--workdir={workdir}"]
    cmd += [f"--config.{k}={v}" for k, v in flags.items()]
    env = dict(os.environ)
    if args.workers > 1:
      env["XLA_FLAGS"] = common.single_thread_flags(env)
    if args.platform:
      env["JAX_PLATFORMS"] = args.platform
    print(f"== {cell['name']}: {' '.join(cmd[3:])}", flush=True)
    commit, clean = _git_commit(), _git_clean()
    t0 = time.perf_counter()
    with open(timing_file, "w") as f:  # still there on the next run only if this one was killed hard
      json.dump(dict(timing, running_since=time.time()), f)
    try:
      subprocess.run(cmd, cwd=REPO, env=env, check=True)
    finally:  # a killed cell keeps the time it spent, so the total stays honest after a resume
      timing["wall_s"] += time.perf_counter() - t0
      timing["invocations"] += 1
      timing["git_commit"] = commit  # the code that trained it last (train.py runs from disk)
      timing["git_clean"] = clean  # and whether nothing else in the tree differed from it
      with open(timing_file, "w") as f:
        json.dump(timing, f)
  with _STATS_LOCK:  # one cell's statistics (and dev evaluation) at a time in this process
    cfg = run_config(overrides, cell)
    if args.dev_file:
      evaluate_dev(cfg, workdir, os.path.abspath(os.path.join(args.data_dir, args.dev_file)),
                   args.dev_summary_key)
    return collect(cell, workdir, timing, cfg, positions=getattr(args, "positions", False))


def cell_flags(overrides: dict, cell: dict) -> dict:
  """The cell's --config.<key> values: the preset's, then the cell's kind, s, schedule, seed, steps."""
  flags = dict(overrides, **{"model.cross_attention": cell["kind"],
                             "model.segment_schedule": cell["schedule"], "train.seed": cell.get("seed", 0)})
  if cell["s"] is not None:
    flags["model.segment_size"] = cell["s"]
  if cell.get("num_steps"):
    flags["train.num_steps"] = cell["num_steps"]
  return flags


def run_config(overrides: dict, cell: dict):
  """The cell's ml_collections config, as train.py builds it from the same flags."""
  from configs import dialogsum_sweep
  return set_fields(dialogsum_sweep.get_config(), cell_flags(overrides, cell))


DEV_DIR = "dev"  # a cell's dev-split predictions.jsonl and rouge.json, under its workdir


def evaluate_dev(cfg, workdir: str, dev_path: str, summary_key: str):
  """Scores the cell's final checkpoint on the dev split (as train.py scores the test split), into
  <workdir>/dev/; kept when already there."""
  out = os.path.join(workdir, DEV_DIR)
  if os.path.exists(os.path.join(out, "rouge.json")):
    return
  from srformer_jax import eval_lib
  cfg = set_fields(cfg.copy_and_resolve_references(), {"data.eval_split": dev_path,
                                                        "data.eval_summary_key": summary_key})
  eval_lib.evaluate(cfg, workdir, out_dir=out)


def parse_set(items) -> dict:
  """--set KEY=VALUE pairs as a dict (values parsed as Python literals where they are ones)."""
  out = {}
  for item in items:
    if "=" not in item:
      sys.exit(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.learning_rate=5e-4")
    key, value = item.split("=", 1)
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value  # a plain string
  return out


def set_fields(cfg, flags: dict):
  """Sets {"train.num_steps": 300, ...} on an ml_collections config, as --config.<key> flags do."""
  for key, value in flags.items():
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
      node = node[part]
    node[leaf] = value
  return cfg


def cell_stats(cfg, workdir: str, kind: str, examples: int = 64, separator: str = "") -> dict:
  """Teacher-forced test loss with each example's own document and with documents swapped
  (`diagnostics.source_reliance`: does the model read its input at all?) on the evaluated examples,
  and, for RAF kinds, RAF firing per decoder layer on the first `examples` test examples: does the
  gate pass anything on? See srformer_jax.diagnostics. `separator`: the text joining a target's
  summaries (the long-input task): the same per summary, as `by_part`."""
  from srformer_jax import data, eval_lib, run_setup
  from srformer_jax.diagnostics import raf_statistics, source_reliance
  from srformer_jax.layers import shift_right
  model, tok, params = run_setup.load_trained_model(cfg, workdir)
  src = run_setup.load_source(cfg, "eval_split", workdir)
  spec = run_setup.batch_spec(cfg, examples)
  limit = cfg.data.get("max_eval_examples") or None
  out = source_reliance(model, params, ((b, n) for b, _, n in data.eval_batches(src, tok, spec, limit)),
                        eval_lib.separator_ids(tok, separator) if separator else ())
  out["raf"] = None
  if kind in RAF_KINDS:
    batch, _, _ = next(data.eval_batches(src, tok, spec, examples))
    c = model.config
    dec_in = shift_right(batch["labels"], c.decoder_start_token_id, c.pad_token_id)
    out["raf"] = raf_statistics(model, params, batch["input_ids"], batch["attention_mask"], dec_in)
  return out


def rouge1_by_position(preds: list[dict]) -> list[float]:
  """Mean ROUGE-1 F x100 of the i-th summary of each output against the i-th reference (outputs and
  references cut at benchmarks.long_dialogsum's separator)."""
  from rouge_score import rouge_scorer

  from benchmarks.long_dialogsum import PER_INPUT, split_positions
  scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
  totals = [0.0] * PER_INPUT
  for r in preds:
    for i, (ref, pred) in enumerate(zip(split_positions(r["reference"]), split_positions(r["prediction"]))):
      totals[i] += scorer.score(ref, pred)["rouge1"].fmeasure
  return [100.0 * t / max(len(preds), 1) for t in totals]


def collect(cell: dict, workdir: str, timing: dict, cfg=None, positions: bool = False) -> dict:
  stats_file = os.path.join(workdir, "cell_stats.json")
  if cfg is not None and not os.path.exists(stats_file):
    from benchmarks.long_dialogsum import SEPARATOR
    with open(stats_file, "w") as f:
      json.dump(cell_stats(cfg, workdir, cell["kind"], separator=SEPARATOR if positions else ""), f, indent=2)
  stats = json.load(open(stats_file)) if os.path.exists(stats_file) else {}
  rouge = json.load(open(os.path.join(workdir, "rouge.json")))
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  with open(os.path.join(workdir, "predictions.jsonl")) as f:  # 1 = the same summary for every input
    preds = [json.loads(line) for line in f]
  distinct = len({r["prediction"] for r in preds})
  steps = rows[-1]["step"]
  tail = [r["loss"] for r in rows if r["step"] > 0.9 * steps] or [rows[-1]["loss"]]
  dev = {}
  dev_dir = os.path.join(workdir, DEV_DIR)
  if os.path.exists(os.path.join(dev_dir, "rouge.json")):
    d = json.load(open(os.path.join(dev_dir, "rouge.json")))
    with open(os.path.join(dev_dir, "predictions.jsonl")) as f:
      dev_preds = [json.loads(line) for line in f]
    dev = dict(rouge1_dev=d["rouge1"], rouge2_dev=d["rouge2"], rougeL_dev=d["rougeL"],
               dev_examples=d["num_examples"], distinct_predictions_dev=len({r["prediction"] for r in dev_preds}),
               rouge1_dev_per_example=per_example_rouge1(dev_preds))
    if positions:
      dev["rouge1_dev_by_position"] = rouge1_by_position(dev_preds)
  if positions:  # the long-input grid: per-position ROUGE-1, its input length, its steps' pace
    dev["rouge1_by_position"] = rouge1_by_position(preds)
    if stats.get("by_part"):  # the source gain of the i-th summary's tokens (later parts: none)
      from benchmarks.long_dialogsum import PER_INPUT
      dev["source_gain_by_position"] = [p["source_gain"] for p in stats["by_part"]][:PER_INPUT]
    rates = [r["steps_per_s"] for r in rows[1:] if r.get("steps_per_s")]  # the first interval compiles
    dev["train_s_per_step"] = 1.0 / statistics.median(rates) if rates else None
    if cfg is not None:
      dev["max_source_len"] = cfg.data.max_source_len
  return dict(cell, **dev, rouge1=rouge["rouge1"], rouge2=rouge["rouge2"], rougeL=rouge["rougeL"],
              rougeLsum=rouge["rougeLsum"], eval_examples=rouge["num_examples"], steps=steps,
              final_train_loss=statistics.mean(tail), wall_s=timing["wall_s"],
              invocations=timing["invocations"], wall_incomplete=timing.get("wall_incomplete", False),
              git_commit=timing.get("git_commit") and _code_commit(timing["git_commit"]),
              git_clean=timing.get("git_clean"), workdir=workdir,
              raf=stats.get("raf"),
              test_loss=stats.get("test_loss"), source_gain=stats.get("source_gain"),
              distinct_predictions=distinct, rouge1_per_example=per_example_rouge1(preds))


def per_example_rouge1(preds: list[dict]) -> list[float]:
  """ROUGE-1 F x100 of each test example (as eval_lib.rouge scores them), for bootstrap intervals."""
  from rouge_score import rouge_scorer
  from srformer_jax.eval_lib import sentences_per_line
  scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
  return [round(100.0 * scorer.score(sentences_per_line(r["reference"]), sentences_per_line(r["prediction"]))
                ["rouge1"].fmeasure, 4) for r in preds]


def verdict(groups: list[dict]) -> dict:
  """The paper's claim at the smallest segment size, on ROUGE-1 (Table 3, Fig. 4): segmented below
  full, srformer above segmented (intervals separated) and within 10% of full, xl in between."""
  by = {g["group"]: g for g in groups}
  sizes = sorted({g["s"] for g in groups if g["s"] is not None and g["schedule"] == "padded"})
  full = by.get("full")
  if not full or not sizes:
    return {}
  s = sizes[0]
  seg, srf, xl = (by.get(f"{k}_s{s}_padded") for k in ("segmented", "srformer", "xl"))
  out = {"s": s, "rule": "segmented < full and srformer > segmented (95% intervals separated); srformer >= "
                         "0.9 x full; xl between segmented and srformer"}
  if seg:
    out["segmented_below_full"] = bool(seg["rouge1"]["mean"] < full["rouge1"]["mean"]
                                       and stats.separated(seg["rouge1"], full["rouge1"]))
  def against(g):  # a recurrent kind's two tests: above segmented (separated), within 10% of full
    return {"above_segmented": bool(g["rouge1"]["mean"] > seg["rouge1"]["mean"]
                                    and stats.separated(g["rouge1"], seg["rouge1"])),
            "within_10pct_of_full": bool(g["rouge1"]["mean"] >= 0.9 * full["rouge1"]["mean"])}

  if seg and srf:
    out.update({f"srformer_{k}": v for k, v in against(srf).items()})
  if seg and srf and xl:
    lo, hi = sorted((seg["rouge1"]["mean"], srf["rouge1"]["mean"]))
    out["xl_between"] = bool(lo <= xl["rouge1"]["mean"] <= hi)
  keys = ("segmented_below_full", "srformer_above_segmented", "srformer_within_10pct_of_full", "xl_between")
  out["holds"] = all(out.get(k) for k in keys)
  for kind in VARIANTS:  # the same test for each variant, reported beside (never part of) the claim
    v = by.get(f"{kind}_s{s}_padded")
    if seg and v:
      out[kind] = against(v)
  return out


def plot_positions(groups: list[dict], out_dir: str, name: str):
  """The long-input grid: ROUGE-1 of the i-th output summary against the i-th reference, per kind, one
  panel per segment size (full attention in each), test split, 95% interval bars."""
  plt = common.plt()
  sizes = sorted({g["s"] for g in groups if g["s"]})
  if not sizes:
    return
  fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4), sharey=True, squeeze=False)
  styles = {"full": "k", "segmented": "tab:red", "xl": "tab:orange", "srformer": "tab:blue"}
  for ax, s in zip(axes[0], sizes):
    for kind, color in styles.items():
      g = next((g for g in groups if g["kind"] == kind and g["s"] == (None if kind == "full" else s)
                and g.get("rouge1_by_position")), None)
      if g is None:
        continue
      pos = g["rouge1_by_position"]
      xs = [i + 1 + 0.04 * (list(styles).index(kind) - 1.5) for i in range(len(pos))]
      yerr = [[p["mean"] - (p["lo"] if p.get("lo") is not None else p["mean"]) for p in pos],
              [(p["hi"] if p.get("hi") is not None else p["mean"]) - p["mean"] for p in pos]]
      ax.errorbar(xs, [p["mean"] for p in pos], yerr=yerr, fmt="o-", color=color, capsize=3,
                  label=f"{kind} (n={len(g['seeds'])})")
    ax.set_xticks(range(1, 5))
    ax.set_xlabel("position of the dialogue in the input (1 = first)")
    ax.set_title(f"s = {s}: k = 1024, m = {1024 // s} segments")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  axes[0][0].set_ylabel("ROUGE-1 of that dialogue's summary (test)")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, f"{name}_positions.png"), dpi=110)
  plt.close(fig)


def plot(groups: list[dict], out_dir: str, name: str):
  """Fig. 4 (ROUGE-1 and test loss against s, 95% interval bars, full attention as a band) and
  Table 4 (the ablations beside srformer at their s)."""
  plt = common.plt()
  # the grid's own budget only: the longer-budget cells (full, segmented and srformer at s = 8 for
  # 3000 steps) have the same kind and s, and are the budget table's, not Fig. 4's
  budget = collections.Counter(g.get("steps") for g in groups).most_common(1)[0][0] if groups else None
  groups = [g for g in groups if g.get("steps") == budget]
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
  full = next((g for g in groups if g["kind"] == "full"), None)
  styles = {"segmented": "tab:red", "xl": "tab:orange", "srformer": "tab:blue", "srformer_gated": "tab:green"}
  panels = (("rouge1", "ROUGE-1 (test)", "ROUGE-1 vs segment size (cf. paper Fig. 4)"),
            ("test_loss", "test loss (teacher forced, nats/token)", "Test loss vs segment size"))

  def err(c):
    return None if c is None or c.get("lo") is None else [[c["mean"] - c["lo"]], [c["hi"] - c["mean"]]]

  for ax, (metric, ylabel, title) in zip(axes, panels):
    if full and full.get(metric):
      f = full[metric]
      ax.axhline(f["mean"], color="k", ls=":", label=f"full attention (n={f['n']})")
      if f.get("lo") is not None:
        ax.axhspan(f["lo"], f["hi"], color="k", alpha=0.1)
    for kind, color in styles.items():
      for schedule, ls in (("padded", "-"), ("length", "--")):
        pts = sorted((g["s"], g[metric]) for g in groups
                     if g["kind"] == kind and g["schedule"] == schedule and g.get(metric))
        if not pts:
          continue
        # kinds side by side at each s (a small shift on the log axis) so their bars do not overlap
        shift = 2 ** (0.05 * (list(styles).index(kind) - 1.5) + (0.02 if schedule == "length" else 0))
        xs = [p[0] * shift for p in pts]
        ax.plot(xs, [p[1]["mean"] for p in pts], ls, color=color, label=f"{kind} ({schedule})")
        for x, (_, c) in zip(xs, pts):
          ax.errorbar([x], [c["mean"]], yerr=err(c), fmt="o", color=color, capsize=3)
    ax.set_xscale("log", base=2)
    sizes = sorted({g["s"] for g in groups if g["s"]})
    if sizes:  # ticks at the sizes measured, and room for the side-by-side shift when there is one
      ax.set_xticks(sizes, [str(x) for x in sizes])
      ax.minorticks_off()
      ax.set_xlim(sizes[0] / 1.5, sizes[-1] * 1.5)
    ax.set_xlabel("segment size s")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
  # one legend under both panels: inside an axis it covers some kind's points at one s or another
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
  fig.tight_layout(rect=(0, 0.12, 1, 1))
  fig.savefig(os.path.join(out_dir, f"{name}_fig4.png"), dpi=110)
  plt.close(fig)

  abl = [g for g in groups if g["kind"] in ABLATIONS]
  if abl:  # one panel per ablated size, the paper's s = 64 first
    abl_sizes = sorted({g["s"] for g in abl}, reverse=True)
    fig, axes = plt.subplots(1, len(abl_sizes), figsize=(6.5 * len(abl_sizes), 3.8), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], abl_sizes):
      base = [g for g in groups if g["kind"] == "srformer" and g["s"] == s and g["schedule"] == "padded"]
      bars = base + sorted((g for g in abl if g["s"] == s), key=lambda g: ABLATIONS.index(g["kind"]))
      ys = [g["rouge1"]["mean"] for g in bars]
      yerr = [[g["rouge1"]["mean"] - (g["rouge1"]["lo"] if g["rouge1"].get("lo") is not None else g["rouge1"]["mean"])
               for g in bars],
              [(g["rouge1"]["hi"] if g["rouge1"].get("hi") is not None else g["rouge1"]["mean"]) - g["rouge1"]["mean"]
               for g in bars]]
      # points, not bars from zero: the differences are a few points of ROUGE-1 on a scale of 30
      ax.errorbar(range(len(bars)), ys, yerr=yerr, fmt="o", capsize=4, color="tab:blue")
      # references: what the ablations sit between (full attention; segmented attention at this s)
      seg = [g for g in groups if g["kind"] == "segmented" and g["s"] == s and g["schedule"] == "padded"]
      for ref, color, label in ((full, "k", "full attention"), (seg[0] if seg else None, "tab:red",
                                                                  f"segmented s = {s}")):
        if ref and ref.get("rouge1"):
          ax.axhline(ref["rouge1"]["mean"], color=color, ls=":", label=label)
      if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
      ax.set_xticks(range(len(bars)), [f"{g['kind']}\n(n={len(g['seeds'])})" for g in bars], rotation=20)
      ax.set_ylabel("ROUGE-1 (test)")
      ax.set_title(f"Ablations at s = {s}" + (" (cf. paper Table 4)" if s == 64 else ""))
      ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, f"{name}_ablations.png"), dpi=110)
    plt.close(fig)


def markdown_table(payload: dict) -> str:
  """Our cells beside the paper's T5-small CNN/DailyMail ROUGE-1 (Tables 3 and 4)."""
  def paper(r):
    if r["kind"] == "full":
      return f"{PAPER['full']:.2f}"
    if r["schedule"] == "padded" and r["s"] in PAPER.get(r["kind"], {}):
      return f"{PAPER[r['kind']][r['s']]:.2f}"
    if r["schedule"] == "padded" and r["s"] == 64 and r["kind"] in PAPER["ablations_s64"]:
      return f"{PAPER['ablations_s64'][r['kind']]:.2f} (s=64)"
    return "–"
  def fired(r):
    if not r.get("raf"):
      return "–"
    return " / ".join(f"{v['raf_fired']:.2f}" + (f" ({v['recurrent_share']:.2f})" if "recurrent_share" in v else "")
                      for v in r["raf"].values())
  def num(v, fmt):
    return "–" if v is None else format(v, fmt)
  lines = ["| kind | s | schedule | R-1 | R-2 | R-L | R-Lsum | final train loss | test loss "
           "| source gain | distinct predictions | RAF fired (recurrent share), per layer | steps | wall "
           "| paper R-1 |", "|" + " --- |" * 15]
  for r in payload["cells"]:
    lines.append(f"| {r['kind']} | {r['s'] or '–'} | {r['schedule'] if r['s'] else '–'} | "
                 f"{r['rouge1']:.2f} | {r['rouge2']:.2f} | {r['rougeL']:.2f} | {r['rougeLsum']:.2f} | "
                 f"{r['final_train_loss']:.3f} | {num(r.get('test_loss'), '.3f')} | "
                 f"{num(r.get('source_gain'), '.4f')} | {num(r.get('distinct_predictions'), 'd')} | {fired(r)} | {r['steps']} | {'>= ' if r.get('wall_incomplete') else ''}{r['wall_s'] / 60:.0f} min | "
                 f"{paper(r)} |")
  missing = [n for n in payload["cells_planned"] if n not in {r["name"] for r in payload["cells"]}]
  if missing:
    lines.append(f"\nNot run yet: {', '.join(missing)}.")
  return "\n".join(lines)


def _grid_name(args, preset_name: str, preset: dict) -> str:
  """segment_sweep_<preset> fine-tuned from the reader (the paper's protocol), ..._scratch from
  scratch; then the --tag."""
  return (preset.get("name", f"segment_sweep_{preset_name}") + ("" if args.reader else "_scratch")
          + (f"_{args.tag}" if args.tag else ""))


def _settings(args, preset: dict, runs: str, build: bool) -> tuple[dict, str | None, str | None]:
  """(the cells' shared --config overrides, the reader's folder or None, the dev split's path or
  None). `build`: check the corpus and make what the cells read (the long task's data, the runs
  folder, a tokenizer when there is no reader); without it (--publish) nothing is read or made."""
  if preset.get("long"):  # the long-input task, built once into the runs folder from DialogSum
    from benchmarks import long_dialogsum
    data = os.path.join(runs, "data")
    if build and not os.path.exists(os.path.join(data, long_dialogsum.STATS)):
      long_dialogsum.build(args.data_dir, data, os.path.join(os.path.abspath(args.reader), "spm.model"))
    args.data_dir, args.train_file, args.test_file = data, long_dialogsum.OUT["train"], long_dialogsum.OUT["test"]
    args.eval_summary_key = "summary"
  train_path = os.path.abspath(os.path.join(args.data_dir, args.train_file))
  test_path = os.path.abspath(os.path.join(args.data_dir, args.test_file))
  dev_path = os.path.abspath(os.path.join(args.data_dir, args.dev_file)) if args.dev_file else None
  if build:
    for path in filter(None, (train_path, test_path, dev_path)):
      if not os.path.exists(path):
        sys.exit(f"missing {path}: pass --data_dir (and --train_file / --test_file) of a JSONL corpus")
    os.makedirs(runs, exist_ok=True)
  reader = os.path.abspath(args.reader) if args.reader else None
  if reader:
    if not os.path.exists(os.path.join(reader, "config.json")):
      sys.exit(f"no reader at {reader}: make one with benchmarks/reader.py (it exports config.json, "
               "model.safetensors and spm.model)")
    spm = os.path.join(reader, "spm.model")
  elif build:
    from configs import dialogsum_sweep
    spm = train_tokenizer(args, runs, train_path, dialogsum_sweep.get_config().data.spm_vocab_size)
  else:
    spm = os.path.join(runs, "spm", "spm.model")  # trained by the grid's own run
  overrides = {"data.train_split": train_path, "data.eval_split": test_path,
               "data.document_key": args.document_key, "data.summary_key": args.summary_key,
               "data.eval_summary_key": args.eval_summary_key, "data.tokenizer": f"spm:{spm}"}
  if reader:
    overrides["model.init_from"] = reader
  overrides.update(preset["overrides"])
  overrides.update(parse_set(args.set))
  return overrides, reader, dev_path


def _payload(args, preset_name: str, overrides: dict, reader, dev_path, commit: str, results: list[dict],
             grid: list[dict]) -> dict:
  """The grid's JSON: its settings, every finished cell (grid order), the groups and the verdict."""
  groups = aggregate(results)
  return {"preset": preset_name, "tag": args.tag or None,
          "overrides": {k: _relative(v) for k, v in overrides.items()},
          "protocol": "fine-tuned from the reader" if reader else "from scratch",
          "reader": _relative(reader) if reader else None,
          "git_commit": commit, "machine": _machine(), "paper_t5_small_cnndm": PAPER,
          "cells": [dict(r, workdir=_relative(r["workdir"])) for r in results],
          "dev_split": _relative(dev_path) if dev_path else None,
          "groups": groups, "verdict": verdict(groups),
          "cells_planned": [c["name"] for c in grid], "workers": args.workers}


def _write(args, name: str, payload: dict):
  common.write(args.out, name, payload)
  plot(payload["groups"], args.out, name)
  if args.positions:
    plot_positions(payload["groups"], args.out, name)


def main():
  args = parse_args()
  preset_name = "quick" if args.quick else args.preset
  preset = PRESETS[preset_name]
  if args.workers is None:
    args.workers = preset.get("workers", 1)
  name = _grid_name(args, preset_name, preset)
  if args.dev_file is None:
    args.dev_file = preset.get("dev_file")
  if args.dev_summary_key is None:
    args.dev_summary_key = preset.get("dev_summary_key", args.summary_key)
  args.positions = bool(preset.get("long"))
  if args.table:
    print(markdown_table(json.load(open(os.path.join(args.out, f"{name}.json")))))
    return
  runs = args.runs or os.path.join(REPO, "runs", name)
  # --publish reads only the result files: no corpus, tokenizer or runs folder
  overrides, reader, dev_path = _settings(args, preset, runs, build=not args.publish)
  only = set(filter(None, args.only.split(",")))
  grid = [c for c in (cells_steps1500(preset) if preset_name == "cpu1500" else cells_long(preset)
                      if preset.get("long") else cells(preset))
          if not only or c["name"] in only]
  cell_dir = os.path.join(args.out, name)  # one result file per finished cell
  if args.workers > 1:  # this process's own jax work (cell statistics) stays on one core too
    os.environ["XLA_FLAGS"] = common.single_thread_flags(os.environ)
  done: dict[str, dict] = {}
  commit = _git_commit()  # this invocation's; each cell records the one that trained it
  for c in grid:  # cells finished by an earlier run, kept as result files
    path = os.path.join(cell_dir, c["name"] + ".json")
    if os.path.exists(path):
      done[c["name"]] = json.load(open(path))

  def payload():
    results = [done[c["name"]] for c in grid if c["name"] in done]  # grid order
    return _payload(args, preset_name, overrides, reader, dev_path, commit, results, grid)

  if args.publish:  # the training run's own record of its code, machine and settings stands
    out = payload()
    prior = os.path.join(args.out, f"{name}.json")
    if os.path.exists(prior):
      with open(prior) as f:
        out.update({k: v for k, v in json.load(f).items() if k in ("git_commit", "machine", "overrides")})
    trained = {r.get("git_commit") for r in out["cells"]}
    if len(trained) == 1 and None not in trained:  # every cell's code: the JSON's commit
      out["git_commit"] = trained.pop()
    _write(args, name, dict(out, published_by=commit))
    return

  def run_and_keep(cell):
    r = run_cell(cell, args, runs, overrides)
    r = dict(r, workdir=_relative(r["workdir"]))
    os.makedirs(cell_dir, exist_ok=True)
    common.write(cell_dir, cell["name"], r)
    return r

  todo = [c for c in grid if c["name"] not in done and (  # --collect: finished workdirs only
      not args.collect or os.path.exists(os.path.join(runs, c["name"], "rouge.json")))]
  if not todo:
    _write(args, name, payload())
  with concurrent.futures.ThreadPoolExecutor(max(1, args.workers)) as pool:
    futures = {pool.submit(run_and_keep, cell): cell for cell in todo}
    for future in concurrent.futures.as_completed(futures):  # the JSON and figures as each cell finishes
      done[futures[future]["name"]] = future.result()
      _write(args, name, payload())


def _relative(value):
  """A path (also after an `spm:` prefix) relative to the repository root; other values unchanged."""
  prefix = "spm:" if isinstance(value, str) and value.startswith("spm:") else ""
  if isinstance(value, str) and os.path.isabs(value[len(prefix):]):
    return prefix + os.path.relpath(value[len(prefix):], REPO)
  return value


CODE = ["srformer_jax", "configs", "train.py", "eval.py", "benchmarks/segment_sweep.py",
        "benchmarks/common.py", "benchmarks/stats.py"]  # what a cell's result depends on


def _git_commit(code: list[str] = CODE) -> str:
  """The last commit that changed the code (`code`: the paths a result depends on; not the results),
  with '-dirty' when the code on disk differs from HEAD: cells trained by the same code name the
  same commit (`common.code_commit` over these paths)."""
  return common.code_commit(code)


def _git_clean() -> bool | None:
  """Whether the whole tree (not only the code) matches HEAD, untracked files aside."""
  try:
    return subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO).returncode == 0
  except OSError:
    return None


def _code_commit(commit: str, code: list[str] = CODE) -> str:
  """The last commit at or before `commit` that changed the code ('-dirty' kept); `commit` itself
  when git cannot tell."""
  base, dirty = (commit[:-len("-dirty")], "-dirty") if commit.endswith("-dirty") else (commit, "")
  try:
    out = subprocess.run(["git", "log", "-1", "--format=%H", base, "--", *code], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return commit
  return (out or base) + dirty


def _machine() -> dict:
  import platform

  import jax
  return dict(common.machine(jax), python=platform.python_version())



if __name__ == "__main__":
  main()
