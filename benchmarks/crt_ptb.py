"""CRT vs baselines on WordPTB: perplexity with seeds and 95% intervals, and forward FLOPs per token.

The protocol (CRT, arXiv 2505.00929: a shallow Transformer on short segments plus a persistent
recurrent memory matches a full-length Transformer on WordPTB at lower cost). Every run has the same
shallow Transformer, optimiser, schedule, data order and tokens per step (windows of L tokens per
stream), and is trained until its validation perplexity stops improving: validation every
`eval_every` steps, the best state kept, stop after `patience` validations without a new best, test
perplexity of the best-validation state. Models: the full-context Transformer (segments of L), the
same on independent segments of L/2 and L/4 (no memory), Transformer-XL on L/2, CRT on L/2 and L/4,
then CRT's design alternatives (memory at every layer, pooled update, orthogonal cell); then full,
segmented L/4 and CRT L/4 at a longer L where CRT's forward FLOPs are below full's.

Gate (before any claim): the memory-less model on L/4 must be >= 1.05x the full-context test
perplexity with separated 95% intervals, i.e. the models use their context. Claim: CRT on L/4 within
2% of full L (or better) and below segmented L/4 with separated intervals.

The plan runs in the order that answers most first (seed 0 of the gate/claim models, then seeds 1, 2,
...). Each finished run writes results/crt_ptb_<preset>/<run>.json (commit it); the benchmark
started again skips finished runs and resumes the unfinished one from its checkpoint. After every run
results/crt_ptb_<preset>.json (runs, per-model mean and interval, gate, claim) and .png are rewritten.

  python benchmarks/crt_ptb.py --preset cpu --data_dir ../shared/data/ptb      # ~3-4 h, 2-core CPU
  python benchmarks/crt_ptb.py --preset gpu --platform gpu --data_dir ...      # bigger, for a GPU
  python benchmarks/crt_ptb.py --quick                                          # smoke, synthetic text
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common, scisumm_lm, stats  # noqa: E402

RESULT_NAMES = {"scisumm": "crt_scisumm_cpu", "quick_scisumm": "crt_scisumm_quick"}  # else crt_ptb_<preset>
CODE = ["srformer_jax", "configs", "train_lm.py", "benchmarks/crt_ptb.py", "benchmarks/scisumm_lm.py",
        "benchmarks/common.py", "benchmarks/stats.py"]  # what a run's result depends on

# name: (memory kind, segment fraction of L, CRT overrides)
MODELS = {
    "full_L": ("none", "full", {}),
    "segmented_L/4": ("none", "quarter", {}),
    "crt_L/4": ("crt", "quarter", {}),
    "segmented_L/2": ("none", "half", {}),
    "crt_L/2": ("crt", "half", {}),
    "xl_L/2": ("xl", "half", {}),
    "crt_L/2_layer": ("crt", "half", {"memory_input": "layer"}),
    "crt_L/2_pooled": ("crt", "half", {"memory_update": "pooled"}),
    "crt_L/2_ortho": ("crt", "half", {"cell": "ortho_gru"}),
}
GATE_CLAIM = ("full_L", "segmented_L/4", "crt_L/4")
MAIN = GATE_CLAIM + ("segmented_L/2", "crt_L/2", "xl_L/2")
ALTERNATIVES = ("crt_L/2_layer", "crt_L/2_pooled", "crt_L/2_ortho")
GATE_CLAIM_XL = GATE_CLAIM + ("xl_L/2",)


# Per preset: the model and schedule shared by every run, the seeds, and the longer-context repeat.
# cpu: d 128, 2 layers, L = 64; one epoch of PTB (~930k tokens) is ~450 steps of 32 x 64 tokens, so
# 2000 steps is ~4.4 epochs, validated every 250 steps (~0.55 epoch). The L = 512 repeat keeps the
# tokens per step (4 streams x 512), the steps and so the epochs: a first try with 8 streams x 512 for
# 1000 steps (the same epochs in half the updates) left full L at 158 test ppl, worse than at L = 64
# with an eighth of the context (results/crt_ptb_cpu_superseded/), i.e. short of updates.
PRESETS = {
    "cpu": dict(context_len=64, d_model=128, num_heads=4, d_ff=512, num_layers=2, dropout_rate=0.1,
                batch_size=32, num_steps=2000, learning_rate=2e-3, warmup_steps=100, eval_every=250,
                patience=2, eval_batch_size=10, seeds=(0, 1, 2), extra_seeds=(0,),
                long=dict(context_len=512, batch_size=4, num_steps=2000, eval_every=250, seeds=(0, 1, 2))),
    # gpu: sized for minutes of one H100/H200, not run yet: 64 streams x 256 tokens (~16k tokens a
    # step, ~57 steps an epoch), at most 600 steps (~10 epochs) with early stopping; a few seconds of
    # compilation and ~5-10 ms a step, so ~10-20 s a run and the 27 runs in several minutes
    "gpu": dict(context_len=256, d_model=256, num_heads=4, d_ff=1024, num_layers=3, dropout_rate=0.2,
                batch_size=64, num_steps=600, learning_rate=1e-3, warmup_steps=40, eval_every=60,
                patience=3, eval_batch_size=10, seeds=(0, 1, 2), extra_seeds=(0,),
                long=dict(context_len=1024, batch_size=16, num_steps=600, eval_every=60, seeds=(0, 1))),
    # scisumm (issue 36 B): the ScisummNet ACL papers as one stream (benchmarks/scisumm_lm.py, built
    # into <workdir>/corpus), L = 512 where CRT's forward FLOPs are below full's, the cpu preset's
    # model and tokens per step as its L = 512 repeat: 4 streams x 512 tokens. 6000 steps (~3 epochs
    # of the 3.96M training tokens), validated every 750: the pilot (its first two runs at 2000 steps,
    # ~1 epoch, results/crt_scisumm_pilot_cpu.json) left both models still improving at their last
    # validation and full L above segmented L/4, i.e. not yet using its longer context. The gate's and
    # the claim's models 3 seeds each, XL one (~30 min a run on the 2-core CPU: ~5 h in all); test
    # perplexity also by position within the document.
    "scisumm": dict(context_len=512, d_model=128, num_heads=4, d_ff=512, num_layers=2, dropout_rate=0.1,
                    batch_size=4, num_steps=6000, learning_rate=2e-3, warmup_steps=100, eval_every=750,
                    patience=2, eval_batch_size=10, seeds=(0, 1, 2), corpus="scisumm",
                    models=GATE_CLAIM_XL, model_seeds={"xl_L/2": (0,)}, by_position=(0, 512, 2048)),
    "quick": dict(context_len=16, d_model=32, num_heads=2, d_ff=64, num_layers=2, dropout_rate=0.0,
                  batch_size=4, num_steps=6, learning_rate=3e-3, warmup_steps=2, eval_every=3,
                  patience=1, eval_batch_size=2, seeds=(0, 1), extra_seeds=(0,),
                  long=dict(context_len=32, batch_size=2, num_steps=4, eval_every=2, seeds=(0,))),
}
PRESETS["quick_scisumm"] = dict({k: v for k, v in PRESETS["quick"].items() if k not in ("long", "extra_seeds")},
                                seeds=(0,), corpus="scisumm", models=GATE_CLAIM_XL, by_position=(0, 8))


def plan(preset: dict) -> list[dict]:
  """Every run of the protocol, in the order it runs: seed by seed for the gate/claim models, then
  the other main models seed by seed, the alternatives, and the longer-context repeat."""
  base = preset["context_len"]
  if "models" in preset:  # one list of models, seed by seed (`model_seeds`: a model's own fewer seeds)
    fewer = preset.get("model_seeds", {})
    return [dict(name=n, seed=k, context_len=base) for k in preset["seeds"] for n in preset["models"]
            if k in fewer.get(n, preset["seeds"])]
  runs = [dict(name=n, seed=k, context_len=base) for k in preset["seeds"] for n in GATE_CLAIM]
  runs += [dict(name=n, seed=k, context_len=base) for k in preset["seeds"] for n in MAIN[3:]]
  runs += [dict(name=n, seed=k, context_len=base) for k in preset["extra_seeds"] for n in ALTERNATIVES]
  long = preset["long"]
  runs += [dict(name=n, seed=k, context_len=long["context_len"]) for k in long["seeds"] for n in GATE_CLAIM]
  return runs


def run_id(run: dict) -> str:
  return f"L{run['context_len']}_{run['name'].replace('/', '_')}_seed{run['seed']}"


def settings_for(preset: dict, context_len: int) -> dict:
  """The preset's settings at this context length (the longer-context repeat overrides a few)."""
  p = {k: v for k, v in preset.items() if k not in ("long", "seeds", "extra_seeds", "models", "corpus",
                                                    "by_position", "model_seeds")}
  if context_len != preset["context_len"]:
    p.update({k: v for k, v in preset["long"].items() if k != "seeds"})
  return p


