"""How configs/default.py was chosen: a few model sizes and tokenizers at the same wall-clock budget.

Each variant trains on the docstring corpus for about `--budget_s` seconds of training (its step
count comes from its own step time, measured first in a short probe), then is scored on the first
`--eval_examples` docstrings of the validation split (the test split is the default job's, not
looked at here). Same data order, optimiser and decoding for every variant; one seed each (the
differences it decides between are large, and a seed costs a whole run).

Writes results/default_job_compare_<platform>.{json,png}; docs/training.md renders the table.

  python benchmarks/default_job_compare.py     # ~6 min a variant on a 2-core CPU
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (what differs, --config overrides on top of configs/default.py)
VARIANTS = {
    "d128_v2000": ("d_model 128, 2+2 layers, d_ff 256, SentencePiece 2,000 (the first default)", [
        "--config.model.scratch.d_model=128", "--config.model.scratch.d_ff=256",
        "--config.model.scratch.num_encoder_layers=2", "--config.model.scratch.num_decoder_layers=2",
        "--config.data.spm_vocab_size=2000"]),
    "d128_v8000": ("d_model 128, 2+2 layers, d_ff 512, SentencePiece 8,000", [
        "--config.model.scratch.d_model=128", "--config.model.scratch.d_ff=512",
        "--config.model.scratch.num_encoder_layers=2", "--config.model.scratch.num_decoder_layers=2",
        "--config.data.spm_vocab_size=8000"]),
    "d256_v8000": ("d_model 256, 2+2 layers, d_ff 1024, SentencePiece 8,000", [
        "--config.model.scratch.d_model=256", "--config.model.scratch.d_ff=1024",
        "--config.model.scratch.d_kv=64", "--config.model.scratch.num_encoder_layers=2",
        "--config.model.scratch.num_decoder_layers=2", "--config.data.spm_vocab_size=8000"]),
    "d128_v16000": ("d_model 128, 2+2 layers, d_ff 512, SentencePiece 16,000", [
        "--config.model.scratch.d_model=128", "--config.model.scratch.d_ff=512",
        "--config.model.scratch.num_encoder_layers=2", "--config.model.scratch.num_decoder_layers=2",
        "--config.data.spm_vocab_size=16000"]),
    "d128_v8000_src64": ("as d128_v8000 with max_source_len 64 (the name, signature and first sentences)", [
        "--config.model.scratch.d_model=128", "--config.model.scratch.d_ff=512",
        "--config.model.scratch.num_encoder_layers=2", "--config.model.scratch.num_decoder_layers=2",
        "--config.data.spm_vocab_size=8000", "--config.data.max_source_len=64"]),
    "d256_v8000_src64": ("as d256_v8000 with max_source_len 64 (the name, signature and first sentences)", [
        "--config.model.scratch.d_model=256", "--config.model.scratch.d_ff=1024",
        "--config.model.scratch.d_kv=64", "--config.model.scratch.num_encoder_layers=2",
        "--config.model.scratch.num_decoder_layers=2", "--config.data.spm_vocab_size=8000",
        "--config.data.max_source_len=64"]),
}


def _train(workdir: str, overrides: list[str], env: dict) -> float:
  cmd = [sys.executable, "train.py", "--config=configs/default.py", f"--workdir={workdir}", *overrides]
  t0 = time.perf_counter()
  subprocess.run(cmd, cwd=REPO, env=env, check=True)
  return time.perf_counter() - t0


def _rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


DECODINGS = {  # name -> decode overrides; "beam2_block3" is configs/default.py's
    "greedy": dict(num_beams=1, no_repeat_ngram_size=0),
    "greedy_block3": dict(num_beams=1, no_repeat_ngram_size=3),
    "beam2_block3": dict(num_beams=2, no_repeat_ngram_size=3),
    "beam4_block3": dict(num_beams=4, no_repeat_ngram_size=3),
    "beam4_block3_lp2": dict(num_beams=4, no_repeat_ngram_size=3, length_penalty=2.0),
}


def decodings(workdir: str, examples: int) -> list[dict]:
  """The trained default run in `workdir` decoding the first `examples` validation docstrings with
  each of DECODINGS (everything else as configs/default.py)."""
  from configs import default
  from srformer_jax import eval_lib
  out = []
  for name, fields in DECODINGS.items():
    cfg = default.get_config()
    cfg.data.update(eval_split="validation", max_eval_examples=examples)
    cfg.decode.update(fields)
    with tempfile.TemporaryDirectory() as tmp:
      t0 = time.perf_counter()
      scores = eval_lib.evaluate(cfg, workdir, out_dir=tmp)
      seconds = time.perf_counter() - t0
      with open(os.path.join(tmp, "predictions.jsonl")) as f:
        preds = [json.loads(line)["prediction"] for _, line in zip(range(3), f)]
    out.append(dict(name=name, decode=fields, rouge1=scores["rouge1"], rouge2=scores["rouge2"],
                    rougeL=scores["rougeL"], examples_scored=scores["num_examples"], eval_s=seconds,
                    first_predictions=preds))
    print(json.dumps(out[-1]), flush=True)
  return out


def lead_baselines(examples: int, words=(8, 12)) -> list[dict]:
  """ROUGE of copying the first n words of each validation docstring (its name, signature and first
  words): what a model must beat to have learnt more than where a summary's words usually are."""
  from rouge_score import rouge_scorer
  from srformer_jax import corpus
  with tempfile.TemporaryDirectory() as tmp:
    with open(corpus.write_corpus(tmp)["validation"]) as f:
      rows = [json.loads(line) for _, line in zip(range(examples), f)]
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
  out = []
  for n in words:
    scores = [scorer.score(r["summary"], " ".join(r["document"].split()[:n])) for r in rows]
    out.append({"name": f"lead_{n}_words", **{k: 100 * sum(x[k].fmeasure for x in scores) / len(scores)
                                              for k in ("rouge1", "rouge2", "rougeL")},
                "examples_scored": len(rows)})
  return out


