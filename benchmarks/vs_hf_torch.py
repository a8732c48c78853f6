"""3. Against the peer: Hugging Face transformers PyTorch T5 vs ours (full and SRformer).

Same random T5-small weights (converted from the torch model), same inputs: greedy generation of
128 tokens (EOS banned, so both generate all of them) and one AdamW training step.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402


def main():
  p = common.parser(__doc__)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--source_len", type=int, default=512)
  p.add_argument("--new_tokens", type=int, default=128)
  args = p.parse_args()
  jax = common.setup_platform(args.platform)
  import statistics

  import jax.numpy as jnp
  import numpy as np
  import optax
  import torch
  import transformers
  from srformer_jax import DecodeConfig, build_model, generate_jit, load_hf_checkpoint, sharding
  from srformer_jax.train_lib import Trainer

  device = "cuda" if args.platform == "gpu" else "cpu"
  n, b, k = args.new_tokens, args.batch, args.source_len
  if args.quick:
    n, k = 16, 128
  torch.manual_seed(0)
  hf_cfg = transformers.T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                                 num_heads=8, dropout_rate=0.0, feed_forward_proj="relu",
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  hf = transformers.T5ForConditionalGeneration(hf_cfg).eval().to(device)
  ckpt = tempfile.mkdtemp()
  hf.save_pretrained(ckpt)
  rng = np.random.default_rng(0)
  ids = rng.integers(2, 32000, (b, k)).astype(np.int64)
  mask = np.ones((b, k), np.int64)
  labels = rng.integers(2, 32000, (b, 128)).astype(np.int64)

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

  t_ids, t_mask = torch.tensor(ids, device=device), torch.tensor(mask, device=device)
  with torch.no_grad():
    hf_gen = torch_time(lambda: hf.generate(input_ids=t_ids, attention_mask=t_mask, max_new_tokens=n,
                                            min_new_tokens=n, do_sample=False, num_beams=1))
  hf.train()
  opt = torch.optim.AdamW(hf.parameters(), lr=5e-5)
  t_labels = torch.tensor(labels, device=device)

  def torch_step():
    opt.zero_grad()
    loss = hf(input_ids=t_ids, attention_mask=t_mask, labels=t_labels).loss
    loss.backward()
    opt.step()

  hf_train = torch_time(torch_step)
  rows = [dict(impl="hf_torch", kind="full", generate_s=hf_gen, train_step_s=hf_train)]
  print(f"HF torch       generate {hf_gen:.3f} s   train step {hf_train:.3f} s", flush=True)

  for kind in ("full", "srformer"):
    config, params, _ = load_hf_checkpoint(ckpt, cross_attention=kind, segment_size=64, gen_len=n,
                                           dropout_rate=0.0)
    model = build_model(config)
    dc = DecodeConfig(max_len=n, min_len=n)
    gen = common.time_fn(lambda: generate_jit(model, params, jnp.asarray(ids), jnp.asarray(mask), dc),
                         args.repeats)
    trainer = Trainer(model, optax.adamw(5e-5), optax.constant_schedule(5e-5), sharding.make_mesh((1, 1, 1)))
    holder = {"state": trainer.init_state(jax.random.key(0), params)}
    batch = trainer.shard_batch({"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32),
                                 "labels": labels.astype(np.int32),
                                 "label_mask": np.ones_like(labels, np.int32)})

    def step():  # Trainer.step: the jitted step with its divergence flag (default: no bad step yet)
      holder["state"], m = trainer.step(holder["state"], batch, jax.random.key(1))
      return m["loss"]

    tr = common.time_fn(step, args.repeats)
    rows.append(dict(impl="srformer_jax", kind=kind, generate_s=gen["median_s"], train_step_s=tr["median_s"],
                     generate_compile_s=gen["first_call_s"], train_compile_s=tr["first_call_s"]))
    print(f"ours {kind:<9} generate {gen['median_s']:.3f} s   train step {tr['median_s']:.3f} s  "
          f"(speedup vs HF: generate x{hf_gen / gen['median_s']:.2f}, train x{hf_train / tr['median_s']:.2f})",
          flush=True)
  for r in rows:
    r["generate_speedup_vs_hf"] = hf_gen / r["generate_s"]
    r["train_speedup_vs_hf"] = hf_train / r["train_step_s"]
  common.write(args.out, f"vs_hf_torch_{args.platform}",
               {"machine": common.machine(jax), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                "batch": b, "source_len": k, "new_tokens": n, "rows": rows})
  plt = common.plt()
  fig, axes = plt.subplots(1, 2, figsize=(9, 4))
  labels_ = [f"{r['impl']}\n{r['kind']}" for r in rows]
  axes[0].bar(labels_, [r["generate_s"] for r in rows], color=["tab:gray", "tab:blue", "tab:green"])
  axes[0].set_ylabel(f"greedy generate, {n} tokens (s)")
  axes[1].bar(labels_, [r["train_step_s"] for r in rows], color=["tab:gray", "tab:blue", "tab:green"])
  axes[1].set_ylabel("train step (s)")
  for ax in axes:
    ax.tick_params(axis="x", labelsize=8)
  fig.suptitle(f"T5-small, batch {b}, source {k} ({common.machine(jax)['device']})")
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, f"vs_hf_torch_{args.platform}.png"), dpi=100)


if __name__ == "__main__":
  main()