def run_config(preset: dict, memory: str, fraction: str, overrides: dict, data_dir: str, seed: int,
               paths: dict | None = None):
  """The run's config; `paths` ({split: file}) instead of a WordPTB `data_dir`."""
  from configs import lm_ptb
  p = preset
  cfg = lm_ptb.lm_config(memory, fraction, context_len=p["context_len"])
  cfg.model.update(d_model=p["d_model"], num_heads=p["num_heads"], d_ff=p["d_ff"],
                   num_layers=p["num_layers"], dropout_rate=p["dropout_rate"], **overrides)
  cfg.data.update(data_dir=data_dir, eval_batch_size=p["eval_batch_size"])
  if paths:
    cfg.data.update(data_dir="", **{f"{split}_path": path for split, path in paths.items()})
  cfg.train.update(batch_size=p["batch_size"], num_steps=p["num_steps"], learning_rate=p["learning_rate"],
                   warmup_steps=p["warmup_steps"], eval_every=p["eval_every"], patience=p["patience"],
                   log_every=25, save_every=p["eval_every"], seed=seed)
  return cfg


def forward_flops_per_token(config) -> dict:
  """XLA-counted FLOPs of one segment's forward (batch 1, memory read and update included) / L."""
  import jax
  import jax.numpy as jnp
  from srformer_jax.crt.model import CRTLM, init_carry, init_params
  model = CRTLM(config)
  params = jax.eval_shape(lambda r: init_params(config, r), jax.random.key(0))
  tokens = jax.ShapeDtypeStruct((1, config.segment_len), jnp.int32)
  carry = jax.eval_shape(lambda: init_carry(config, 1))
  compiled = jax.jit(lambda p, t, c: model.apply({"params": p}, t, c)).lower(params, tokens, carry).compile()
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  total = float(ca.get("flops", 0.0)) / config.segment_len
  head = 2.0 * config.d_model * config.vocab_size  # the tied output projection, the same for every model
  return {"flops_per_token": total, "flops_per_token_without_output_layer": total - head}


