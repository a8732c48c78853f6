"""CRT vs baselines on WordPTB: test perplexity and forward FLOPs per token (XLA cost analysis).

Runs, all with the same shallow Transformer, optimiser, steps and tokens per step (windows of L tokens
per stream): the full-context Transformer (segments of L), the same on independent segments of L/2 and
L/4, Transformer-XL on L/2 (cache of the previous segment), and CRT on L/2 and L/4 (GRU memory).
Ablations of CRT's design choices follow when the budget allows (memory added at every layer instead
of one token; memory updated from the pooled segment output instead of a GRU over the outputs; the
orthogonal GRU cell).

Each run is a workdir under --workdir (train_lm's checkpoints, metrics.jsonl, loss.png); a killed
benchmark started again resumes the unfinished run and skips finished ones. Results are rewritten
after every run: results/crt_ptb_<preset>.json and .png.

  python benchmarks/crt_ptb.py --preset cpu --data_dir ../shared/data/ptb      # ~90 min, 2-core CPU
  python benchmarks/crt_ptb.py --preset gpu --platform gpu --data_dir ...      # bigger, for a GPU
  python benchmarks/crt_ptb.py --quick                                          # smoke, synthetic text
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

PRESETS = {
    # context L, model sizes, training budget. CPU: sized for a shared 2-core machine (one epoch of
    # PTB is ~0.93M tokens; this budget is ~0.5 epoch per run, so perplexities are far from converged).
    "cpu": dict(context_len=64, d_model=128, num_heads=4, d_ff=512, num_layers=2, dropout_rate=0.0,
                batch_size=16, num_steps=480, learning_rate=2e-3, warmup_steps=30, eval_batch_size=10),
    "gpu": dict(context_len=256, d_model=512, num_heads=8, d_ff=2048, num_layers=3, dropout_rate=0.3,
                batch_size=32, num_steps=6000, learning_rate=5e-4, warmup_steps=400, eval_batch_size=10),
    "quick": dict(context_len=16, d_model=32, num_heads=2, d_ff=64, num_layers=2, dropout_rate=0.0,
                  batch_size=4, num_steps=6, learning_rate=3e-3, warmup_steps=2, eval_batch_size=2),
}

# name: (memory kind, segment fraction of L, CRT overrides)
RUNS = [
    ("full_L", "none", "full", {}),
    ("crt_L/2", "crt", "half", {}),
    ("crt_L/4", "crt", "quarter", {}),
    ("segmented_L/2", "none", "half", {}),
    ("segmented_L/4", "none", "quarter", {}),
    ("xl_L/2", "xl", "half", {}),
    ("crt_L/2_layer", "crt", "half", {"memory_input": "layer"}),
    ("crt_L/2_pooled", "crt", "half", {"memory_update": "pooled"}),
    ("crt_L/2_ortho", "crt", "half", {"cell": "ortho_gru"}),
]


def run_config(preset: dict, memory: str, fraction: str, overrides: dict, data_dir: str):
  from configs import lm_ptb
  p = preset
  cfg = lm_ptb.lm_config(memory, fraction, context_len=p["context_len"])
  cfg.model.update(d_model=p["d_model"], num_heads=p["num_heads"], d_ff=p["d_ff"],
                   num_layers=p["num_layers"], dropout_rate=p["dropout_rate"], **overrides)
  cfg.data.update(data_dir=data_dir, eval_batch_size=p["eval_batch_size"])
  cfg.train.update(batch_size=p["batch_size"], num_steps=p["num_steps"], learning_rate=p["learning_rate"],
                   warmup_steps=p["warmup_steps"], eval_every=0, log_every=20,
                   save_every=max(p["num_steps"] // 6, 1))
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


def plot(rows: list[dict], path: str, title: str):
  plt = common.plt()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in rows:
    ax.scatter(r["flops_per_token_without_output_layer"] / 1e6, r["test_ppl"],
               marker="*" if r["memory"] == "crt" else "o", s=80)
    ax.annotate(r["name"], (r["flops_per_token_without_output_layer"] / 1e6, r["test_ppl"]),
                textcoords="offset points", xytext=(4, 4), fontsize=8)
  ax.set_xlabel("forward MFLOPs / token, without the (shared) output layer")
  ax.set_ylabel("test perplexity")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  print(f"wrote {path}")


def flops_sweep(preset: dict, out_dir: str, name: str, jax, contexts=(64, 512, 4096)):
  """Forward FLOPs/token of every model of RUNS[:6] (+ pooled CRT) at longer contexts L, preset sizes,
  PTB vocabulary: where segmenting starts to pay for the memory's cost. Compile-only (no training)."""
  from srformer_jax.crt import train as lm_train
  rows = []
  for context in contexts:
    for run_name, memory, fraction, overrides in RUNS[:6] + [RUNS[7]]:
      cfg = run_config(dict(preset, context_len=context), memory, fraction, overrides, "")
      cfg.model.relative_attention_max_distance = 2 * context
      config = lm_train.model_config(cfg, 10000)
      rows.append({"name": run_name, "context_len": context, "segment_len": config.segment_len,
                   **forward_flops_per_token(config)})
      print(json.dumps(rows[-1]), flush=True)
  common.write(out_dir, f"crt_ptb_flops_{name}", {"machine": common.machine(jax), "preset": name,
                                                  "settings": preset, "vocab_size": 10000, "rows": rows})
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
  fig.savefig(path, dpi=110)
  plt.close(fig)
  print(f"wrote {path}")


