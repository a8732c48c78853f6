"""The reader: a small T5 with full cross-attention, trained on DialogSum until it reads its dialogue.

The paper fine-tunes a *pretrained* T5 with each kind of cross-attention. No pretrained weights can
be had offline, and a model trained from scratch on summaries alone learns the summaries' language
long before it reads its input.
So this script makes the part of the pretrained model: it trains one full-attention T5 on a mixture
of summarization (dialogue -> summary) and a denoising objective on the training dialogues, whose
inputs start with "denoise: " (the summarization inputs are the dialogues as the test set has them).
`--objective`:
  span     T5's span corruption: spans of the dialogue replaced by sentinels `<s0>`, `<s1>`, ... in the
           input, the target lists the removed spans (what is not in the input);
  infill   BART's text infilling: the same corrupted input (30% of the words), the target is the
           original dialogue (its first max_target_len tokens), so most target tokens are copied from
           the input and the decoder must learn to read it.

Every `--eval_every` steps it measures, on the test dialogues, the source gain (teacher-forced loss
with another dialogue minus with its own, `diagnostics.source_reliance`), the number of distinct
predictions and ROUGE with the configured decoding; the curve goes to results/reader_<preset>[_infill].json
and .png. Gate: source gain >= 0.5 nats/token and >= 450 distinct predictions on the 500 test
dialogues. The final checkpoint is exported as a Hugging Face directory (config.json +
model.safetensors) with its SentencePiece model, `benchmarks/reader/<preset>[_infill]/`, which every cell of
the segment sweep starts from (`init_from`, like a hub T5). Resumable: a rerun continues training
and skips the evaluations it has.

  python benchmarks/reader.py --preset cpu --objective infill --data_dir ../shared/data/dialogsum
  python benchmarks/reader.py --quick --data_dir ../shared/data/dialogsum     # smoke test
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import common  # noqa: E402

SENTINELS = tuple(f"<s{i}>" for i in range(16))
DENOISE_PREFIX = "denoise: "

PRESETS = {
    # the segment sweep's CPU model (d 128, 2+2 layers, vocab 4000); steps to be set by a pilot
    # no dropout, as T5 1.1 was pretrained: at step 1000 the source gain was 0.037 nats/token against
    # 0.008 with the sweep's 0.1 (0.010 at step 2000), the denoising gain 0.067 against 0.008
    "cpu": dict(steps=6000, eval_every=1000, eval_examples=200, corrupt_copies=1,
                overrides={"train.batch_size": 16, "train.learning_rate": 2e-3, "train.warmup_steps": 200,
                           "model.dropout_rate": 0.0,
                           "train.log_every": 50, "decode.num_beams": 2}),
    "gpu": dict(steps=20000, eval_every=2000, eval_examples=500, corrupt_copies=2,
                overrides={"train.batch_size": 64, "train.learning_rate": 1e-3, "train.warmup_steps": 1000,
                           "train.log_every": 100, "decode.num_beams": 4, "model.dtype": "bfloat16",
                           "model.scratch.d_model": 512, "model.scratch.num_heads": 8, "model.scratch.d_kv": 64,
                           "model.scratch.d_ff": 2048, "model.scratch.num_encoder_layers": 6,
                           "model.scratch.num_decoder_layers": 6}),
    "quick": dict(steps=6, eval_every=3, eval_examples=8, corrupt_copies=1, train_examples=64,
                  overrides={"train.batch_size": 4, "train.learning_rate": 3e-3, "train.warmup_steps": 2,
                             "train.log_every": 2, "decode.num_beams": 1, "decode.batch_size": 8,
                             "model.scratch.d_model": 32, "model.scratch.num_heads": 2, "model.scratch.d_kv": 16,
                             "model.scratch.d_ff": 64, "model.scratch.num_encoder_layers": 1,
                             "model.scratch.num_decoder_layers": 1, "data.spm_vocab_size": 300}),
}
GATE = {"source_gain": 0.5, "distinct_predictions": 450}


def corrupt(text: str, rng, noise: float = 0.15, mean_span: float = 3.0) -> tuple[str, str]:
  """T5's span corruption on whitespace words: about `noise` of the words, in spans of mean length
  `mean_span`, are replaced by one sentinel each; the target is each sentinel followed by its words."""
  words = text.split()
  n = len(words)
  if n < 4:
    return text, ""
  n_noise = max(1, round(n * noise))
  n_spans = max(1, min(len(SENTINELS), round(n_noise / mean_span)))
  # span lengths: a random composition of n_noise into n_spans positive parts (T5's procedure)
  cuts = sorted(rng.choice(range(1, n_noise), size=min(n_spans - 1, n_noise - 1), replace=False).tolist()) \
      if n_spans > 1 and n_noise > 1 else []
  noise_lens = [b - a for a, b in zip([0] + cuts, cuts + [n_noise])]
  n_spans = len(noise_lens)
  keep_total = n - n_noise
  kcuts = sorted(rng.choice(range(1, keep_total), size=min(n_spans, keep_total - 1), replace=False).tolist())
  keep_lens = [b - a for a, b in zip([0] + kcuts, kcuts + [keep_total])]
  inp, tgt, pos = [], [], 0
  for i, span in enumerate(noise_lens):
    inp += words[pos:pos + keep_lens[i]]
    pos += keep_lens[i]
    inp.append(SENTINELS[i])
    tgt += [SENTINELS[i]] + words[pos:pos + span]
    pos += span
  inp += words[pos:]
  return " ".join(inp), " ".join(tgt)


OBJECTIVES = {
    "span": "summarization + span corruption (15% noise, mean span 3) of the training dialogues",
    "infill": "summarization + text infilling (30% noise, mean span 3; target: the original dialogue) "
              "of the training dialogues",
}


def noise_fn(objective: str):
  """The function that corrupts one dialogue for `objective`: text, rng -> (input, target)."""
  return {"span": corrupt, "infill": infill}[objective]


def infill(text: str, rng, noise: float = 0.3, mean_span: float = 3.0) -> tuple[str, str]:
  """BART's text infilling on whitespace words: the input as `corrupt` makes it, the target the whole
  original text (copying from the input is most of the task)."""
  inp, removed = corrupt(text, rng, noise, mean_span)
  return inp, (text if removed else "")


def build_mixture(train_path: str, out_path: str, copies: int, seed: int = 0, limit: int = 0,
                  objective: str = "span") -> dict:
  """Writes the reader's training JSONL ({"dialogue", "summary"}, DialogSum's own fields): every training dialogue once
  with its summary and `copies` times corrupted by `objective`, shuffled with `seed`. Returns counts."""
  noise = noise_fn(objective)
  import numpy as np
  rng = np.random.default_rng(seed)
  rows = []
  with open(train_path, encoding="utf-8") as f:
    for line in f:
      ex = json.loads(line)
      rows.append({"dialogue": ex["dialogue"], "summary": ex["summary"]})
      for _ in range(copies):
        inp, tgt = noise(ex["dialogue"], rng)
        if tgt:
          rows.append({"dialogue": DENOISE_PREFIX + inp, "summary": tgt})
      if limit and len(rows) >= limit:
        break
  order = rng.permutation(len(rows))
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  tmp = out_path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for i in order:
      f.write(json.dumps(rows[i], ensure_ascii=False) + "\n")
  os.replace(tmp, out_path)
  return {"examples": len(rows), "summarization": sum(not r["dialogue"].startswith(DENOISE_PREFIX) for r in rows)}


def reader_config(args, preset: dict, workdir: str, spm_path: str, mixture: str):
  from configs import dialogsum_sweep
  cfg = dialogsum_sweep.get_config()
  cfg.model.update(cross_attention="full", segment_schedule="padded")
  cfg.data.update(train_split=mixture, eval_split=os.path.join(args.data_dir, "dialogsum.test.jsonl"),
                  document_key="dialogue", summary_key="summary", eval_summary_key="summary1",
                  tokenizer=f"spm:{spm_path}", max_eval_examples=preset["eval_examples"])
  cfg.train.update(num_steps=preset["steps"], save_every=preset["eval_every"], keep_checkpoints=2)
  from benchmarks.segment_sweep import parse_set, set_fields
  return set_fields(cfg, dict(preset["overrides"], **parse_set(args.set)))


def trained(workdir: str) -> dict:
  """The run's last logged metrics (its step is the checkpoint's: every save step is logged)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()][-1]