def synthetic_corpus(root: str) -> str:
  import numpy as np
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(60)]
  for split, n in (("train", 600), ("valid", 60), ("test", 60)):
    with open(os.path.join(root, f"ptb.{split}.txt"), "w") as f:
      for _ in range(n):
        s = int(rng.integers(0, 50))
        f.write(" " + " ".join(words[s:s + int(rng.integers(4, 10))]) + " \n")
  return root


def scisumm_corpus(root: str, source: str, quick: bool) -> dict:
  """{split: file} of the ScisummNet stream, built into `root` once (benchmarks/scisumm_lm.py); the
  quick mode builds it from a few synthetic documents instead."""
  if not os.path.exists(os.path.join(root, scisumm_lm.STATS)):
    if quick:
      import numpy as np
      rng = np.random.default_rng(0)
      words = [f"w{i}" for i in range(40)]
      src = os.path.join(root, "synthetic.jsonl")
      os.makedirs(root, exist_ok=True)
      with open(src, "w") as f:
        for d in range(12):
          f.write(json.dumps({"id": f"D{d:02d}", "article": " ".join(
              words[int(i)] for i in rng.integers(0, 40, int(rng.integers(60, 120))))}) + "\n")
      scisumm_lm.build(root, src, valid_docs=2, test_docs=2, vocab_size=30, min_words=20)
    else:
      scisumm_lm.build(root, source)
  return {split: os.path.join(root, scisumm_lm.PATTERN.format(split=split)) for split in scisumm_lm.SPLITS}