def markdown(path: str) -> str:
  """The README table of a results JSON."""
  with open(path) as f:
    payload = json.load(f)
  full = next((r for r in payload["runs"] if r["name"] == "full_L"), None)
  lines = ["| model | segment | test ppl | fwd FLOPs/token (total) | without output layer | vs full_L |",
           "|---|---|---|---|---|---|"]
  for r in payload["runs"]:
    rel = (f"{r['flops_per_token_without_output_layer'] / full['flops_per_token_without_output_layer']:.2f}x"
           if full else "")
    lines.append(f"| {r['name']} | {r['segment_len']} | {r['test_ppl']:.1f} | {r['flops_per_token'] / 1e6:.2f} M"
                 f" | {r['flops_per_token_without_output_layer'] / 1e6:.3f} M | {rel} |")
  return "\n".join(lines)


def main():
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--preset", default="cpu", choices=["cpu", "gpu"])
  p.add_argument("--data_dir", default="../shared/data/ptb", help="WordPTB directory (ptb.{split}.txt)")
  p.add_argument("--workdir", default="runs/crt_ptb", help="one sub-directory per run (resumable)")
  p.add_argument("--only", default="", help="comma-separated run names (default: all)")
  p.add_argument("--first", default="",
                 help="comma-separated run names to run before the others (finished runs are reused)")
  p.add_argument("--markdown", action="store_true", help="print the README table of the results JSON")
  p.add_argument("--flops_sweep", action="store_true",
                 help="only the FLOPs/token of the models at longer contexts (compile-only)")
  args = p.parse_args()
  jax = common.setup_platform(args.platform)
  import logging
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("srformer_jax").setLevel(logging.INFO)
  from srformer_jax.crt import train as lm_train

  name = "quick" if args.quick else args.preset
  preset = PRESETS[name]
  if args.markdown:
    print(markdown(os.path.join(args.out, f"crt_ptb_{name}.json")))
    return
  if args.flops_sweep:
    flops_sweep(preset, args.out, name, jax, contexts=(16, 64) if args.quick else (64, 512, 4096))
    return
  workdir = os.path.join(args.workdir, name)
  data_dir = synthetic_corpus(os.path.join(workdir, "corpus")) if args.quick else args.data_dir
  runs = [r for r in RUNS if not args.only or r[0] in args.only.split(",")]
  if args.quick:
    runs = runs[:6]
  first = [n for n in args.first.split(",") if n]
  runs.sort(key=lambda r: first.index(r[0]) if r[0] in first else len(first))  # stable: RUNS order
  rows: dict[str, dict] = {}
  done = lambda run_name: os.path.join(workdir, run_name.replace("/", "_"), "benchmark_row.json")
  for run_name, *_ in RUNS:
    if os.path.exists(done(run_name)):
      with open(done(run_name)) as f:
        rows[run_name] = json.load(f)

  def publish():
    """JSON + PNG of every finished run of this preset, in RUNS order."""
    ordered = [rows[r[0]] for r in RUNS if r[0] in rows]
    payload = {"machine": common.machine(jax), "preset": name, "settings": preset, "runs": ordered,
               "note": "FLOPs: XLA cost analysis of one segment's forward at batch 1 divided by its length "
                       "(memory read/update included); without_output_layer subtracts 2*d_model*vocab."}
    common.write(args.out, f"crt_ptb_{name}", payload)
    plot(ordered, os.path.join(args.out, f"crt_ptb_{name}.png"),
         f"WordPTB, {name} preset: {preset['num_steps']} steps x {preset['batch_size']} streams x "
         f"{preset['context_len']} tokens, d={preset['d_model']}, {preset['num_layers']} layers")

  for run_name, memory, fraction, overrides in runs:
    if run_name in rows:
      continue
    cfg = run_config(preset, memory, fraction, overrides, data_dir)
    rundir = os.path.dirname(done(run_name))
    print(f"== {run_name}", flush=True)
    t0 = time.perf_counter()
    last = lm_train.train(cfg, rundir)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = lm_train.evaluate(cfg, rundir, splits=("test",))
    eval_s = time.perf_counter() - t0
    model_config = lm_train.model_config(cfg, res["model"]["vocab_size"])
    row = {"name": run_name, "memory": memory, "segment_len": model_config.segment_len,
           "context_len": preset["context_len"], **overrides,
           "test_ppl": res["test"]["ppl"], "test_nll": res["test"]["nll"], "test_tokens": res["test"]["tokens"],
           "final_train_loss": last.get("loss"), "steps": res["step"],
           "train_s_this_invocation": train_s, "eval_s": eval_s,
           **forward_flops_per_token(model_config)}
    with open(done(run_name), "w") as f:
      json.dump(row, f, indent=2)
    rows[run_name] = row
    print(json.dumps(row), flush=True)
    publish()
  if rows:
    publish()


if __name__ == "__main__":
  main()
