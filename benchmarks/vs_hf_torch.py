"""3. Against the peer: Hugging Face transformers PyTorch T5 vs ours (full and SRformer).

Same random T5-small weights (converted from the torch model), same inputs: greedy generation of
128 tokens (EOS banned, so both generate all of them) and one AdamW training step.

Each implementation runs in a process of its own, one after the other, and the pair is repeated
(`--rounds`) with the order alternating, so that a drift of the machine's speed falls on both: timing
PyTorch and JAX in one process slows whichever shares the process's threads with the other (our train
step took 8.3 s beside PyTorch against 5.6 s alone, on the 2-core CPU). Both processes get the same
environment, the one the command-line jobs run in (glibc malloc on huge pages,
srformer_jax/host_malloc.py). Per row: median time over rounds; speed-up against HF: the mean of
the rounds' ratios, each round's ratio kept in the JSON.

  python benchmarks/vs_hf_torch.py                  # ~10 min on a 2-core CPU
  python benchmarks/vs_hf_torch.py --quick          # smoke test (k 128, 16 tokens, one round)
  python benchmarks/vs_hf_torch.py --dtype bfloat16 # mixed precision on both sides: PyTorch under
                                                    # torch.autocast, ours with dtype="bfloat16"
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

IMPLS = ("hf_torch", "srformer_jax")
HF_CONFIG = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, dropout_rate=0.0,
                 feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def sizes(args) -> tuple[int, int, int]:
  """(new tokens, batch, source length)."""
  return (16, args.batch, 128) if args.quick else (args.new_tokens, args.batch, args.source_len)


def prepare(args, workdir: str) -> None:
  """The shared random T5-small checkpoint (HF format) and inputs, written once for every child."""
  import numpy as np
  import torch
  import transformers
  n, b, k = sizes(args)
  torch.manual_seed(0)
  transformers.T5ForConditionalGeneration(transformers.T5Config(**HF_CONFIG)).save_pretrained(workdir)
  rng = np.random.default_rng(0)
  np.savez(os.path.join(workdir, "inputs.npz"), ids=rng.integers(2, 32000, (b, k)), mask=np.ones((b, k)),
           labels=rng.integers(2, 32000, (b, 128)))


def _inputs(workdir: str):
  import numpy as np
  with np.load(os.path.join(workdir, "inputs.npz")) as z:
    return z["ids"], z["mask"], z["labels"]


def child_hf(args, workdir: str) -> list[dict]:
  import torch
  import transformers
  device = "cuda" if args.platform == "gpu" else "cpu"
  n = sizes(args)[0]
  hf = transformers.T5ForConditionalGeneration.from_pretrained(workdir).eval().to(device)
  # bfloat16: PyTorch's mixed precision (float32 weights, bfloat16 matmuls), as ours with dtype="bfloat16"
  autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")  # noqa: E731
  ids, mask, labels = (torch.tensor(a, dtype=torch.int64, device=device) for a in _inputs(workdir))

  def sync():
    if device == "cuda":
      torch.cuda.synchronize()

  def torch_time(fn):
    fn()
    sync()
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      fn()
      sync()
      times.append(time.perf_counter() - t0)
    return statistics.median(times)

  with torch.no_grad(), autocast():
    gen = torch_time(lambda: hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                         do_sample=False, num_beams=1))
  hf.train()
  opt = torch.optim.AdamW(hf.parameters(), lr=5e-5)

  def step():
    opt.zero_grad()
    with autocast():
      loss = hf(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    opt.step()

  train = torch_time(step)
  return [dict(impl="hf_torch", kind="full", generate_s=gen, train_step_s=train, torch=torch.__version__,
               torch_threads=torch.get_num_threads())]


def child_ours(args, workdir: str) -> list[dict]:
  jax = common.setup_platform(args.platform)
  import jax.numpy as jnp
  import numpy as np
  import optax
  from srformer_jax import DecodeConfig, build_model, generate_jit, load_hf_checkpoint, sharding
  from srformer_jax.train_lib import Trainer
  n = sizes(args)[0]
  ids, mask, labels = _inputs(workdir)
  rows = []
  for kind in ("full", "srformer"):
    config, params, _ = load_hf_checkpoint(workdir, cross_attention=kind, segment_size=64, gen_len=n,
                                           dropout_rate=0.0, dtype=args.dtype)
    model = build_model(config)
    dc = DecodeConfig(max_len=n, min_len=n)
    src, src_mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    gen = common.time_fn(lambda: generate_jit(model, params, src, src_mask, dc), args.repeats)
    trainer = Trainer(model, optax.adamw(5e-5), optax.constant_schedule(5e-5), sharding.make_mesh((1, 1, 1)))
    holder = {"state": trainer.init_state(jax.random.key(0), params)}
    batch = trainer.shard_batch({"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32),
                                 "labels": labels.astype(np.int32), "label_mask": np.ones_like(labels, np.int32)})

    def step():  # Trainer.step: the jitted step with its divergence flag (default: no bad step yet)
      holder["state"], m = trainer.step(holder["state"], batch, jax.random.key(1))
      return m["loss"]

    tr = common.time_fn(step, args.repeats)
    rows.append(dict(impl="srformer_jax", kind=kind, generate_s=gen["median_s"], train_step_s=tr["median_s"],
                     generate_compile_s=gen["first_call_s"], train_compile_s=tr["first_call_s"]))
    if args.platform == "cpu":  # the step's matmuls alone (cpu_efficiency.matmul_floor)
      from benchmarks.cpu_efficiency import matmul_floor
      hlo = trainer.lower(holder["state"], batch, jax.random.key(1)).compile().as_text()
      rows[-1]["train_matmul_floor_s"] = matmul_floor(hlo, args.repeats)["s"]
  return rows


def run_child(args, impl: str, workdir: str) -> list[dict]:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, "--workdir", workdir, "--platform",
         args.platform, "--repeats", str(args.repeats), "--batch", str(args.batch), "--source_len",
         str(args.source_len), "--new_tokens", str(args.new_tokens), "--dtype", args.dtype] + \
      (["--quick"] if args.quick else [])
  return common.run_child(cmd, f"vs_hf_torch: the {impl} process")


def summarize(rounds: list[dict]) -> list[dict]:
  """Per (impl, kind): median times over rounds; speed-ups against HF per round and their mean."""
  rows = []
  for r0 in rounds[0]["rows"]:
    same = [next(x for x in r["rows"] if (x["impl"], x["kind"]) == (r0["impl"], r0["kind"])) for r in rounds]
    hf = [next(x for x in r["rows"] if x["impl"] == "hf_torch") for r in rounds]
    row = {k: statistics.median(x[k] for x in same) if isinstance(v, float) else v for k, v in r0.items()}
    for key, field in (("generate", "generate_s"), ("train", "train_step_s")):
      ratios = [h[field] / x[field] for h, x in zip(hf, same)]
      row[f"{key}_speedup_per_round"] = ratios
      row[f"{key}_speedup_vs_hf"] = statistics.fmean(ratios)
    rows.append(row)
  return rows


def plot(payload: dict, path: str) -> None:
  plt = common.plt()
  rows, n = payload["rows"], payload["new_tokens"]
  fig, axes = plt.subplots(1, 2, figsize=(9, 4))
  labels = [f"{r['impl']}\n{r['kind']}" for r in rows]
  colors = ["tab:gray", "tab:blue", "tab:green"][:len(rows)]
  for ax, field, key, ylabel in ((axes[0], "generate_s", "generate", f"greedy generate, {n} tokens (s)"),
                                 (axes[1], "train_step_s", "train", "train step (s)")):
    ax.bar(labels, [r[field] for r in rows], color=colors)
    for i, r in enumerate(rows):
      if r["impl"] != "hf_torch":
        ax.text(i, r[field], f"{r[f'{key}_speedup_vs_hf']:.2f}x vs HF", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelsize=8)
  fig.suptitle(f"T5-small, {payload['dtype']}, batch {payload['batch']}, source {payload['source_len']} "
               f"({payload['machine']['device']}; {payload['rounds']} rounds of one process per implementation)",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main():
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--source_len", type=int, default=512)
  p.add_argument("--new_tokens", type=int, default=128)
  p.add_argument("--rounds", type=int, default=2, help="pairs of processes (HF, ours), order alternating")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="compute dtype of both (bfloat16: torch.autocast for PyTorch); weights stay float32")
  p.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
  p.add_argument("--workdir", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    rows = (child_hf if args.child == "hf_torch" else child_ours)(args, args.workdir)
    common.report_to_parent({"rows": rows})
    return
  if args.quick:
    args.rounds, args.repeats = 1, min(args.repeats, 2)
  load_before = os.getloadavg()
  rounds = []
  with tempfile.TemporaryDirectory() as workdir:
    prepare(args, workdir)
    for i in range(args.rounds):
      rows = []
      for impl in (IMPLS if i % 2 == 0 else IMPLS[::-1]):
        rows += run_child(args, impl, workdir)["rows"]
      print(f"round {i + 1}/{args.rounds}: " + ", ".join(
          f"{r['impl']} {r['kind']} generate {r['generate_s']:.2f} s, train {r['train_step_s']:.2f} s" for r in rows),
          flush=True)
      rounds.append({"rows": sorted(rows, key=lambda r: (r["impl"] != "hf_torch", r["kind"]))})
  jax = common.setup_platform(args.platform)
  n, b, k = sizes(args)
  rows = summarize(rounds)
  hf = rows[0]
  payload = {"machine": common.machine(jax), "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
             "torch": hf.pop("torch"), "torch_threads": hf.pop("torch_threads"), "batch": b, "source_len": k,
             "new_tokens": n, "dtype": args.dtype, "rounds": args.rounds, "rows": rows, "per_round": rounds,
             "note": "one process per implementation, order alternating between rounds; times: median over "
                     "rounds of each process's median of --repeats; speed-ups: mean of the rounds' ratios."}
  name = f"vs_hf_torch_{'quick' if args.quick else args.platform}" + ("_bf16" if args.dtype == "bfloat16" else "")
  common.write(args.out, name, payload)
  plot(payload, os.path.join(args.out, f"{name}.png"))
  for r in rows[1:]:
    print(f"ours {r['kind']:<9} generate x{r['generate_speedup_vs_hf']:.2f}, train x{r['train_speedup_vs_hf']:.2f} "
          f"vs HF", flush=True)


if __name__ == "__main__":
  from srformer_jax import host_malloc
  host_malloc.reexec_with_huge_pages()
  main()