def training_summary(rundir: str) -> dict:
  """Epochs, steps and median training tokens/s (log intervals after the first, which holds the
  compilation) from a run's metrics.jsonl."""
  rows = []
  with open(os.path.join(rundir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  speeds = sorted(r["tokens_per_s"] for r in rows[1:] if r.get("tokens_per_s") and "valid_nll" not in r)
  last = rows[-1] if rows else {}
  return {"steps": last.get("step"), "epochs": last.get("epoch"),
          "train_tokens_per_s": speeds[len(speeds) // 2] if speeds else None}


def aggregate(runs: list[dict]) -> dict:
  """Per model (name, context_len): mean and 95% interval over seeds of test and valid perplexity;
  the gate and the claim at every context length that has their models."""
  groups: dict[tuple, list[dict]] = {}
  for r in runs:
    groups.setdefault((r["name"], r["context_len"]), []).append(r)
  models = []
  for (name, context), rs in groups.items():
    first = rs[0]
    models.append({"name": name, "context_len": context, "segment_len": first["segment_len"],
                   "seeds": sorted(r["seed"] for r in rs),
                   "test_ppl": stats.mean_ci([r["test_ppl"] for r in rs]),
                   "valid_ppl": stats.mean_ci([r["valid_ppl"] for r in rs]),
                   "epochs": stats.mean_ci([r["epochs"] for r in rs]),
                   "flops_per_token": first["flops_per_token"],
                   "flops_per_token_without_output_layer": first["flops_per_token_without_output_layer"],
                   "train_tokens_per_s": stats.mean_ci([r["train_tokens_per_s"] for r in rs
                                                        if r.get("train_tokens_per_s")] or [0.0]),
                   # the table's throughput: other work on the machine only slows a run (some early
                   # runs shared it, or were resumed), so the fastest seed is the model's own speed
                   "train_tokens_per_s_fastest": max(r.get("train_tokens_per_s") or 0.0 for r in rs),
                   **({"test_by_position": [
                       {"from": b["from"], "to": b["to"], "tokens": b["tokens"],
                        "ppl": stats.mean_ci([r["test_by_position"][i]["ppl"] for r in rs])}
                       for i, b in enumerate(first["test_by_position"])]} if "test_by_position" in first else {}),
                   "runs_with_dense_dot_general": sum("dense_weight_grad" in r for r in rs),
                   "runs_with_huge_pages": sum(bool(r.get("malloc_huge_pages")) for r in rs)})
  out = {"models": models, "gate": {}, "claim": {}}
  by = {(m["name"], m["context_len"]): m for m in models}
  for context in sorted({m["context_len"] for m in models}):
    full, seg, crt = (by.get((n, context)) for n in GATE_CLAIM)
    if full and seg:
      ratio = seg["test_ppl"]["mean"] / full["test_ppl"]["mean"]
      sep = stats.separated(seg["test_ppl"], full["test_ppl"])
      out["gate"][str(context)] = {
          "segmented_L/4_over_full": ratio, "intervals_separated": sep,
          "seeds": min(len(full["seeds"]), len(seg["seeds"])),
          "holds": bool(ratio >= 1.05 and sep),
          "rule": "segmented_L/4 test ppl >= 1.05x full_L's, 95% intervals separated"}
    if full and seg and crt:
      ratio = crt["test_ppl"]["mean"] / full["test_ppl"]["mean"]
      below = crt["test_ppl"]["mean"] < seg["test_ppl"]["mean"] and stats.separated(crt["test_ppl"], seg["test_ppl"])
      flops = crt["flops_per_token_without_output_layer"] / full["flops_per_token_without_output_layer"]
      out["claim"][str(context)] = {
          "crt_L/4_over_full": ratio, "crt_L/4_below_segmented_L/4_separated": bool(below),
          "crt_L/4_flops_over_full": flops, "holds": bool(ratio <= 1.02 and below),
          "seeds": min(len(full["seeds"]), len(seg["seeds"]), len(crt["seeds"])),
          "rule": "crt_L/4 test ppl <= 1.02x full_L's, and below segmented_L/4 with separated 95% intervals"}
  return out


def plot(models: list[dict], path: str, title: str):
  """Test perplexity (mean, 95% interval over seeds) against forward FLOPs per token, one panel per L."""
  plt = common.plt()
  contexts = sorted({m["context_len"] for m in models})
  fig, axes = plt.subplots(1, len(contexts), figsize=(6.5 * len(contexts), 4.5), squeeze=False)
  for ax, context in zip(axes[0], contexts):
    for m in (m for m in models if m["context_len"] == context):
      x = m["flops_per_token_without_output_layer"] / 1e6
      t = m["test_ppl"]
      err = None if t["lo"] is None else [[t["mean"] - t["lo"]], [t["hi"] - t["mean"]]]
      marker = "*" if m["name"].startswith("crt") else ("s" if m["name"].startswith("xl") else "o")
      ax.errorbar([x], [t["mean"]], yerr=err, fmt=marker, ms=9 if marker == "*" else 6, capsize=3)
      ax.annotate(f"{m['name']} (n={t['n']})", (x, t["mean"]), textcoords="offset points", xytext=(5, 4),
                  fontsize=8)
    ax.set_xlabel("forward MFLOPs / token (XLA), without the shared output layer")
    ax.set_ylabel("test perplexity (best-validation state)")
    ax.set_title(f"L = {context}", fontsize=9)
    ax.grid(alpha=0.3)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  common.save_figure(fig, path)


def plot_by_position(models: list[dict], path: str, title: str):
  """Test perplexity by position within the document (mean and 95% interval over seeds), per model."""
  plt = common.plt()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  models = [m for m in models if m.get("test_by_position")]
  buckets = models[0]["test_by_position"]
  labels = [f"{b['from']}–{b['to'] - 1}" if b["to"] else f"{b['from']}+" for b in buckets]
  width = 0.8 / len(models)
  for k, m in enumerate(models):
    xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(buckets))]
    means = [b["ppl"]["mean"] for b in m["test_by_position"]]
    err = [[b["ppl"]["mean"] - (b["ppl"]["lo"] if b["ppl"]["lo"] is not None else b["ppl"]["mean"])
            for b in m["test_by_position"]],
           [(b["ppl"]["hi"] if b["ppl"]["hi"] is not None else b["ppl"]["mean"]) - b["ppl"]["mean"]
            for b in m["test_by_position"]]]
    ax.bar(xs, means, width, yerr=err, capsize=3, label=f"{m['name']} (n={m['test_ppl']['n']})")
  ax.set_xticks(range(len(buckets)), labels)
  ax.set_xlabel("position of the predicted word within its document (words)")
  ax.set_ylabel("test perplexity")
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  common.save_figure(fig, path)


def flops_sweep(preset: dict, out_dir: str, name: str, jax, contexts=(64, 512, 4096)):
  """Forward FLOPs/token of every main model (+ pooled CRT) at longer contexts L, preset sizes,
  PTB vocabulary: where segmenting starts to pay for the memory's cost. Compile-only (no training)."""
  from srformer_jax.crt import train as lm_train
  rows = []
  for context in contexts:
    for run_name, memory, fraction, overrides in [(n,) + MODELS[n] for n in MAIN + ('crt_L/2_pooled',)]:
      cfg = run_config(dict(settings_for(preset, preset['context_len']), context_len=context), memory,
                       fraction, overrides, "", seed=0)
      cfg.model.relative_attention_max_distance = 2 * context
      config = lm_train.model_config(cfg, 10000)
      rows.append({"name": run_name, "context_len": context, "segment_len": config.segment_len,
                   **forward_flops_per_token(config)})
      print(json.dumps(rows[-1]), flush=True)
  common.write(out_dir, f"crt_ptb_flops_{name}", {"machine": common.machine(jax), "preset": name,
                                                  "settings": settings_for(preset, preset["context_len"]),
                                                  "vocab_size": 10000, "rows": rows})
  plt = common.plt()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for run_name in dict.fromkeys(r["name"] for r in rows):
    pts = [(r["context_len"], r["flops_per_token_without_output_layer"] / 1e6) for r in rows
           if r["name"] == run_name]
    ax.plot(*zip(*pts), "o-", label=run_name)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("context L of the full baseline (tokens)")
  ax.set_ylabel("forward MFLOPs / token (XLA), without output layer")
  ax.set_title(f"{name} preset sizes: d={preset['d_model']}, {preset['num_layers']} layers", fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  path = os.path.join(out_dir, f"crt_ptb_flops_{name}.png")
  common.save_figure(fig, path)


def markdown(path: str) -> str:
  """The README table of a results JSON: per model, mean and 95% interval over seeds."""
  with open(path) as f:
    payload = json.load(f)
  lines = ["| L | model | segment | seeds | test ppl (95% CI) | valid ppl | epochs | fwd FLOPs/token vs full "
           "| train tokens/s (fastest seed) |",
           "|---|---|---|---|---|---|---|---|---|"]
  models = payload["aggregate"]["models"]
  full = {m["context_len"]: m for m in models if m["name"] == "full_L"}
  for m in models:
    f = full.get(m["context_len"])
    rel = (f"{m['flops_per_token_without_output_layer'] / f['flops_per_token_without_output_layer']:.2f}x"
           if f else "")
    lines.append(f"| {m['context_len']} | {m['name']} | {m['segment_len']} | {m['test_ppl']['n']} | "
                 f"{stats.format_ci(m['test_ppl'], '.1f')} | {stats.format_ci(m['valid_ppl'], '.1f')} | {m['epochs']['mean']:.1f} | {rel} | "
                 f"{m['train_tokens_per_s_fastest']:,.0f}{_code_mark(m)} |")
  if any(_code_mark(m) for m in models):
    lines += ["", "Tokens/s marked *: trained after the dense layers' weight gradient was laid out for XLA:CPU "
              "(`layers.dense_dot_general`), a faster step computing the same gradient; compare speeds only "
              "between rows with the same mark (`benchmarks/cpu_efficiency.py` times models side by side)."]
  if any("†" in _code_mark(m) for m in models):
    lines += ["Tokens/s marked †: trained with glibc's malloc on huge pages (`srformer_jax/host_malloc.py`), "
              "about 1.2x faster steps at these sizes (`benchmarks/cpu_allocator.py`); the fastest seed may be "
              "one of those runs."]
  return "\n".join(lines)


CODE_MARKS = (("runs_with_dense_dot_general", "*"), ("runs_with_huge_pages", "†"))


def _code_mark(m: dict) -> str:
  """Which of the model's runs trained with the later, faster steps (their tokens/s differ)."""
  k = m["test_ppl"]["n"]
  marks = [sym if m.get(key, 0) == k else f"{sym} ({m[key]} of {k} runs)"
           for key, sym in CODE_MARKS if m.get(key, 0)]
  return " " + " ".join(marks) if marks else ""


def main():
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--preset", default="cpu", choices=["cpu", "gpu", "scisumm"])
  p.add_argument("--data_dir", default="../shared/data/ptb", help="WordPTB directory (ptb.{split}.txt)")
  p.add_argument("--source", default=scisumm_lm.SOURCE,
                 help="scisumm preset: the ScisummNet full-text JSONL the corpus is built from")
  p.add_argument("--workdir", default="runs/crt_ptb", help="one sub-directory per run (resumable)")
  p.add_argument("--only", default="", help="comma-separated run ids or model names (default: the whole plan)")
  p.add_argument("--max_runs", type=int, default=0, help="stop after this many new runs (0: all)")
  p.add_argument("--markdown", action="store_true", help="print the README table of the results JSON")
  p.add_argument("--plan", action="store_true", help="print the plan (run ids, finished or not) and exit")
  p.add_argument("--flops_sweep", action="store_true",
                 help="only the FLOPs/token of the models at longer contexts (compile-only)")
  args = p.parse_args()
  name = ("quick_scisumm" if args.preset == "scisumm" else "quick") if args.quick else args.preset
  preset = PRESETS[name]
  result = RESULT_NAMES.get(name, f"crt_ptb_{name}")
  if args.markdown:
    print(markdown(os.path.join(args.out, f"{result}.json")))
    return
  jax = common.setup_platform(args.platform)
  import logging
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("srformer_jax").setLevel(logging.INFO)
  from srformer_jax import host_malloc
  from srformer_jax.crt import train as lm_train
  from srformer_jax.layers import dropout_rate_rounded
  from benchmarks import segment_sweep as sweep

  if args.flops_sweep:
    flops_sweep(preset, args.out, name, jax, contexts=(16, 64) if args.quick else (64, 512, 4096))
    return
  workdir = os.path.join(args.workdir, name)
  rows_dir = os.path.join(args.out, result)
  paths = None
  if preset.get("corpus") == "scisumm":
    data_dir = ""
    paths = scisumm_corpus(os.path.join(workdir, "corpus"), args.source, args.quick)
  else:
    data_dir = synthetic_corpus(os.path.join(workdir, "corpus")) if args.quick else args.data_dir
  corpus_stats = None
  if paths:
    with open(os.path.join(workdir, "corpus", scisumm_lm.STATS)) as f:
      corpus_stats = {k: v for k, v in json.load(f).items() if k != "documents"}
  runs = plan(preset)
  if args.only:
    keep = set(args.only.split(","))
    runs = [r for r in runs if run_id(r) in keep or r["name"] in keep]
  done = lambda run: os.path.join(rows_dir, run_id(run) + ".json")
  if args.plan:
    for r in runs:
      print(f"{'done' if os.path.exists(done(r)) else 'todo'}  {run_id(r)}")
    return

  def publish():
    """JSON + PNG of every finished run of this preset (plan order), with the aggregates."""
    finished = []
    for r in plan(preset):
      if os.path.exists(done(r)):
        with open(done(r)) as f:
          finished.append(json.load(f))
    if not finished:
      return
    agg = aggregate(finished)
    payload = {"machine": common.machine(jax), "preset": name, "settings": preset, "runs": finished,
               "aggregate": agg,
               "note": "test ppl of each run's best-validation state; intervals: Student-t 95% over seeds. "
                       "FLOPs: XLA cost analysis of one segment's forward at batch 1 divided by its length "
                       "(memory read/update included); without_output_layer subtracts 2*d_model*vocab. "
                       "Seeds change the initialisation and dropout; the data order is the corpus order."}
    if paths:
      payload["corpus"] = corpus_stats
      payload["note"] += (" Corpus: ScisummNet papers, one stream (benchmarks/scisumm_lm.py); the memory is "
                          "carried across document boundaries in training and evaluation alike.")
    common.write(args.out, result, payload)
    plot(agg["models"], os.path.join(args.out, f"{result}.png"),
         f"{'ScisummNet' if paths else 'WordPTB'}, {name} preset: d={preset['d_model']}, "
         f"{preset['num_layers']} layers, dropout "
         f"{preset['dropout_rate']}, best validation of <= {preset['num_steps']} steps (L={preset['context_len']})")
    if any(m.get("test_by_position") for m in agg["models"]):
      plot_by_position(agg["models"], os.path.join(args.out, f"{result}_by_position.png"),
                       f"ScisummNet test perplexity by position in the document, L = {preset['context_len']}")

  new = 0
  for run in runs:
    if os.path.exists(done(run)):
      continue
    if args.max_runs and new >= args.max_runs:
      break
    memory, fraction, overrides = MODELS[run["name"]]
    settings = settings_for(preset, run["context_len"])
    cfg = run_config(settings, memory, fraction, overrides, data_dir, run["seed"], paths)
    rundir = os.path.join(workdir, run_id(run))
    print(f"== {run_id(run)}", flush=True)
    t0 = time.perf_counter()
    lm_train.train(cfg, rundir)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = lm_train.evaluate(cfg, rundir, splits=("valid", "test"), which="best",
                            by_position=preset.get("by_position"))
    eval_s = time.perf_counter() - t0
    model_config = lm_train.model_config(cfg, res["model"]["vocab_size"])
    row = {"name": run["name"], "seed": run["seed"], "context_len": run["context_len"],
           "memory": memory, "segment_len": model_config.segment_len, **overrides,
           "test_ppl": res["test"]["ppl"], "test_nll": res["test"]["nll"], "test_tokens": res["test"]["tokens"],
           "valid_ppl": res["valid"]["ppl"], "valid_nll": res["valid"]["nll"], "best_step": res["step"],
           "checkpoint": res["checkpoint"], **training_summary(rundir),
           "train_s_this_invocation": train_s, "eval_s": eval_s,
           # the machine's load over the last 15 minutes: ~2 when this run had the 2 cores alone;
           # wall-clock figures of a run that shared them are not speeds of the model
           "load_avg_15min_at_end": os.getloadavg()[2], **forward_flops_per_token(model_config),
           # the dropout rate the model applied (layers.Dropout rounds it to a multiple of 1/256)
           "dropout": "hash", "dropout_rate_applied": dropout_rate_rounded(model_config.dropout_rate),
           # dense layers' weight gradient as (g^T x)^T (layers.dense_dot_general): the same numbers,
           # a faster step on a CPU; runs without this field trained with XLA's own gradient
           "dense_weight_grad": "layers.dense_dot_general",
           # glibc's malloc on huge pages (srformer_jax.host_malloc), a faster CPU step
           "malloc_huge_pages": host_malloc.in_force(),
           # the code that trained it (the last commit that changed it; '-dirty': not committed)
           "git_commit": sweep._git_commit(CODE), "git_clean": sweep._git_clean()}
    for split in ("valid", "test"):
      if f"{split}_by_position" in res:
        row[f"{split}_by_position"] = res[f"{split}_by_position"]
    os.makedirs(rows_dir, exist_ok=True)
    tmp = done(run) + ".tmp"
    with open(tmp, "w") as f:
      json.dump(row, f, indent=2)
    os.replace(tmp, done(run))
    new += 1
    print(json.dumps(row), flush=True)
    publish()
  publish()


if __name__ == "__main__":
  from srformer_jax import host_malloc
  host_malloc.reexec_with_huge_pages()  # as train.py does: the experiments run as the jobs do
  main()