def denoising_source_gain(cfg, workdir: str, objective: str, examples: int) -> float:
  """The source gain on the denoising half: the first `examples` test dialogues corrupted by
  `objective` (a fixed seed), scored with their own input and with another's. Near 0 the decoder
  solves the denoising task as a language model, without reading its input."""
  import numpy as np
  from srformer_jax import data, run_setup
  from srformer_jax.diagnostics import source_reliance
  model, tok, params = run_setup.load_trained_model(cfg, workdir)
  noise = noise_fn(objective)
  rng = np.random.default_rng(1)
  pairs = []
  for text, _ in itertools.islice(iter(run_setup.load_source(cfg, "eval_split", workdir)), examples):
    inp, tgt = noise(text, rng)
    if tgt:
      pairs.append((DENOISE_PREFIX + inp, tgt))
  batches = data.eval_batches(data.ListSource(pairs), tok, run_setup.batch_spec(cfg, 50))
  return source_reliance(model, params, ((b, n) for b, _, n in batches))["source_gain"]


def measure(cfg, workdir: str, eval_examples: int, objective: str) -> dict:
  """Source gain, test loss, ROUGE and distinct predictions of the latest checkpoint, and the
  source gain on its denoising task."""
  import copy
  from benchmarks import segment_sweep
  from srformer_jax import eval_lib
  cfg = copy.deepcopy(cfg)
  cfg.data.max_eval_examples = eval_examples
  stats = segment_sweep.cell_stats(cfg, workdir, "full")
  scores = eval_lib.evaluate(cfg, workdir)
  with open(os.path.join(workdir, "predictions.jsonl")) as f:
    distinct = len({json.loads(line)["prediction"] for line in f})
  return {"test_loss": stats["test_loss"], "source_gain": stats["source_gain"], "distinct_predictions": distinct,
          "eval_examples": scores["num_examples"], **{k: scores[k] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")},
          "denoising_source_gain": denoising_source_gain(cfg, workdir, objective, eval_examples)}


def plot(curve: list[dict], path: str, title: str):
  plt = common.plt()
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  steps = [r["step"] for r in curve]
  ax1.plot(steps, [r["source_gain"] for r in curve], "o-")
  ax1.axhline(GATE["source_gain"], color="r", ls=":", label="gate")
  ax1.set_xlabel("step")
  ax1.set_ylabel("source gain (nats/token)")
  ax1.legend()
  ax1.grid(alpha=0.3)
  ax2.plot(steps, [r["rouge1"] for r in curve], "o-", label="ROUGE-1")
  ax2.plot(steps, [r["rouge2"] for r in curve], "o-", label="ROUGE-2")
  ax2b = ax2.twinx()
  ax2b.plot(steps, [r["distinct_predictions"] for r in curve], "s--", color="gray", label="distinct predictions")
  ax2b.set_ylabel("distinct predictions")
  ax2.set_xlabel("step")
  ax2.legend(loc="upper left")
  ax2.grid(alpha=0.3)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  common.save_figure(fig, path)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="cpu", choices=["cpu", "gpu"])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--objective", default="span", choices=sorted(OBJECTIVES),
                 help="the denoising half of the mixture (see the module docstring)")
  p.add_argument("--data_dir", default=os.path.join("..", "shared", "data", "dialogsum"))
  p.add_argument("--workdir", default="", help="the reader's run (default runs/reader_<preset>[_<objective> unless span])")
  p.add_argument("--export", default="", help="where the reader goes (default benchmarks/reader/<preset>[_<objective> unless span])")
  p.add_argument("--out", default=common.RESULTS)
  p.add_argument("--platform", default="cpu", choices=["cpu", "gpu", "tpu"])
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="a config override on top of the preset's, e.g. --set model.dropout_rate=0.0")
  args = p.parse_args()
  jax = common.setup_platform(args.platform)
  name = "quick" if args.quick else args.preset
  preset = PRESETS[name]
  tag = name if args.objective == "span" else f"{name}_{args.objective}"
  workdir = args.workdir or os.path.join("runs", f"reader_{tag}")
  export = args.export or os.path.join(REPO, "benchmarks", "reader", tag)
  from srformer_jax import data, train_lib

  from benchmarks.segment_sweep import parse_set
  parse_set(args.set)  # a malformed --set stops here, before any work

  mixture = os.path.join(workdir, "mixture.jsonl")
  if not os.path.exists(mixture):
    counts = build_mixture(os.path.join(args.data_dir, "dialogsum.train.jsonl"), mixture,
                           preset["corrupt_copies"], limit=preset.get("train_examples", 0),
                           objective=args.objective)
    print(f"mixture: {counts}", flush=True)
  spm_path = os.path.join(workdir, "spm", "spm.model")
  if not os.path.exists(spm_path):
    src = data.read_jsonl(mixture, "dialogue", "summary")
    texts = [t for pair in src.pairs[:20000] for t in pair]
    vocab = preset["overrides"].get("data.spm_vocab_size", 4000)
    data.train_sentencepiece(texts, spm_path[:-len(".model")], vocab, seed=0, user_defined_symbols=SENTINELS)
  cfg = reader_config(args, preset, workdir, spm_path, mixture)
  curve_file = os.path.join(workdir, "curve.json")
  curve = json.load(open(curve_file)) if os.path.exists(curve_file) else []
  while True:
    done = {r["step"] for r in curve}
    train_lib.train(cfg, workdir, stop_after=preset["eval_every"])
    last = trained(workdir)  # from the run's log: also right when this invocation trained nothing
    step = last["step"]
    if step not in done:
      row = {"step": step, "train_loss": last.get("loss"), **measure(cfg, workdir, preset["eval_examples"], args.objective)}
      curve.append(row)
      with open(curve_file, "w") as f:
        json.dump(curve, f, indent=2)
      print(json.dumps(row), flush=True)
    if step >= preset["steps"]:
      break
  final = measure(cfg, workdir, 500 if not args.quick else preset["eval_examples"], args.objective)
  final.update(step=preset["steps"], gate=GATE,
               gate_holds=bool(final["source_gain"] >= GATE["source_gain"]
                               and final["distinct_predictions"] >= GATE["distinct_predictions"]))
  # the reader as a HF checkpoint with its tokenizer: what every sweep cell starts from
  from srformer_jax import run_setup, save_hf_checkpoint
  model, tok, params = run_setup.load_trained_model(cfg, workdir)
  save_hf_checkpoint(jax.device_get(params), model.config, export, include_srformer=False)
  shutil.copy(spm_path, os.path.join(export, "spm.model"))
  payload = {"machine": common.machine(jax), "preset": name, "settings": {k: v for k, v in preset.items()},
             "set": parse_set(args.set),
             "curve": curve, "final": final, "export": os.path.relpath(export, REPO),
             "objective": OBJECTIVES[args.objective], "objective_name": args.objective}
  common.write(args.out, f"reader_{tag}", payload)
  plot(curve, os.path.join(args.out, f"reader_{tag}.png"),
       f"reader ({tag}): full attention, {OBJECTIVES[args.objective]}; gate {GATE}")


if __name__ == "__main__":
  from srformer_jax import host_malloc
  host_malloc.reexec_with_huge_pages()  # as train.py does: the experiments run as the jobs do
  main()