def main():
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--budget_s", type=float, default=300.0, help="training seconds per variant")
  p.add_argument("--eval_examples", type=int, default=400, help="validation docstrings scored")
  p.add_argument("--variants", default="", help="comma-separated names of VARIANTS (default: all; --quick: one)")
  p.add_argument("--decodings", default="",
                 help="a trained default run (train.py --config=configs/default.py): only compare DECODINGS "
                      "on it, into the existing JSON")
  p.add_argument("--baselines_only", action="store_true",
                 help="only (re)compute the lead baselines into the existing JSON")
  p.add_argument("--append", action="store_true",
                 help="add to the records already in the JSON (same budget), replacing those of the same name")
  args = p.parse_args()
  jax = common.setup_platform(args.platform)
  env = dict(os.environ, JAX_PLATFORMS=os.environ["JAX_PLATFORMS"])
  env.pop("XLA_FLAGS", None)  # one device, as on a user's machine
  probe_steps, budget = (4, 5.0) if args.quick else (60, args.budget_s)
  tag = f"default_job_compare_{'quick' if args.quick else args.platform}"
  path = os.path.join(args.out, tag + ".json")
  if args.baselines_only or args.decodings:
    with open(path) as f:
      payload = json.load(f)
    if args.decodings:
      payload["decodings"] = decodings(args.decodings, 2 if args.quick else payload["eval_examples"])
    else:
      payload["baselines"] = lead_baselines(payload["eval_examples"])
    common.write(args.out, tag, payload)
    return
  records = []
  names = args.variants.split(",") if args.variants else list(VARIANTS)[:1 if args.quick else None]
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    sys.exit(f"default_job_compare: unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
  for name in names:
    what, overrides = VARIANTS[name]
    with tempfile.TemporaryDirectory() as tmp:
      # the probe: steps per second after compilation (the last logged interval)
      _train(os.path.join(tmp, "probe"), overrides + [
          f"--config.train.num_steps={probe_steps}", f"--config.train.log_every={probe_steps // 2}",
          f"--config.train.save_every={probe_steps}", "--config.data.max_eval_examples=1"], env)
      steps_per_s = _rows(os.path.join(tmp, "probe"))[-1]["steps_per_s"]
      steps = max(probe_steps, int(budget * steps_per_s) // 20 * 20)
      workdir = os.path.join(tmp, "run")
      wall = _train(workdir, overrides + [
          f"--config.train.num_steps={steps}", f"--config.train.warmup_steps={max(1, steps // 10)}",
          f"--config.train.save_every={steps}", "--config.data.eval_split=validation",
          f"--config.data.max_eval_examples={2 if args.quick else args.eval_examples}"], env)
      rows = _rows(workdir)
      with open(os.path.join(workdir, "rouge.json")) as f:
        rouge = json.load(f)
      with open(os.path.join(workdir, "predictions.jsonl")) as f:
        preds = [json.loads(line)["prediction"] for _, line in zip(range(3), f)]
      records.append(dict(name=name, what=what, overrides=overrides, probe_steps_per_s=steps_per_s,
                          steps=steps, wall_s=wall, last_loss=rows[-1]["loss"], rouge1=rouge["rouge1"],
                          rouge2=rouge["rouge2"], rougeL=rouge["rougeL"],
                          examples_scored=rouge["num_examples"], first_predictions=preds))
      print(json.dumps(records[-1]), flush=True)
      if args.quick:  # the decoding comparison's code, on this run
        quick_decodings = decodings(workdir, 2)
  if args.append and os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    if before["budget_s"] != budget or before["eval_examples"] != args.eval_examples:
      sys.exit("default_job_compare: --append needs the same --budget_s and --eval_examples as the JSON")
    names = {r["name"] for r in records}
    records = [r for r in before["records"] if r["name"] not in names] + records
  payload = {"machine": common.machine(jax), "budget_s": budget, "split": "validation",
             "eval_examples": args.eval_examples, "seed": 0, "records": records,
             "baselines": lead_baselines(2 if args.quick else args.eval_examples)}
  if args.quick:
    payload["decodings"] = quick_decodings
  common.write(args.out, tag, payload)
  if not args.quick:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3))
    names = [r["name"] for r in records]
    ax.barh(names, [r["rouge1"] for r in records], color="tab:blue")
    for i, r in enumerate(records):
      ax.text(r["rouge1"], i, f" {r['rouge1']:.1f} ({r['steps']} steps)", va="center", fontsize=8)
    ax.set_xlabel(f"validation ROUGE-1 after ~{budget:.0f} s of training")
    ax.set_title("docstring summaries: variants of configs/default.py", fontsize=9)
    ax.set_xlim(0, max(r["rouge1"] for r in records) * 1.35)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, tag + ".png"), dpi=120)


if __name__ == "__main__":
  main()
