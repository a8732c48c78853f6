"""The forms written for XLA:CPU against the plain JAX forms (`model.kernels = "cpu" | "xla"`), side
by side in one run: a train step (dropout on) and greedy decoding, on the segment sweep's model and
on T5-small, for full attention and SRformer. `kernels="auto"` takes the CPU forms on the CPU
backend only; this measures that choice on whatever backend it runs (benchmarks/gpu_checks.sh runs
it on a GPU).

  python benchmarks/kernel_forms.py --platform cpu      # writes kernel_forms_cpu.json / .png
"""

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common, cpu_efficiency, models  # noqa: E402

FORMS = ("cpu", "xla")


def main():
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--dtype", default="float32")
  args = p.parse_args()
  jax = common.setup_platform(args.platform)
  import numpy as np
  from srformer_jax import build_model, init_params
  from srformer_jax.decoding import DecodeConfig, generate_jit

  sweep = cpu_efficiency.QUICK["sweep"] if args.quick else cpu_efficiency.SWEEP
  shapes = {"sweep": (cpu_efficiency.sweep_config(sweep, dtype=args.dtype), sweep["batch"], sweep["k"], sweep["q"])}
  if not args.quick:
    shapes["t5_small"] = (models.t5_small(dropout_rate=0.1, gen_len=128, dtype=args.dtype), 8, 512, 128)
  rows = []
  for name, (base, batch, k, q) in shapes.items():
    for kind in ("full", "srformer"):
      for form in FORMS:
        mc = dataclasses.replace(base, cross_attention=kind, segment_size=8 if name == "sweep" else 64,
                                 kernels=form)
        rng = np.random.default_rng(0)
        data = {"input_ids": rng.integers(2, mc.vocab_size, (batch, k)).astype(np.int32),
                "attention_mask": np.ones((batch, k), np.int32),
                "labels": rng.integers(2, mc.vocab_size, (batch, q)).astype(np.int32),
                "label_mask": np.ones((batch, q), np.int32)}
        _, step, _, _, _ = cpu_efficiency.seq2seq_step(jax, mc, data)
        train = common.time_fn(step, args.repeats)
        model, params = build_model(mc), init_params(mc, jax.random.key(0))
        dc = DecodeConfig(max_len=q // 2, min_len=q // 2, num_beams=1)  # EOS banned: always q/2 steps
        ids, mask = data["input_ids"], data["attention_mask"]
        decode = common.time_fn(lambda: generate_jit(model, params, ids, mask, dc), args.repeats)
        rows.append(dict(model=name, kind=kind, form=form, batch=batch, k=k, q=q,
                         train_step_s=train["median_s"], decode_s=decode["median_s"], decode_tokens=q // 2))
        print(f"{name:9s} {kind:9s} {form}: step {train['median_s'] * 1e3:8.1f} ms, "
              f"greedy {decode['median_s'] * 1e3:8.1f} ms", flush=True)
  by = {(r["model"], r["kind"], r["form"]): r for r in rows}
  for r in rows:  # the plain form's time over the CPU form's: > 1 means the CPU forms are faster here
    cpu, xla = by[(r["model"], r["kind"], "cpu")], by[(r["model"], r["kind"], "xla")]
    r["train_xla_over_cpu"] = xla["train_step_s"] / cpu["train_step_s"]
    r["decode_xla_over_cpu"] = xla["decode_s"] / cpu["decode_s"]
  name = f"kernel_forms_{args.platform}"
  common.write(args.out, name, {"machine": common.machine(jax), "dtype": args.dtype, "rows": rows})
  plt = common.plt()
  fig, ax = plt.subplots(figsize=(7, 3.8))
  labels = sorted({(r["model"], r["kind"]) for r in rows})
  xs = np.arange(len(labels))
  for i, (what, key) in enumerate((("train step", "train_xla_over_cpu"), ("greedy decode", "decode_xla_over_cpu"))):
    ax.bar(xs + (i - 0.5) * 0.35, [by[(m, kd, "cpu")][key] for m, kd in labels], 0.35, label=what)
  ax.axhline(1.0, color="k", lw=0.8)
  ax.set_xticks(xs, [f"{m}\n{kd}" for m, kd in labels])
  ax.set_ylabel("plain forms' time / CPU forms' time")
  ax.set_title(f"kernels='xla' vs 'cpu' ({common.machine(jax)['device']})")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, f"{name}.png"), dpi=100)


if __name__ == "__main__":
  main()
