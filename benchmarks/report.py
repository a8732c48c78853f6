"""Tables of the results JSON (benchmarks/results/*.json), rendered into the docs.

README.md and docs/*.md hold marked blocks,

  <!-- report:NAME -->
  ...generated lines...
  <!-- /report:NAME -->

whose content is what RENDERERS[NAME] makes of the results files, so no figure is typed by hand.

  python -m benchmarks.report           # rewrite every block in place
  python -m benchmarks.report --check   # exit 1 listing the stale blocks, change nothing

Needs no jax: only json and the benchmarks' own table functions (benchmarks.crt_ptb.markdown).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import statistics
import sys

from benchmarks import sweep_stats
from benchmarks.stats import format_ci

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
BLOCK = re.compile(r"^<!-- report:([\w.-]+) -->\n(.*?)^<!-- /report:\1 -->$", re.M | re.S)
OPEN = re.compile(r"^<!-- report:([\w.-]+) -->$", re.M)


class Results:
  """The results folder as seen from one document: loads JSON, makes links relative to the document."""

  def __init__(self, results_dir: str = RESULTS, doc_dir: str = REPO):
    self.dir = results_dir
    self.doc_dir = doc_dir

  def path(self, name: str) -> str:
    return os.path.join(self.dir, name)

  def load(self, name: str):
    """The parsed JSON file `name`, or None when it does not exist."""
    path = self.path(name)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def href(self, name: str) -> str:
    """Link text to a results file, relative to the document (README: benchmarks/results/...)."""
    return os.path.relpath(os.path.join(self.dir, name), self.doc_dir).replace(os.sep, "/")

  def files(self, *names: str) -> str:
    """`[json](...) · [png](...)` links for a table's last column."""
    out = []
    for n in names:
      out.append(f"[{n.rsplit('.', 1)[-1]}]({self.href(n)})")
    return " · ".join(out)


# ----- formatting -----------------------------------------------------------------------------------

def _x(v: float) -> str:
  return f"{v:.2f}×" if v < 10 else f"{v:.1f}×"


def _gib(b: float) -> str:
  g = b / 2**30
  return f"{g:.0f}" if g >= 1000 else (f"{g:.1f}" if g >= 1 else f"{g:.2f}")


def _mib(b: float) -> str:
  return f"{b / 2**20:.0f} MiB" if b >= 2**20 else f"{b / 2**20:.2f} MiB"


def _sig(v: float) -> str:
  """Three significant figures, trailing zeros kept (0.300, 44.0, 188)."""
  return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def _secs(s: float) -> str:
  """Seconds as s or ms, three significant figures."""
  return f"{_sig(s * 1e3)} ms" if s < 1 else f"{_sig(s)} s"


def _n(count: int, noun: str) -> str:
  """'1 seed', '3 seeds'."""
  return f"{count} {noun}{'' if count == 1 else 's'}"


def _table(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def _machine(m) -> str:
  if isinstance(m, str):
    return m
  if not isinstance(m, dict):
    return "?"
  if m.get("platform") == "gpu":
    return f"{m.get('device', 'GPU')}, jax {m.get('jax', '?')}"
  return f"{m.get('cpu_count', '?')}-core {m.get('cpu', 'CPU')} CPU" + (f", jax {m['jax']}" if m.get("jax") else "")


def _rows(payload: dict, **match) -> list[dict]:
  return [r for r in payload["rows"] if all(r.get(k) == v for k, v in match.items())]


def _one(rows: list[dict]) -> dict:
  if len(rows) != 1:
    raise ValueError(f"expected one row, got {len(rows)}")
  return rows[0]


# ----- renderers: each takes a Results and returns the block's markdown ---------------------------------

def default_job(r: Results) -> str:
  """The offline default job (configs/default.py): loss, ROUGE, wall time."""
  d = r.load("default_job_cpu.json")
  if d is None:
    return "(not measured yet)"
  line = (f"Measured on a {_machine(d.get('machine'))}: training loss {d['first_loss']:.2f} → "
          f"{d['last_loss']:.2f} in {d['steps']} steps, test ROUGE-1 / 2 / L {d['rouge1']:.1f} / "
          f"{d['rouge2']:.1f} / {d['rougeL']:.1f}, {d['wall_s'] / 60:.1f} min in all "
          f"({r.files('default_job_cpu.json')}).")
  c = d.get("corpus")
  if c:
    n = c["counts"]
    line += (f" The corpus: {c['pairs']:,} pairs ({n['train']:,} train, {n['validation']:,} validation, "
             f"{n['test']:,} test) from Python {c['python']} and {len(c['packages'])} installed packages.")
  if d.get("test_examples"):
    rows = [[f"`{e['id']}`", e["document"][:160].replace("|", "\\|") + ("…" if len(e["document"]) > 160 else ""),
             e["reference"].replace("|", "\\|"), e["prediction"].replace("|", "\\|")] for e in d["test_examples"]]
    line += ("\n\nThe first three test docstrings, with the model's summary beside the reference:\n\n"
             + _table(["docstring of", "document (start)", "reference", "model"], rows))
  return line


def default_job_compare(r: Results) -> str:
  """How configs/default.py was chosen: variants at the same training time, validation ROUGE."""
  d = r.load("default_job_compare_cpu.json")
  if d is None:
    return "(not measured yet: `python benchmarks/default_job_compare.py`)"
  rows = [[f"`{x['name']}`", x["what"], str(x["steps"]), f"{x['last_loss']:.2f}", f"{x['rouge1']:.1f}",
           f"{x['rouge2']:.1f}", x["first_predictions"][0].replace("|", "\\|")] for x in d["records"]]
  return (_table(["variant", "model / tokenizer", "steps", "last loss", "ROUGE-1", "ROUGE-2",
                  "first validation prediction"], rows)
          + ("\n\nThe default model (configs/default.py, trained as the default job) decoding the same "
             "validation docstrings:\n\n" + _table(
                 ["decoding", "beams", "n-gram block", "length penalty", "ROUGE-1", "ROUGE-2", "seconds",
                  "first prediction"],
                 [[f"`{x['name']}`", str(x["decode"]["num_beams"]), str(x["decode"]["no_repeat_ngram_size"]),
                   str(x["decode"].get("length_penalty", 1.0)), f"{x['rouge1']:.1f}", f"{x['rouge2']:.1f}",
                   f"{x['eval_s']:.0f}", x["first_predictions"][0].replace("|", "\\|")]
                  for x in d["decodings"]]) if d.get("decodings") else "")
          + "".join(f"\n\nCopying the first {b['name'].split('_')[1]} words of each docstring scores ROUGE-1 "
                    f"{b['rouge1']:.1f} on the same examples." for b in d.get("baselines", [])[-1:])
          + f"\n\nEach variant trained for about {d['budget_s']:.0f} s on a {_machine(d['machine'])} (its steps "
          f"from its own measured step time), scored on the first {d['eval_examples']} validation docstrings; "
          f"one seed each ({r.files('default_job_compare_cpu.json', 'default_job_compare_cpu.png')}).")


def default_job_snippet(r: Results) -> str:
  """What the README's summarize(...) snippet printed on the measured default run."""
  d = r.load("default_job_cpu.json")
  if d is None or not d.get("summarize_snippet"):
    return "(not measured yet: `python benchmarks/default_job.py`)"
  return "Printed on the measured run (`benchmarks/default_job.py` runs this snippet):\n\n" + "\n".join(
      f"- {e['summary']}" for e in d["summarize_snippet"])


_PIPELINE_SIZES = {"small": "small (`configs/default.py` model, batch {b})", "tiny": "tiny (d_model 32, batch {b})",
                   "sweep": "segment sweep model (srformer s = 8, k 256, batch {b})",
                   "lm": "`train_lm.py`: WordPTB CRT L/4 (L 64, batch {b})"}


def input_pipeline(r: Results) -> str:
  """Training loop vs the step alone, and the divergence guard's cost."""
  d = r.load("input_pipeline_cpu.json")
  rows = []
  for name, s in d["sizes"].items():
    label = _PIPELINE_SIZES.get(name, name + " (batch {b})").format(b=s["batch_size"])
    guard = f"{s['guard_cost']:.1%}" if "guard_cost" in s else "–"
    rows.append([label, f"{s['loop_steps_per_s']:.4g}", f"{s['step_alone_steps_per_s']:.4g}",
                 f"{s['loop_over_alone']:.3f}", guard])
  return _table(["size", "loop steps/s", "step alone steps/s", "loop / step alone", "guard cost"], rows)


_GRAIN_LABELS = {"ours": "ours (`BatchIterator`)", "grain/sharded": "grain, sharded per process (`ds[p::n]`)",
                 "grain/global": "grain, global index batches, rows per process"}


def input_pipeline_merge_ab(r: Results) -> str:
  """train.py's loop before and after the one-loop merge, run in turn in one sitting (sweep model)."""
  folder = "input_pipeline_merge_ab"
  runs = {os.path.basename(p): r.load(f"{folder}/{os.path.basename(p)}")
          for p in glob.glob(os.path.join(r.dir, folder, "*.json"))}
  if not runs:
    return "(not measured)"
  rows = []
  # in the order run: each sitting ran the code before the merge, then after it ("main")
  for name, d in sorted(runs.items(), key=lambda kv: (kv[1]["sitting_order"], kv[0].startswith("main"))):
    x = d["sizes"]["sweep"]
    rows.append([d["code"], f"{x['loop_over_alone']:.3f}", " ".join(f"{v:.2f}" for v in x["loop_samples"]),
                 " ".join(f"{v:.2f}" for v in x["alone_samples"]),
                 r.files(f"{folder}/{name}")])
  return (_table(["code", "loop / step alone", "loop samples (steps/s)", "step-alone samples (steps/s)", "file"],
                  rows) + f"\n\nIn the order run; {_machine(next(iter(runs.values())).get('machine'))}.")


def grain_pipeline(r: Results) -> str:
  """grain against BatchIterator: exact resume, 2 processes against 1, host time per batch."""
  d = r.load("grain_pipeline_cpu.json")
  yes = lambda v: "yes" if v else "**no**"
  rows = [[_GRAIN_LABELS.get(x["pipeline"], x["pipeline"]), yes(x["resumes_exactly"]),
           yes(x["two_processes_bitwise_one"]), yes(x["two_processes_same_examples_per_step"]),
           f"{x['host_ms_per_batch']:.2f}",
           f"{x['host_share_of_sweep_step']:.2%}" if x.get("host_share_of_sweep_step") is not None else "–"]
          for x in d["rows"]]
  return (_table(["pipeline", "exact resume", "2 processes = 1 (bitwise)", "same examples per step",
                  "host ms / batch", "of the sweep step"], rows)
          + f"\n\ngrain {d['grain_version']}; {_machine(d['machine'])}; "
          + r.files("grain_pipeline_cpu.json") + "\n")


def cpu_efficiency(r: Results) -> str:
  """Each experiment's train step (and the sweep's beam search) against the matmul peak and the code before."""
  d = r.load("cpu_efficiency_cpu.json")
  if d is None:
    return "Not measured yet."
  rows = []
  old = r.load("cpu_efficiency_cpu_before.json")
  # the machine's own speed moves between runs: the speed-up divided by the ratio of the two runs'
  # matmul peaks is the part the code can claim
  scale = old["matmul_peak"]["flops_per_s"] / d["matmul_peak"]["flops_per_s"] if old else None
  for row in d["rows"]:
    before = _secs(row["before_step_s"] if "step_s" in row else row["before_test_set_s"]) \
        if "speedup_vs_before" in row else "–"
    speed = "–" if "speedup_vs_before" not in row else _x(row["speedup_vs_before"]) + (
        f" ({_x(row['speedup_vs_before'] * scale)})" if scale else "")
    if "step_s" in row:
      goal = f"{row['goal_share_of_peak']:.0%}" if "goal_share_of_peak" in row else "–"
      prof = row.get("profile")
      where = "–" if prof is None else (
          f"{prof['kind_share'].get('matmul', 0.0):.0%} / {prof['backward_share']:.0%}; "
          + ", ".join(f"{k} {v:.0%}" for k, v in list(prof["kind_share"].items())[:3] if k != "matmul"))
      floor = row.get("matmul_floor")
      alone = "–" if floor is None else f"{_secs(floor['s'])} ({row['floor_share_of_peak']:.0%})"
      rows.append([f"`{row['name']}` step", before, _secs(row["step_s"]), speed, f"{row['share_of_peak']:.1%}", goal,
                   alone, _noise_floor(row["time_split"]["dropout"]), where])
    else:
      rows.append([f"`{row['name']}`, 500 dialogues", before, _secs(row["test_set_s"]), speed, "–", "2× faster", "–",
                   "–", "–"])
  peak = d["matmul_peak"]["flops_per_s"] / 1e9
  table = _table(["row", "before", "now", "speed-up (per matmul peak)", "share of matmul peak", "goal",
                  "its matmuls alone (the most share they allow)", "dropout's share",
                  "op time in matmuls / in backward; other kinds"], rows)
  before_peak = f", {old['matmul_peak']['flops_per_s'] / 1e9:.0f} in the run before" if old else ""
  bf16 = d["matmul_peak"].get("bf16_flops_per_s")
  bf16 = f"; bfloat16 inputs {bf16 / 1e9:.0f} GFLOP/s" if bf16 else ""
  return (table + f"\n\nMatmul peak {peak:.0f} GFLOP/s{before_peak} ({_machine(d['machine'])}); load average "
          f"before {d['load_avg_before'][0]:.2f}{bf16}. Dropout's share is the step's time less the step "
          "without dropout; a difference below half a percent, or below zero (timing noise), reads ~0%. "
          "\"Its matmuls alone\": every matmul of the compiled step timed on its own at its shapes, summed "
          "(what its products cost on their own), and in brackets the share of the peak the step would reach if "
          "nothing else took time. "
          + (f"Rows {', '.join(f'`{n}`' for n in d['rows_from_an_earlier_run'])} are from an earlier run of the "
             "script (`--only` re-measured the others), their shares against that run's peak. "
             if d.get("rows_from_an_earlier_run") else "")
          + r.files("cpu_efficiency_cpu.json", "cpu_efficiency_cpu.png"))


def _noise_floor(share: float) -> str:
  """A share measured as the difference of two times: under half a percent (or negative) is noise."""
  return f"{share:.0%}" if share >= 0.005 else "~0%"


def cpu_allocator(r: Results) -> str:
  """The CPU steps with and without glibc's malloc on huge pages, interleaved processes."""
  d = r.load("cpu_allocator_cpu.json")
  if d is None:
    return "(not measured yet)"
  rows = []
  for x in d["rows"]:
    small, huge = x["4 KiB pages"], x["huge pages"]
    rows.append([f"`{x['name']}`", _secs(small["step_s"]), _secs(huge["step_s"]),
                 f"{x['speedup']:.2f}× ({', '.join(f'{v:.2f}' for v in x['speedup_per_round'])})",
                 f"{small['minor_faults']:,.0f} → {huge['minor_faults']:,.0f}",
                 f"{small['sys_s'] / small['step_s']:.2f} → {huge['sys_s'] / huge['step_s']:.2f}"])
  table = _table(["row", "4 KiB pages", "huge pages", "speed-up (per round)", "page faults per step",
                  "system CPU (cores)"], rows)
  return (f"{table}\n\n{len(d['rounds'])} rounds of one process per setting, order alternating; medians over "
          f"rounds; {_machine(d.get('machine'))}, load average before {d['load_avg_before'][0]:.2f}. "
          f"{r.files('cpu_allocator_cpu.json', 'cpu_allocator_cpu.png')}")


def xla_cpu_flags(r: Results) -> str:
  """XLA:CPU flags against the default, interleaved processes, with the adoption rule's outcome."""
  d = r.load("xla_cpu_flags_cpu.json")
  if d is None:
    return "(not measured yet: `python benchmarks/xla_cpu_flags.py`)"
  settings = [s for s in d["settings"] if s != "default"]
  rows = []
  for x in d["rows"]:
    rows.append([f"`{x['name']}`", _secs(x["step_s"]["default"])] + [
        f"{x['speedup'][s]:.2f}× ({', '.join(f'{v:.2f}' for v in x['speedup_per_round'][s])})" for s in settings])
  table = _table(["row", "default flags"] + [f"`{d['settings'][s]}`" for s in settings], rows)
  adopted = ", ".join(f"`{d['settings'][s]}`" for s in d["adopt"]) or "none"
  return (f"{table}\n\nSpeed-up = step time with the default flags / with the flag (mean of {len(d['rounds'])} "
          f"rounds, each round's in brackets; one process per setting, order reversed every other round); "
          f"adopted (>= {d['adopt_at'] - 1:.0%} on a row): {adopted}. {_machine(d.get('machine'))}, load average "
          f"before {d['load_avg_before'][0]:.2f}. {r.files('xla_cpu_flags_cpu.json', 'xla_cpu_flags_cpu.png')}")


def long_dialogsum_pilot(r: Results) -> str:
  """The long-input grid's pilot: step time at k = 1024, evaluation time, source gain after 30 steps."""
  d = r.load("long_dialogsum_pilot_cpu.json")
  if d is None:
    return "(no pilot yet)"
  rows = [[f"`{c['name']}`", str(c["steps"]), " / ".join(f"{x:.2f}" for x in c["s_per_step_after_compile"]),
           f"{(c['wall_s'] - c['train_s_estimate']) / 60:.1f}", f"{c['source_gain']:.2f}",
           str(c["distinct_predictions"]), f"{c['rouge1']:.1f}",
           " / ".join(f"{x:.1f}" for x in c["rouge1_by_position"])] for c in d["cells"]]
  return (_table(["cell", "steps", "s a step (after compiling)", "min outside the steps (data, two evaluations)",
                  "source gain", "distinct (of 500)", "ROUGE-1 test", "ROUGE-1 by position"], rows)
          + f"\n\nBatch 8, two single-threaded cells at a time; {_machine(d.get('machine'))}. "
          + r.files("long_dialogsum_pilot_cpu.json"))


def ngram_block(r: Results) -> str:
  """Dev ROUGE-1 of finished sweep cells decoded again with each no_repeat_ngram_size."""
  d = r.load("ngram_block_cpu.json")
  if d is None:
    return "(not measured yet: `python benchmarks/ngram_block.py --runs ...`)"
  sizes = sorted({x["no_repeat_ngram_size"] for x in d["records"]})
  cells = list(dict.fromkeys(x["cell"] for x in d["records"]))
  by = {(x["cell"], x["no_repeat_ngram_size"]): x for x in d["records"]}
  rows = [[f"`{c}`"] + [f"{by[c, n]['rouge1']:.2f} ({by[c, n]['speaker_mentions_per_summary']:.1f})"
                        if (c, n) in by else "–" for n in sizes] for c in cells]
  return (_table(["cell"] + [f"block {n}" if n else "no block" for n in sizes], rows)
          + f"\n\nDev ROUGE-1 (in brackets: `#Person` mentions per summary; the references have "
          f"{d['reference_speaker_mentions_per_summary']:.1f}); each cell's last checkpoint, only the block "
          f"size differs. {_machine(d.get('machine'))}. {r.files('ngram_block_cpu.json')}")


def cross_attention_cost(r: Results) -> str:
  """Table 1: XLA flops and bytes of one head's cross-attention, and fwd+bwd temporaries."""
  gpu, cpu = r.load("cross_attention_cost_gpu.json"), r.load("cross_attention_cost_cpu.json")
  rows = []
  for g in gpu["rows"]:
    c = _one(_rows(cpu, kind=g["kind"], s=g["s"]))
    rows.append([g["kind"], "–" if g["kind"] == "full" else g["s"], f"{g['flops'] / 1e6:.3g}",
                 f"{g['ratio_to_full']:.3f}", f"{g['bytes_ratio_to_full']:.2f}",
                 _mib(g["temp_bytes_fwd_bwd_b8_h8"]), _mib(c["temp_bytes_fwd_bwd_b8_h8"])])
  return _table(["kind", "s", "XLA MFLOPs", "/ full", "bytes / full", "fwd+bwd temp (GPU)",
                 "fwd+bwd temp (CPU)"], rows)


def _decode(r: Results):
  return r.load("decode_scaling_cpu.json"), r.load("decode_scaling_gpu.json")


def decode_scaling(r: Results) -> str:
  """Decoding time per token vs input length k, full vs srformer, CPU and GPU."""
  cpu, gpu = _decode(r)
  rows = []
  for k in sorted({x["k"] for x in cpu["rows"]}):
    row = [k]
    for d, fmt in ((cpu, "{:.1f} ms"), (gpu, "{:.3f} ms")):
      full = _one(_rows(d, kind="full", k=k))["per_token_ms"]
      srf = _one(_rows(d, kind="srformer", k=k))["per_token_ms"]
      row += [fmt.format(full), fmt.format(srf), _x(full / srf)]
    rows.append(row)
  return _table(["k", "CPU full", "CPU srformer", "speedup", "GPU full", "GPU srformer", "speedup"], rows)


def decode_scaling_init(r: Results) -> str:
  """Per-input work (init) and the whole decode of 128 tokens at the largest k."""
  rows = []
  for name, d in zip(("CPU", "GPU"), _decode(r)):
    k = max(x["k"] for x in d["rows"])
    for kind in ("full", "srformer"):
      x = _one(_rows(d, kind=kind, k=k))
      rows.append([name, kind, k, _secs(x["init_s"]), f"{_sig(x['per_token_ms'])} ms", _secs(x["total_s"])])
  return _table(["machine", "kind", "k", "per-input init", "per token",
                 f"{_decode(r)[0]['new_tokens']} tokens in all"], rows)


def _vs_hf_cells(x: dict) -> list[str]:
  """A vs_hf_torch row's generate and train-step times, ours with the speed-up against HF."""
  return [_secs(x[field]) + ("" if x["impl"] == "hf_torch" else f" ({_x(x[f'{key}_speedup_vs_hf'])})")
          for key, field in (("generate", "generate_s"), ("train", "train_step_s"))]


def vs_hf_torch(r: Results) -> str:
  """Generate and one train step against transformers (PyTorch), same weights."""
  cpu, gpu = r.load("vs_hf_torch_cpu.json"), r.load("vs_hf_torch_gpu.json")
  rows = []
  for c in cpu["rows"]:
    g = _one(_rows(gpu, impl=c["impl"], kind=c["kind"]))
    label = "HF torch" if c["impl"] == "hf_torch" else f"ours, {c['kind']}"
    rows.append([label] + _vs_hf_cells(c) + _vs_hf_cells(g))
  out = _table(["", "CPU generate", "CPU train step", "GPU generate", "GPU train step"], rows)
  if cpu.get("rounds"):
    out += (f"\n\nCPU: {cpu['rounds']} rounds of one process per implementation, order alternating; "
            f"medians over rounds, speed-ups the mean of the rounds' ratios (train: "
            + ", ".join(f"{r['kind']} " + " / ".join(_x(v) for v in r["train_speedup_per_round"])
                        for r in cpu["rows"] if r["impl"] != "hf_torch")
            + f"); {_machine(cpu['machine'])}, torch {cpu['torch']} on {cpu['torch_threads']} threads.")
    hf = _one(_rows(cpu, impl="hf_torch"))
    floors = [r for r in cpu["rows"] if "train_matmul_floor_s" in r]
    if floors:
      out += (" Our train step's matmuls alone (each timed on its own at its shapes, summed: what its "
              "products cost on their own): " + ", ".join(f"{r['kind']} {_secs(r['train_matmul_floor_s'])}" for r in floors)
              + f"; 1.2× HF's step would be {_secs(hf['train_step_s'] / 1.2)}.")
    out += "\n"
  return out


def vs_hf_torch_bf16(r: Results) -> str:
  """The same comparison in mixed precision: PyTorch under torch.autocast(bfloat16), ours bfloat16."""
  d = r.load("vs_hf_torch_cpu_bf16.json")
  if d is None:
    return "Not measured yet."
  rows = [["HF torch, autocast bfloat16" if x["impl"] == "hf_torch" else f"ours, {x['kind']}, bfloat16"]
          + _vs_hf_cells(x) for x in d["rows"]]
  return (_table(["", "CPU generate", "CPU train step"], rows)
          + f"\n\n{d['rounds']} rounds of one process per implementation; {_machine(d['machine'])}; "
          + r.files("vs_hf_torch_cpu_bf16.json", "vs_hf_torch_cpu_bf16.png") + "\n")


def train_throughput(r: Results) -> str:
  """Training step time, tokens/s, compile time and MFU."""
  rows = []
  for name in ("cpu", "gpu"):
    d = r.load(f"train_throughput_{name}.json")
    dtype = {"float32": "fp32", "bfloat16": "bf16"}.get(d["dtype"], d["dtype"])
    for x in sorted(d["rows"], key=lambda x: (x["k"], x["kind"])):
      tps = x["tokens_per_s"]
      rows.append([f"{name.upper()} {dtype}, {x['kind']}", x["k"], x["batch"], _secs(x["step_s"]),
                   f"{tps / 1e3:.0f}k" if tps >= 1e4 else f"{tps:.0f}",
                   f"{x['compile_s']:.1f} s" if x["compile_s"] < 20 else f"{x['compile_s']:.0f} s",
                   f"{x['mfu']:.1%}" if x.get("mfu") else "–"])
  return _table(["", "k", "batch", "step", "tokens/s", "compile", "MFU"], rows)


def long_inputs(r: Results) -> str:
  """Train-step memory vs k: XLA's memory analysis and the backward's residuals."""
  mem, res = r.load("long_inputs_cpu.json"), r.load("long_inputs_cpu_residuals.json")

  def m(variant, k):
    x = [y for y in mem["memory"] if y["variant"] == variant and y["k"] == k]
    return f"{_gib(x[0]['temp_bytes'])} / {_gib(x[0]['total_bytes'])} GiB" if x else "–"

  def rb(variant, k):
    x = [y for y in res["residuals"] if y["variant"] == variant and y["k"] == k]
    return f"{_gib(x[0]['residual_bytes'])} GiB" if x else "–"

  rows = [[k, m("dense", k), m("blockwise", k), rb("dense", k), rb("dense+remat", k), rb("blockwise", k),
           rb("blockwise+remat", k)] for k in sorted({y["k"] for y in mem["memory"]})]
  out = _table(["k", "dense: XLA temp / total", "blockwise: XLA temp / total", "residuals: dense",
                "dense + remat", "blockwise", "blockwise + remat"], rows)
  args = max(y["argument_bytes"] for y in mem["memory"])
  remat = [y for y in mem["memory"] if y["variant"] == "dense+remat"]
  out += f"\n\nArguments (train state + batch): {_gib(args)} GiB."
  for y in remat:
    dense = [z for z in mem["memory"] if z["variant"] == "dense" and z["k"] == y["k"]][0]
    out += (f" XLA temporaries with `remat_policy=\"full\"` (dense, k = {y['k']}): "
            f"{dense['temp_bytes'] / 2**30:.2f} → {y['temp_bytes'] / 2**30:.2f} GiB.")
  return out


def long_inputs_timing(r: Results) -> str:
  """k = 1024 train step time, dense vs blockwise (CPU, float32, batch 1)."""
  d = r.load("long_inputs_cpu_timing.json")
  rows = [[x["variant"], x.get("attention_block_size", "–"), x["k"], x["batch"], x["dtype"],
           f"{x['step_s']:.1f} s", f"{x['min_s']:.1f} s"] for x in d["timing"]]
  return _table(["variant", "block", "k", "batch", "dtype", "median step", "min step"], rows)


def segment_sweep_history(r: Results) -> str:
  """The from-scratch sweep's finding, in one line."""
  d = r.load("segment_sweep_cpu_scratch.json")
  full = [c for c in d["cells"] if c["kind"] == "full"][0]
  o = d["overrides"]
  return (f"From scratch ({len(d['cells'])} cells, {o['train.num_steps']} steps of batch "
          f"{o['train.batch_size']} on DialogSum, [json]({r.href('segment_sweep_cpu_scratch.json')}), "
          f"[png]({r.href('segment_sweep_cpu_scratch_fig4.png')})), no model read its input: full attention's "
          f"source gain was {full['source_gain']:.4f} nats/token and its {full['eval_examples']} test "
          f"predictions were {full['distinct_predictions']} distinct strings.")


def _table3(paper: dict, kind: str) -> dict[int, float]:
  """The paper's Table 3 ROUGE-1 of `kind` by segment size ({} for a kind it does not list by s)."""
  return {int(k): v for k, v in paper[kind].items()} if isinstance(paper.get(kind), dict) else {}


def _paper_r1(paper: dict, g: dict) -> str:
  if g["kind"] == "full":
    return f"{paper['full']:.2f}"
  table3 = _table3(paper, g["kind"])
  if g["schedule"] == "padded" and g["s"] in table3:
    return f"{table3[g['s']]:.2f}"
  if g["kind"] in paper.get("ablations_s64", {}) and g["kind"] != "srformer":
    return f"{paper['ablations_s64'][g['kind']]:.2f} (s = 64)"
  return "–"


def _verdict_line(v: dict, budget: str = "", brief: bool = False) -> str:
  """The claim's rule as one line; `budget` (e.g. " (1500 steps)") names a variant protocol; `brief`
  leaves out the rule and the variants (for a second verdict under one that states them)."""
  if not v:
    return f"Verdict{budget}: not yet (full attention and the smallest s are needed)."
  parts = [f"{k.replace('_', ' ').replace('10pct', '10%')}: {'yes' if v[k] else 'no'}"
           for k in ("segmented_below_full", "srformer_above_segmented", "srformer_within_10pct_of_full",
                     "xl_between") if k in v]
  missing = [k for k in ("segmented_below_full", "srformer_above_segmented", "xl_between") if k not in v]
  head = f"Verdict{budget} at s = {v['s']}: " + ("**the claim holds**" if v.get("holds") else
                                         "**not shown**" if not missing else "incomplete")
  line = head + " (" + "; ".join(parts) + (f"; cells missing for {', '.join(missing)}" if missing else "") + ")."
  if brief:
    return line
  line += " Rule: " + v["rule"] + "."
  for kind, t in v.items():  # variants (not the paper's), tested by the same rule beside the claim
    if isinstance(t, dict):
      line += (f" Variant {kind} (not the paper's): above segmented "
               f"{'yes' if t['above_segmented'] else 'no'}; within 10% of full "
               f"{'yes' if t['within_10pct_of_full'] else 'no'}.")
  return line


def _short_commit(commit) -> str:
  """'abc1234' or 'abc1234-dirty'; '?' for a cell trained before commits were recorded."""
  if not commit:
    return "?"
  return commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def _code_commits(cells: list[dict]) -> str:
  """The commits the cells were trained at, once each; cells trained from an uncommitted tree are
  named as such (history only: a headline table takes one clean commit's cells, `sweep_stats.one_commit`)."""
  clean = sorted({_short_commit(c.get("git_commit")) for c in cells if not _dirty(c)})
  dirty = [c for c in cells if _dirty(c)]
  out = ", ".join(clean)
  if dirty:
    base = ", ".join(sorted({_short_commit(c["git_commit"]).removesuffix("-dirty") for c in dirty}))
    out += ((" (" if out else "") + f"{len(dirty)} of {len(cells)} cells from an uncommitted tree on {base}: "
            + ", ".join(c.get("name", "?") for c in dirty) + "; not a headline figure" + (")" if out else ""))
  return out


def _dirty(cell: dict) -> bool:
  return str(cell.get("git_commit")).endswith("-dirty") or cell.get("git_clean") is False


def _sweep_groups(d: dict) -> list[dict]:
  order = {"full": 0, "segmented": 1, "xl": 2, "srformer": 3, "srformer_gated": 4}
  return sorted(d["groups"], key=lambda g: (g["schedule"] != "padded" and g["kind"] != "full",
                                            order.get(g["kind"], 5), g["s"] or 0))


def segment_sweep(r: Results) -> str:
  """The grid fine-tuned from the reader: per group (kind, s, schedule) mean and 95% interval over
  seeds (bootstrap over test examples for one seed), the paper's figure beside it, and the verdict."""
  d = r.load("segment_sweep_cpu.json")
  if d is None:
    return ("(not run yet: `python benchmarks/segment_sweep.py --preset cpu --reader benchmarks/reader/cpu_infill`)")
  o = d["overrides"]
  rows = []
  for g in _sweep_groups(d):
    rows.append([g["kind"], g["s"] or "–", g["schedule"] if g["s"] else "–", len(g["seeds"]), format_ci(g["rouge1"]),
                 format_ci(g["rouge2"]), format_ci(g["rougeL"]), format_ci(g["test_loss"], ".3f"),
                 format_ci(g["source_gain"], ".3f"), format_ci(g["distinct_predictions"], ".0f"),
                 _paper_r1(d["paper_t5_small_cnndm"], g)])
  done, planned = len(d["cells"]), len(d["cells_planned"])
  head = (f"{done} of {planned} cells, each fine-tuned {o['train.num_steps']} steps of batch "
          f"{o['train.batch_size']} (lr {o['train.learning_rate']}) from the reader; test on "
          f"{d['cells'][0]['eval_examples']} DialogSum dialogues; 95% intervals: t over seeds, or a "
          f"bootstrap over test examples (ROUGE-1) for one seed. Paper: T5-small on CNN/DailyMail. "
          f"{_machine(d.get('machine'))}; code at {_code_commits(d['cells'])}.")
  table = _table(["kind", "s", "schedule", "seeds", "ROUGE-1", "ROUGE-2", "ROUGE-L", "test loss", "source gain",
                  "distinct", "paper R-1"], rows)
  bullets = "- " + _verdict_line(d.get("verdict", {})) + "".join("\n- " + line for line in _raf_lines(d))
  return "\n\n".join([head, table, bullets,
                      r.files("segment_sweep_cpu.json", "segment_sweep_cpu_fig4.png")
                      + (" · " + r.files("segment_sweep_cpu_ablations.png")  # drawn with the ablations' cells
                         if any(g["kind"] in d["paper_t5_small_cnndm"]["ablations_s64"] and g["kind"] != "srformer"
                                for g in d["groups"]) else "")])


def segment_sweep_budget(r: Results, tag: str = "steps1500_d549376") -> str:
  """The fine-tuning budget, the third suspect of a claim that does not show: the same cells
  fine-tuned longer (segment_sweep.py --tag), beside the grid's groups of the same kind, s and
  schedule."""
  d, base = r.load(f"segment_sweep_cpu_{tag}.json"), r.load("segment_sweep_cpu.json")
  if d is None or base is None:
    return (f"(not run yet: `python benchmarks/segment_sweep.py --preset cpu --reader benchmarks/reader/cpu_infill "
            f"--tag {tag} --set train.num_steps=... --only ...`)")
  rows = []
  for g in _sweep_groups(d):
    for src, x in ((base, next((b for b in base["groups"] if b["group"] == g["group"]), None)), (d, g)):
      if x is None:
        continue
      cells = [c for c in src["cells"] if c["group"] == x["group"]]
      rows.append([x["kind"], x["s"] or "–", cells[0]["steps"], len(x["seeds"]), format_ci(x["rouge1"]),
                   format_ci(x["test_loss"], ".3f"), format_ci(x["source_gain"], ".3f"),
                   f"{statistics.mean(c['final_train_loss'] for c in cells):.3f}",
                   " / ".join(f"{v['recurrent_share']:.2f}" for v in cells[0]["raf"].values())
                   if cells[0].get("raf") else "–"])
  o = d["overrides"]
  seeds = sorted({c["seed"] for c in d["cells"]})
  seeds = ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(x) for x in seeds)
  head = (f"The grid's cells ({base['overrides']['train.num_steps']} steps) beside the same cells fine-tuned "
          f"{o['train.num_steps']} steps ({seeds}, lr {o['train.learning_rate']} with {o['train.warmup_steps']} warmup steps and linear "
          f"decay over the longer run, the same data order); 95% intervals as in the grid. "
          f"{_machine(d.get('machine'))}; code at {_code_commits(d['cells'])}.")
  table = _table(["kind", "s", "steps", "seeds", "ROUGE-1 (95% CI)", "test loss", "source gain",
                  "final train loss", "recurrent share, per layer (seed 0)"], rows)
  # the claim's rule on the longer run's own groups (written by segment_sweep.py with them)
  verdict = "- " + _verdict_line(d.get("verdict", {}), f" ({o['train.num_steps']} steps)")
  # the sweep writes its Fig. 4 with every JSON (a link that does not depend on what is on disk)
  return "\n\n".join([head, table, verdict,
                      r.files(f"segment_sweep_cpu_{tag}.json", f"segment_sweep_cpu_{tag}_fig4.png")])


def glance_segment_sweep_budget(r: Results, tag: str = "steps1500_d549376") -> str:
  """The README's results table: the verdict cells fine-tuned longer, beside the paper's T5-small,
  with the claim's verdict at that budget and the grid's at its own."""
  d, base = r.load(f"segment_sweep_cpu_{tag}.json"), r.load("segment_sweep_cpu.json")
  if d is None or base is None:
    return segment_sweep_budget(r, tag)
  o = d["overrides"]
  rows = [[g["kind"], g["s"] or "–", len(g["seeds"]), format_ci(g["rouge1"]), format_ci(g["source_gain"], ".3f"),
           _paper_r1(d["paper_t5_small_cnndm"], g)] for g in _sweep_groups(d)]
  head = (f"{len(d['cells'])} cells, each fine-tuned {o['train.num_steps']} steps of batch {o['train.batch_size']} "
          f"(lr {o['train.learning_rate']}, linear decay) from the reader; test on "
          f"{d['cells'][0]['eval_examples']} DialogSum dialogues; 95% intervals: t over seeds, or a bootstrap "
          f"over test examples for one seed. Paper: T5-small on CNN/DailyMail. {_machine(d.get('machine'))}; "
          f"code at {_code_commits(d['cells'])}.")
  table = _table(["kind", "s", "seeds", "ROUGE-1 (95% CI)", "source gain", "paper R-1"], rows)
  # the rule is stated once, on the longer budget's line
  grid = _verdict_line(base.get("verdict", {}), f" ({base['overrides']['train.num_steps']} steps, the grid)",
                       brief=True)
  bullets = "- " + _verdict_line(d.get("verdict", {}), f" ({o['train.num_steps']} steps)") + "\n- " + grid
  return "\n\n".join([head, table, bullets,
                      r.files(f"segment_sweep_cpu_{tag}.json", f"segment_sweep_cpu_{tag}_fig4.png")])


def _raf_lines(d: dict) -> list[str]:
  """Per group with RAF statistics: the recurrent share and (gated kinds) the learnt tanh(g) per
  decoder layer, as ranges over seeds (and heads)."""
  out = []
  for g in _sweep_groups(d):
    cells = [c for c in d["cells"] if c.get("group") == g["group"] and c.get("raf")]
    if not cells:
      continue
    layers = list(cells[0]["raf"])
    def rng(values, fmt=".2f"):
      lo, hi = format(min(values), fmt), format(max(values), fmt)
      return lo if lo == hi else f"{lo}–{hi}"
    share = "; ".join(f"layer {i}: {rng([c['raf'][l]['recurrent_share'] for c in cells])}"
                      for i, l in enumerate(layers))
    line = f"{g['kind']} s = {g['s']} ({g['schedule']}): recurrent share {share}"
    if "gate" in cells[0]["raf"][layers[0]]:
      gates = "; ".join(f"layer {i}: {rng([x for c in cells for x in c['raf'][l]['gate']], '.3f')}"
                        for i, l in enumerate(layers))
      line += f"; learnt gate tanh(g) {gates}"
    out.append(line + ".")
  return out


# ----- the 1500-step grid (one clean commit) and the alternatives beside it ----------------------------

GRID = "segment_sweep_cpu_steps1500"
SPLITS = (("test", "rouge1"), ("dev", "rouge1_dev"))


def _grid(r: Results, name: str = GRID):
  """(payload, commit, its cells, other cells, groups by name) of the 1500-step grid (or the grid
  `name`), or None."""
  d = r.load(f"{name}.json")
  if d is None or not d.get("cells"):
    return None
  commit, cells, other = sweep_stats.one_commit(d["cells"])
  if not cells:  # nothing a headline may show
    return None
  return d, commit, cells, other, sweep_stats.by_group(sweep_stats.aggregate(cells))


def _complete(d: dict, by: dict) -> dict:
  """The groups that have every seed the grid plans for them: a verdict waits for the rest (a group
  with 2 of its 3 seeds has a t interval too wide to judge by, and a mean that will move)."""
  planned = sweep_stats.planned_seeds(d["cells_planned"])
  return {k: g for k, g in by.items() if len(g["seeds"]) >= planned.get(k, 1)}


GRID_MISSING = ("(no cell of a clean commit yet: `python benchmarks/segment_sweep.py --preset cpu1500 --reader "
                "benchmarks/reader/cpu_infill --runs DIR` from a clean tree)")


def _grid_head(d: dict, commit, cells: list[dict], other: list[dict]) -> str:
  o = d["overrides"]
  ex = cells[0]
  longest = max(c["steps"] for c in cells)
  line = (f"{len(cells)} of {len(d['cells_planned'])} planned cells, each fine-tuned {o['train.num_steps']} steps"
          + (f" (the budget cells {longest})" if longest != o["train.num_steps"] else "")
          + f" of batch {o['train.batch_size']} (lr {o['train.learning_rate']}, {o['train.warmup_steps']} warmup "
          f"steps, linear decay) from the reader; ROUGE-1 on {ex['eval_examples']} DialogSum test dialogues "
          f"(`summary1`)" + (f" and {ex['dev_examples']} dev dialogues" if ex.get("dev_examples") else "")
          + "; 95% intervals: t over seeds, or a bootstrap over examples for one seed. "
          f"{_machine(d.get('machine'))}; every cell trained at commit {_short_commit(commit)} with a clean tree.")
  if other:
    line += (" Left out (another commit or a changed tree): "
             + ", ".join(f"{c['name']} ({_short_commit(c.get('git_commit'))})" for c in other) + ".")
  return line


def _yes(v) -> str:
  return "yes" if v else "no"


def _state(v: dict) -> str:
  return "**holds**" if v["holds"] else "**does not hold**" if v["complete"] else "incomplete"


def _claim_line(v: dict, split: str) -> str:
  parts = []
  if "segmented_below_full" in v:
    parts.append(f"segmented below full: {_yes(v['segmented_below_full'])}")
  if "srformer_above_segmented" in v:
    parts.append(f"srformer above segmented: {_yes(v['srformer_above_segmented'])}")
  if "srformer_vs_full" in v:
    parts.append(f"srformer {v['srformer_vs_full']:.2f} x full (>= 0.9: {_yes(v['srformer_within_10pct_of_full'])})")
  if "xl_between" in v:
    parts.append(f"xl between: {_yes(v['xl_between'])}")
  return f"s = {v['s']}, {split}: {_state(v)} (" + ("; ".join(parts) or "no group has all its planned seeds yet") + ")"


def _shape_line(v: dict, split: str) -> str:
  parts = []
  if "srformer_spread" in v:
    parts.append(f"srformer's means across s = {', '.join(map(str, v['sizes']))} within "
                 f"{v['srformer_spread']:.2f} points (<= {sweep_stats.SHAPE_SPREAD:g}: {_yes(v['srformer_flat'])})")
  if "segmented_drop" in v:
    parts.append(f"segmented s = {min(v['sizes'])} {v['segmented_drop']:.2f} points below s = {max(v['sizes'])} "
                 f"(>= {sweep_stats.SHAPE_COLLAPSE:g}: {_yes(v['segmented_collapses'])})")
  return f"shape, {split}: {_state(v)} (" + ("; ".join(parts) or "no group has all its planned seeds yet") + ")"


def _bullets(lines: list[str]) -> str:
  return "\n".join("- " + line for line in lines)


def grid_fig4(r: Results) -> str:
  """Fig. 4 across s at 1500 steps beside the paper's Table 3, with the claim and shape verdicts: one
  row per s (the figure's x axis), one column per kind and split."""
  g = _grid(r)
  if g is None:
    return GRID_MISSING
  d, commit, cells, other, by = g
  paper = d["paper_t5_small_cnndm"]
  kinds = ("segmented", "xl", "srformer")
  full = by.get("full")
  head = _grid_head(d, commit, cells, other)
  if full:
    head += (f" Full attention (no segments): test {format_ci(full['rouge1'])}, dev {format_ci(full['rouge1_dev'])}, "
             f"{_n(len(full['seeds']), 'seed')}; the paper's {paper['full']:.2f}.")

  def paper_at(kind, s):
    table3 = _table3(paper, kind)
    return f"{table3[s]:.2f}" if s in table3 else "–"

  rows = []
  for s in (8, 16, 32, 64):
    xs = [by.get(sweep_stats.name(kind, s)) for kind in kinds]
    if not any(xs):
      continue
    seeds = sorted({len(x["seeds"]) for x in xs if x})
    rows.append([s, seeds[0] if len(seeds) == 1 else " / ".join(str(len(x["seeds"])) if x else "–" for x in xs)]
                + [format_ci(x[metric]) if x else "–" for _, metric in SPLITS for x in xs]
                + [f"{paper_at('segmented', s)} / {paper_at('srformer', s)}"])
  table = _table(["s", "seeds"] + [f"{kind} {split}" for split, _ in SPLITS for kind in kinds]
                 + ["paper R-1 segmented / srformer (T5-small, CNN/DM)"], rows)
  lines = []
  done = _complete(d, by)
  for split, metric in SPLITS:
    lines += [_claim_line(sweep_stats.claim_at(done, s, metric), split) for s in (8, 64)]
    lines.append(_shape_line(sweep_stats.shape(done, (8, 16, 32, 64), metric), split))
  rule = ("Verdicts use only groups with all their planned seeds. "
          "Rules, fixed before the runs: at each s, segmented below full and srformer above segmented with "
          "separated 95% intervals, srformer >= 0.9 x full, xl between segmented and srformer; the shape: "
          f"srformer's means across s within {sweep_stats.SHAPE_SPREAD:g} points of each other while "
          f"segmented at s = 8 is at least {sweep_stats.SHAPE_COLLAPSE:g} points below s = 64.")
  return "\n\n".join([head, table, _bullets(lines), rule, r.files(f"{GRID}.json", f"{GRID}_fig4.png")])


def grid_table4(r: Results) -> str:
  """Table 4 (the ablations) at s = 64 and s = 8 beside the paper's s = 64, with its verdict."""
  g = _grid(r)
  if g is None:
    return GRID_MISSING
  d, commit, cells, other, by = g
  paper = d["paper_t5_small_cnndm"]["ablations_s64"]
  rows = []
  for kind in ("srformer",) + sweep_stats.ABLATIONS:
    row = [kind]
    for s in (64, 8):
      x = by.get(sweep_stats.name(kind, s))
      row += ([f"{format_ci(x['rouge1'])} ({len(x['seeds'])})", format_ci(x["rouge1_dev"])] if x else ["–", "–"])
    rows.append(row + [f"{paper[kind]:.2f}"])
  table = _table(["kind", "s = 64 test (seeds)", "s = 64 dev", "s = 8 test (seeds)", "s = 8 dev",
                  "paper R-1, s = 64"], rows)
  lines = []
  done = _complete(d, by)
  for split, metric in SPLITS:
    v = sweep_stats.table4(done, 64, paper, metric)
    above = "; ".join(f"{k}: {_yes(x)}" for k, x in v.get("srformer_above", {}).items()) or "no groups yet"
    lines.append(f"s = 64, {split}: srformer above each ablation {_state(v)} ({above}); our order "
                 f"{' > '.join(v['order']) or '–'}, the paper's {' > '.join(v['paper_order'])}"
                 + (f" (the same: {_yes(v['same_order_as_paper'])})" if v["complete"] else ""))
  links = r.files(f"{GRID}.json")
  if any(g["kind"] in sweep_stats.ABLATIONS for g in d.get("groups", [])):  # the grid plots them then
    links += " · " + r.files(f"{GRID}_ablations.png")
  return "\n\n".join([table, _bullets(lines),
                      "Rule, fixed before the runs: srformer above each ablation with separated 95% intervals.",
                      links])


def grid_budget(r: Results) -> str:
  """The budget at s = 8: full, segmented and srformer fine-tuned 500 (the older grid), 1500 and
  3000 steps; srformer's distance to full at each."""
  g = _grid(r)
  if g is None:
    return GRID_MISSING
  d, commit, cells, other, by = g
  old = r.load("segment_sweep_cpu.json")
  old_by = sweep_stats.by_group(old["groups"]) if old else {}
  at8 = lambda k, steps=None: sweep_stats.name(k, None if k == "full" else 8, steps=steps)  # noqa: E731
  cols = ((500, old_by, lambda k: at8(k)), (d["overrides"]["train.num_steps"], by, lambda k: at8(k)),
          (3000, by, lambda k: at8(k, 3000)))
  rows, gaps = [], []
  for kind in ("full", "segmented", "srformer"):
    rows.append([kind] + [f"{format_ci(src[f(kind)]['rouge1'])} ({len(src[f(kind)]['seeds'])})"
                          if f(kind) in src else "–" for _, src, f in cols])
  for steps, src, f in cols:
    if f("full") in src and f("srformer") in src:
      full, srf = src[f("full")], src[f("srformer")]
      gap = lambda key: (f"{full[key]['mean'] - srf[key]['mean']:.2f}"  # noqa: E731
                         if full.get(key) and srf.get(key) else "–")
      gaps.append(f"{steps} steps {gap('rouge1')} / {gap('rouge1_dev')}")
  line = ("srformer's distance to full (ROUGE-1 points, test / dev): " + ("; ".join(gaps) or "not yet")
          + ". The 500-step cells are the older grid's (code at " + (_code_commits(old["cells"]) if old else "?")
          + f"); the others this grid's.")
  header = ["kind", "500 steps (seeds)", f"{cols[1][0]} steps (seeds)", "3000 steps (seeds)"]
  return "\n\n".join([_table(header, rows), line])


def grid_cells(r: Results) -> str:
  """Every group of the 1500-step grid: test and dev ROUGE-1, source gain, distinct predictions."""
  g = _grid(r)
  if g is None:
    return GRID_MISSING
  d, commit, cells, other, by = g
  rows = [[x["kind"], x["s"] or "–", x["schedule"] if x["s"] else "–", x["steps"], len(x["seeds"]),
           format_ci(x["rouge1"]), format_ci(x["rouge1_dev"]), format_ci(x["test_loss"], ".3f"),
           format_ci(x["source_gain"], ".3f"), format_ci(x["distinct_predictions"], ".0f"),
           _paper_r1(d["paper_t5_small_cnndm"], x)] for x in _sweep_groups({"groups": list(by.values())})]
  table = _table(["kind", "s", "schedule", "steps", "seeds", "ROUGE-1 test", "ROUGE-1 dev", "test loss",
                  "source gain", "distinct (of 500)", "paper R-1"], rows)
  done = {c["name"] for c in d["cells"]}
  todo = [n for n in d["cells_planned"] if n not in done]
  return "\n\n".join([_grid_head(d, commit, cells, other), table]
                     + ([f"Not run yet ({len(todo)}): {', '.join(todo)}."] if todo else []))


def segment_share(r: Results) -> str:
  """One segment's share of the input per task and s (benchmarks/segment_share.py), beside the paper's."""
  d = r.load("segment_share.json")
  if d is None:
    return "(not measured yet: `python benchmarks/segment_share.py`)"
  rows = [[t["task"], f"{t['source_tokens_median']:.0f} ({t['source_cut_at_k']:.0%} cut)", x["s"], x["m"],
           f"{x['segment_share']:.1%}", f"{x['reference_reads_share']:.0%}"] for t in d["tasks"] for x in t["sizes"]]
  paper, *ours = d["tasks"]
  top = max(paper["sizes"], key=lambda y: y["segment_share"])
  near = []
  for t in ours:
    for x in t["sizes"]:
      p = min(paper["sizes"], key=lambda y: abs(math.log(y["segment_share"] / x["segment_share"])))
      near.append(f"{t['task'].split(' (')[0]} s = {x['s']}: " + (
          f"the paper's s = {p['s']}" if x["segment_share"] < 1.5 * top["segment_share"] else
          f"{x['segment_share'] / top['segment_share']:.0f}x the paper's largest (s = {top['s']})"))
  return (_table(["task", "input tokens, median (share cut at k)", "s", "m", "one segment's share of the input",
                  "share the reference's positions read with softmax"], rows)
          + "\n\nNearest in one segment's share of the input: " + "; ".join(near) + ". "
          + f"Means over each task's test inputs ({', '.join(str(t['examples']) for t in d['tasks'])}). "
          + r.files("segment_share.json"))


def grid_reproduce(r: Results) -> str:
  """The grid's cells against the code as it is: one cell per kind trained and decoded again."""
  d = r.load("grid_reproduce_cpu.json")
  if d is None:
    return "(not checked yet: `python benchmarks/reproduce_cells.py --runs DIR`)"
  recs = d["records"]
  same = [x for x in recs if x["train_identical"] and x["predictions_identical"]]
  rows = [[f"`{x['kind']}`" + (f" ({x['schedule']})" if x["schedule"] != "padded" else ""), x["s"] or "–",
           "same" if x["train_identical"] else "**differs**",
           "same" if x["predictions_identical"] else f"**{x['predictions_differing']} differ**",
           f"{x['rouge1_then']:.2f} / {x['rouge1_now']:.2f}"] for x in recs]
  commits = ", ".join(sorted({_short_commit(x["cell_commit"]) for x in recs}))
  head = (f"One finished cell per kind (seed 0), trained again from the start for {d['steps']} steps and "
          f"decoding the {recs[0]['examples'] if recs else 0} test dialogues again from its final checkpoint, "
          f"with the code at {_short_commit(d.get('git_commit'))}, against what the cell wrote when it ran at "
          f"{commits}: **{len(same)} of {len(recs)}** give the same loss, gradient norm, parameter norm, "
          "accuracy and learning rate at that step and the same predictions, bit for bit.")
  return "\n\n".join([head, _table(["kind", "s", f"step {d['steps']}", "test predictions",
                                    "ROUGE-1 then / now"], rows),
                      f"{_machine(d.get('machine'))}, single-threaded as the cells. "
                      + r.files("grid_reproduce_cpu.json")])


LONG = "long_dialogsum_cpu"
LONG_MISSING = ("(no cell of a clean commit yet: `python benchmarks/segment_sweep.py --preset long1024 --reader "
                "benchmarks/reader/cpu_infill --runs DIR` from a clean tree)")


def _long(r: Results):
  """`_grid`'s tuple for the long-input grid, and its groups that have every planned seed; or None."""
  g = _grid(r, LONG)
  return None if g is None else (*g, _complete(g[0], g[4]))


def _positions(g: dict, key: str, fmt: str = ".1f") -> str:
  pos = g.get(key)
  return " / ".join(format(p["mean"], fmt) for p in pos) if pos else "–"


def _long_gate_line(v: dict) -> str:
  if not v["complete"]:
    return "gate: incomplete (full attention has not all its seeds yet)"
  return (f"gate: {'**passes**' if v['holds'] else '**fails**'} (full attention's source gain "
          f"{v['source_gain']:.2f} nats/token, >= {sweep_stats.GATE_SOURCE_GAIN:g}: "
          f"{_yes(v['source_gain'] >= sweep_stats.GATE_SOURCE_GAIN)}; distinct test predictions "
          f"{v['distinct_predictions']:.0f}, >= {sweep_stats.GATE_DISTINCT}: "
          f"{_yes(v['distinct_predictions'] >= sweep_stats.GATE_DISTINCT)})")


def long_dialogsum(r: Results) -> str:
  """The long-input grid (four dialogues in, k = 1024): per group test and dev ROUGE-1, ROUGE-1 by
  position, source gain, distinct predictions; the gate and the claim's rule at s = 8 and 64."""
  g = _long(r)
  if g is None:
    return LONG_MISSING
  d, commit, cells, other, by, done = g
  o = d["overrides"]
  rows = []
  for x in _sweep_groups({"groups": list(by.values())}):
    rows.append([x["kind"], x["s"] or "–", len(x["seeds"]), format_ci(x["rouge1"]), format_ci(x["rouge1_dev"]),
                 _positions(x, "rouge1_by_position"), _positions(x, "rouge1_dev_by_position"),
                 format_ci(x["source_gain"], ".3f"), _positions(x, "source_gain_by_position", ".2f"),
                 format_ci(x["distinct_predictions"], ".0f")])
  table = _table(["kind", "s", "seeds", "ROUGE-1 test (95% CI)", "ROUGE-1 dev", "by position, test",
                  "by position, dev", "source gain", "source gain by position", "distinct (of 500)"], rows)
  ex = cells[0]
  head = (f"{len(cells)} of {len(d['cells_planned'])} planned cells, each fine-tuned {o['train.num_steps']} steps "
          f"of batch {o['train.batch_size']} (lr {o['train.learning_rate']}, {o['train.warmup_steps']} warmup steps, "
          f"linear decay) from the reader at k = {o['data.max_source_len']}, q = {o['data.max_target_len']}; "
          f"beam {o['decode.num_beams']}, no repeated {o['decode.no_repeat_ngram_size']}-gram"
          f"{' within a summary' if o.get('decode.ngram_scope_separator') else ''}; ROUGE-1 on "
          f"{ex['eval_examples']} test inputs (`summary1` joined)"
          + (f" and {ex['dev_examples']} dev inputs" if ex.get("dev_examples") else "")
          + "; by position: the i-th summary of an output against the i-th reference (source gain: the "
          "teacher-forced loss of the i-th reference summary's tokens with another input, less with its own); "
          "95% intervals: t over "
          f"seeds, or a bootstrap over examples for one seed. {_machine(d.get('machine'))}; every cell's "
          f"last run (its training, or decoding it again from its final checkpoint) at commit "
          f"{_short_commit(commit)} with a clean tree.")
  if other:
    head += (" Left out (another commit or a changed tree): "
             + ", ".join(f"{c['name']} ({_short_commit(c.get('git_commit'))})" for c in other) + ".")
  gate = sweep_stats.long_gate(done)
  lines = [_long_gate_line(gate)]
  planned_s = sorted({int(m.group(1)) for n in d["cells_planned"] for m in [re.search(r"_s(\d+)_", n)] if m})
  for split, metric in SPLITS:
    for s in planned_s:
      v = sweep_stats.claim_at(done, s, metric, with_xl=False)
      line = _claim_line(v, split)
      lines.append(line if gate["holds"] or not gate["complete"] else
                   line + " (not a comparison: the gate fails, so these differences are not evidence)")
  todo = [n for n in d["cells_planned"] if n not in {c["name"] for c in d["cells"]}]
  rule = ("Verdicts use only groups with all their planned seeds. Rules, fixed before the runs (issue 36): gate, "
          f"full attention's source gain >= {sweep_stats.GATE_SOURCE_GAIN:g} nats/token and >= "
          f"{sweep_stats.GATE_DISTINCT} distinct predictions of 500; claim, at each s, segmented below full and "
          "srformer above segmented with separated 95% intervals, srformer >= 0.9 x full (xl reported beside).")
  pngs = ([f"{LONG}_positions.png"] if any(g["s"] for g in d.get("groups", [])) else []) + [f"{LONG}_fig4.png"]
  links = r.files(f"{LONG}.json", *pngs)  # what the grid plots with its JSON
  return "\n\n".join([head, table, _bullets(lines), rule, links]
                      + ([f"Not run yet ({len(todo)}): {', '.join(todo)}."] if todo else []))


def long_dialogsum_cost(r: Results) -> str:
  """Train step and greedy decoding per token of each kind at k = 1024 (benchmarks/long_cost.py)."""
  d = r.load("long_dialogsum_cost_cpu.json")
  if d is None:
    return "(not measured yet: `python benchmarks/long_cost.py`)"
  def spread(v, scale=1.0):
    return f"{min(v) * scale:.2f}–{max(v) * scale:.2f}"

  rows = [[x["kind"], x["s"] or "–", f"{x['train_step_s']:.2f} s ({spread(x['samples']['train_step_s'])})",
           f"{x['train_step_vs_full']:.2f}",
           f"{x['decode_per_token_ms']:.2f} ms ({spread(x['samples']['decode_steps_s'], 1e3 / d['new_tokens'])})",
           f"{x['decode_per_token_vs_full']:.2f}"] for x in d["rows"]]
  return (_table(["kind", "s", "train step (rounds' range)", "/ full", "greedy decode per token (range)", "/ full"],
                 rows)
          + f"\n\nThe reader's model (random weights), k = {d['k']}, q = {d['q']}, batch {d['batch']}, "
          f"{d['new_tokens']} tokens decoded, {d['threads']} XLA thread{'s' if d['threads'] > 1 else ''}; medians of "
          f"{d['rounds']} interleaved rounds; {_machine(d.get('machine'))}. "
          + r.files("long_dialogsum_cost_cpu.json", "long_dialogsum_cost_cpu.png"))


def glance_long_dialogsum(r: Results) -> str:
  """The README's line for the long-input grid: srformer and segmented at s = 8 against full, test."""
  g = _long(r)
  if g is None:
    return "Four dialogues in (k = 1024): " + LONG_MISSING
  d, commit, cells, other, by, done = g
  parts = []
  for kind, s in (("full", None), ("segmented", 8), ("srformer", 8), ("xl", 8)):
    x = by.get(sweep_stats.name(kind, s))
    if x:
      parts.append(f"{kind}{'' if s is None else f' s = {s}'} {format_ci(x['rouge1'])} ({_n(len(x['seeds']), 'seed')})")
  gate = sweep_stats.long_gate(done)
  v = sweep_stats.claim_at(done, 8, "rouge1", with_xl=False)
  return (f"Four dialogues in, four summaries out (k = 1024, m = 128 segments at s = 8; test ROUGE-1): "
          + "; ".join(parts) + f". Gate {'passes' if gate['holds'] else 'fails' if gate['complete'] else 'incomplete'}"
          + (f"; claim at s = 8: {_state(v)}" if gate["holds"] or not gate["complete"] else
             f", so the claim is not judged (its rule at s = 8 reads {_state(v)}, but without the gate the "
             f"differences are not evidence)")
          + f". Commit {_short_commit(commit)}; "
          + r.files(f"{LONG}.json") + " · [details](docs/segment_sweep.md#long-inputs-four-dialogues-in-four-summaries-out)")


def glance_crt_ptb(r: Results) -> str:
  """The README's CRT table: per context L, test perplexity of the protocol's main models, CRT's
  FLOPs against full attention's, and the gate and claim verdicts (docs/crt.md has every row)."""
  d = r.load("crt_ptb_cpu.json")
  if d is None or "aggregate" not in d:
    return "(not run yet: `python benchmarks/crt_ptb.py`)"
  agg = d["aggregate"]
  names = ("full_L", "segmented_L/4", "crt_L/4", "xl_L/2")
  by = {(str(m["context_len"]), m["name"]): m for m in agg["models"]}
  rows = []
  for context in sorted(agg.get("gate", {}), key=int):
    g, c = agg["gate"][context], agg.get("claim", {}).get(context, {})
    cells = [f"{format_ci(by[(context, n)]['test_ppl'], '.1f')}" if (context, n) in by else "–" for n in names]
    rows.append([context] + cells + [f"{c['crt_L/4_flops_over_full']:.2f}×" if c else "–",
                 f"{'holds' if g['holds'] else 'does not hold'} ({g['segmented_L/4_over_full']:.3f})",
                 _crt_claim_cell(g, c)])
  return (_table(["L", *[f"{n} test ppl" for n in names], "CRT FLOPs vs full", "gate (segmented / full)",
                  "claim (crt / full)"], rows)
          + f"\n\nSeeds per model: {', '.join(sorted({str(m['test_ppl']['n']) for m in agg['models'] if m['name'] in names}))}; "
          "95% intervals over seeds; gate: segmented_L/4 >= 1.05 x full_L with separated "
          "intervals; claim: crt_L/4 <= 1.02 x full_L and below segmented_L/4 with separated intervals. "
          + r.files("crt_ptb_cpu.json", "crt_ptb_cpu.png"))


def glance_crt_scisumm(r: Results) -> str:
  """The README's line for CRT on the ScisummNet papers: test perplexity per model, gate and claim."""
  d = r.load("crt_scisumm_cpu.json")
  if d is None or "aggregate" not in d:
    return "CRT on long documents (ScisummNet papers, L = 512): not run yet (`python benchmarks/crt_ptb.py --preset scisumm`)."
  agg = d["aggregate"]
  parts = [f"{m['name']} {format_ci(m['test_ppl'], '.1f')} ({_n(m['test_ppl']['n'], 'seed')})" for m in agg["models"]]
  verdicts = [f"L = {context}: " + crt_verdict(g, agg.get("claim", {}).get(context))
              for context, g in sorted(agg.get("gate", {}).items(), key=lambda kv: int(kv[0]))]
  return ("CRT on long documents (ScisummNet papers as one word stream; test perplexity): " + "; ".join(parts)
          + (". " + "; ".join(verdicts) if verdicts else "") + ". "
          + r.files("crt_scisumm_cpu.json") + " · [details](docs/crt.md)")


def alternatives(r: Results) -> str:
  """Quality against cost for every kind (benchmarks/alternatives.py), with the verdicts."""
  d = r.load("cross_attention_alternatives_cpu.json")
  if d is None or not d.get("groups"):
    return "(not run yet: the 1500-step grid's cells, then `python benchmarks/alternatives.py`)"
  fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
  rows = []
  for g in d["groups"]:
    flops = fmt(g["flops_vs_full"], ".3f")
    if g["kind"] == "gru_memory":
      flops += f" ({fmt(g['flops_vs_full_analytic'], '.2f')} counting every segment's step)"
    rows.append([g["kind"], g["s"] or "–", len(g["seeds"]), format_ci(g["rouge1"]), format_ci(g["rouge1_dev"]),
                 format_ci(g["source_gain"], ".3f"), flops, fmt(g["decode_ms_per_token_k16384"], ".2f")])
  table = _table(["kind", "s", "seeds", "ROUGE-1 test", "ROUGE-1 dev", "source gain", "XLA flops / full",
                  "decode ms/token, k = 16384"], rows)
  lines = []
  for key in ("verdict_s8", "verdict_s64"):
    v = d.get(key) or {}
    if not v:
      continue
    gate = v.get("gate")
    line = (f"s = {v['s']}: gate (full attention reads its input) "
            + ("holds" if gate else "not run yet" if gate is None else "does not hold: the comparison says little"))
    for kind in ("pooled", "linear", "local_window", "gru_memory"):
      if v.get(kind, {}).get("waits"):
        line += f"; {kind} waits for its seeds ({v[kind]['waits']})"
      elif v.get(kind):
        line += f"; {kind} " + ", ".join(
            f"{'not separated from' if side == 'not separated' else side} SRformer on {split}"
            for split, side in v[kind].items())
    lines.append(line + ".")
  planned, done = d.get("alternative_cells_planned"), d.get("alternative_cells_done") or []
  where = (f"The alternatives' cells in: {len(done)} of {len(planned)}. " if planned else "")
  if d.get("cells_left_out"):
    where += f"Left out, not of that commit: {', '.join(d['cells_left_out'])}. "
  where += (f"Quality: the grid's cells, trained at {_short_commit(d.get('git_commit'))}; "
            f"decode time per token timed alone at {_short_commit(d.get('decode_git_commit'))}, "
            f"{_machine(d.get('decode_machine'))} (batch 8, greedy, random weights; "
            "`benchmarks/decode_scaling.py --tag alternatives`); flops: `benchmarks/cross_attention_cost.py`.")
  return "\n\n".join([table, _bullets(lines), f"Rule: {d['verdict_s8']['rule']}.", where,
                      r.files("cross_attention_alternatives_cpu.json", "cross_attention_alternatives_cpu.png")])


def scisumm_corpus(r: Results) -> str:
  """The long-document LM corpus (benchmarks/scisumm_lm.py): papers and tokens per split."""
  d = r.load("scisumm_lm_stats.json")
  if d is None:
    return "(not built yet: `python benchmarks/scisumm_lm.py --out DIR`)"
  rows = [[split, v["documents"], f"{v['tokens'] / 1e6:.2f} M", f"{v['doc_tokens']['p50']:,.0f}",
           f"{100 * v['tokens_past_512_in_doc']:.0f}%", f"{100 * v['unk_rate']:.1f}%"]
          for split, v in d["splits"].items()]
  return (_table(["split", "papers", "tokens", "median tokens per paper", "tokens past word 512 of their paper",
                  "`<unk>`"], rows)
          + f"\n\nVocabulary {d['vocab_size']:,} (with `<unk>`); {d['documents_left_out']} papers under "
          f"{d['min_words']} words left out; split seed {d['seed']} ({r.files('scisumm_lm_stats.json')}).")


def long_dialogsum_data(r: Results) -> str:
  """The long-input task (benchmarks/long_dialogsum.py): examples and token lengths per split."""
  d = r.load("long_dialogsum_stats.json")
  if d is None:
    return "(not built yet: `python benchmarks/long_dialogsum.py --out DIR`)"
  rows = [[split, v["examples"], f"{v['source_tokens']['p50']:.0f} / {v['source_tokens']['p95']:.0f} / "
           f"{v['source_tokens']['max']}", f"{100 * v['source_truncated']:.1f}%",
           f"{v['target_tokens']['p50']:.0f} / {v['target_tokens']['p95']:.0f} / {v['target_tokens']['max']}",
           f"{100 * v['target_truncated']:.1f}%"] for split, v in d["splits"].items()]
  return (_table(["split", "inputs", "input tokens (median / 95% / max)", f"over {d['max_source_len']}",
                  "target tokens (median / 95% / max)", f"over {d['max_target_len']}"], rows)
          + f"\n\n{d['per_input']} dialogues per input, each cut to {d['dialogue_cap_tokens']} tokens "
          f"(cut: {', '.join(f'{k} {v}' for k, v in d['dialogues_cut'].items())}); {d['regroupings']} "
          f"regroupings of the training dialogues; tokens of `{d['tokenizer']}` "
          f"({r.files('long_dialogsum_stats.json')}).")


def reader(r: Results) -> str:
  """The pretrained reader (benchmarks/reader.py): its curve against steps and the gate."""
  name = next((n for n in ("reader_cpu_infill.json", "reader_cpu.json") if os.path.exists(r.path(n))), None)
  if name is None:
    return ("(the reader's training has not finished yet: "
            "`python benchmarks/reader.py --preset cpu --objective infill`)")
  d = r.load(name)
  rows = [[c["step"], f"{c['train_loss']:.3f}" if c.get("train_loss") is not None else "–", f"{c['test_loss']:.3f}",
           f"{c['source_gain']:.3f}",
           f"{c['denoising_source_gain']:.3f}" if c.get("denoising_source_gain") is not None else "–",
           c["distinct_predictions"], f"{c['rouge1']:.2f}", f"{c['rouge2']:.2f}", f"{c['rougeL']:.2f}"]
          for c in d["curve"]]
  f = d["final"]
  gate = f["gate"]
  line = (f"On all {f['eval_examples']} test dialogues after {f['step']} steps: source gain "
          f"{f['source_gain']:.3f} nats/token, {f['distinct_predictions']} distinct predictions, ROUGE-1/2/L "
          f"{f['rouge1']:.2f} / {f['rouge2']:.2f} / {f['rougeL']:.2f}; gate (source gain >= {gate['source_gain']}, "
          f">= {gate['distinct_predictions']} distinct) **{'holds' if f['gate_holds'] else 'does not hold'}**.")
  return (f"Curve ({d['settings']['eval_examples']} test dialogues per point, {d['objective']}):\n\n"
          + _table(["step", "train loss (mixture)", "test loss", "source gain", "denoising source gain", "distinct", "R-1", "R-2", "R-L"], rows)
          + f"\n\n{line} {_machine(d['machine'])}; {r.files(name, name[:-len('.json')] + '.png')}\n")


def reader_span_pilot(r: Results) -> str:
  """T5's span corruption as the reader's objective: the pilot that was stopped."""
  d = r.load("reader_cpu_span_pilot.json")
  c = d["curve"][-1]
  return (f"Span corruption, T5's own objective, came first ([json]({r.href('reader_cpu_span_pilot.json')})): "
          f"at step {c['step']} of {d['settings']['steps']} the source gain on the test summaries was "
          f"{c['source_gain']:.4f} nats/token and the {c['eval_examples']} test predictions were "
          f"{c['distinct_predictions']} distinct strings; it was stopped at step {d['stopped_at_step']}.")


def reader_dropout_pilot(r: Results) -> str:
  """The infilling reader with the sweep's dropout 0.1: the run that was stopped for dropout 0."""
  d = r.load("reader_cpu_infill_dropout_pilot.json")
  if d is None:
    return "(no dropout pilot recorded)"
  pts = "; ".join(f"step {c['step']}: source gain {c['source_gain']:.3f} nats/token, denoising gain "
                  f"{c['denoising_source_gain']:.3f}, {c['distinct_predictions']} distinct of {c['eval_examples']}"
                  for c in d["curve"])
  return (f"With the sweep's dropout of {d['settings']['dropout_rate']} the same recipe hardly read "
          f"([json]({r.href('reader_cpu_infill_dropout_pilot.json')})): {pts}. It was stopped at step "
          f"{d['curve'][-1]['step']} for the run below, without dropout.")


def swap_at_init(r: Results) -> str:
  """Each kind swapped into the reader at step 0 (benchmarks/swap_at_init.py)."""
  d = r.load("swap_at_init_cpu.json")
  if d is None:
    return "(not run yet: `python benchmarks/swap_at_init.py`)"
  def per_layer(x, key, fmt):
    return " / ".join(format(v[key], fmt) for v in x["raf"].values()) if x.get("raf") else "–"
  rows = [[x["kind"], x["s"] or "–", f"{x['test_loss']:.3f}", f"{x['source_gain']:.3f}",
           per_layer(x, "raf_fired", ".2f"), per_layer(x, "recurrent_share", ".3f")] for x in d["rows"]]
  return (_table(["kind", "s", "test loss", "source gain", "RAF fired, per layer",
                  "recurrent share, per layer"], rows)
          + f"\n\n{_machine(d['machine'])}; code at {_short_commit(d.get('git_commit'))}; "
          f"[json]({r.href('swap_at_init_cpu.json')})")


def crt_ptb_flops(r: Results) -> str:
  """Forward FLOPs per token of every CRT-benchmark model at several context lengths L."""
  d = r.load("crt_ptb_flops_cpu.json")
  full = {x["context_len"]: x for x in d["rows"] if x["name"] == "full_L"}
  rows = [[x["context_len"], x["name"], x["segment_len"], f"{x['flops_per_token'] / 1e6:.2f} M",
           f"{x['flops_per_token_without_output_layer'] / 1e6:.3f} M",
           f"{x['flops_per_token_without_output_layer'] / full[x['context_len']]['flops_per_token_without_output_layer']:.2f}×"]
          for x in d["rows"]]
  return _table(["L", "model", "segment", "fwd FLOPs/token (total)", "without output layer", "vs full_L"], rows)


def crt_ptb_short(r: Results) -> str:
  """The first, short CRT run: one seed, a fixed step budget, no dropout."""
  d = r.load("crt_ptb_cpu_short.json")
  s = d["settings"]
  full = [x for x in d["runs"] if x["name"] == "full_L"][0]["flops_per_token_without_output_layer"]
  rows = [[x["name"], x["segment_len"], f"{x['test_ppl']:.1f}", f"{x['flops_per_token'] / 1e6:.2f} M",
           f"{x['flops_per_token_without_output_layer'] / 1e6:.3f} M",
           f"{x['flops_per_token_without_output_layer'] / full:.2f}×"] for x in d["runs"]]
  head = (f"{s['num_steps']} steps of {s['batch_size']} streams × {s['context_len']} tokens, "
          f"d_model {s['d_model']}, {s['num_layers']} layers, dropout {s['dropout_rate']}, one seed each "
          f"([json]({r.href('crt_ptb_cpu_short.json')}), [png]({r.href('crt_ptb_cpu_short.png')})):\n\n")
  return head + _table(["model", "segment", "test ppl", "fwd FLOPs/token (total)", "without output layer",
                        "vs full_L"], rows)


def crt_ptb(r: Results) -> str:
  """The CRT protocol (benchmarks/crt_ptb.py): per-model table, then gate and claim per context L."""
  return _crt_protocol(r, "crt_ptb_cpu.json")


def crt_scisumm(r: Results) -> str:
  """The CRT protocol on the ScisummNet papers (crt_ptb.py --preset scisumm): the same table and
  verdicts, and test perplexity by position within the document."""
  return _crt_protocol(r, "crt_scisumm_cpu.json", "(not run yet: `python benchmarks/crt_ptb.py --preset scisumm`)")


def crt_scisumm_pilot(r: Results) -> str:
  """The ScisummNet protocol's pilot: its first runs at the first step budget, each run's numbers."""
  d = r.load("crt_scisumm_pilot_cpu.json")
  if d is None:
    return "(no pilot yet)"
  rows = []
  for x in d["runs"]:
    still = " (its last: still improving)" if x["best_step"] == x["steps"] else ""
    rows.append([f"`{x['name']}`", x["seed"], f"{x['steps']} ({x['epochs']:.2f})", f"{x['best_step']}{still}",
                 f"{x['valid_ppl']:.1f}", f"{x['test_ppl']:.1f}",
                 " / ".join(f"{b['ppl']:.1f}" for b in x.get("test_by_position", [])),
                 f"{x['train_s_this_invocation'] / 60:.1f}"])
  buckets = " / ".join(f"{b['from']}–{b['to'] or 'end'}" for b in d["runs"][0].get("test_by_position", []))
  commits = ", ".join(sorted({_short_commit(x.get("git_commit")) for x in d["runs"]}))
  return (_table(["model", "seed", "steps (epochs)", "best validation at step", "valid ppl", "test ppl",
                  f"test ppl by word position ({buckets})", "train minutes"], rows)
          + f"\n\nL = {d['settings']['context_len']}, batch {d['settings']['batch_size']} streams, lr "
          f"{d['settings']['learning_rate']}, validated every {d['settings']['eval_every']} steps; code at {commits}; "
          f"{_machine(d.get('machine'))}. " + r.files("crt_scisumm_pilot_cpu.json", "crt_scisumm_pilot_cpu.png"))


def crt_verdict(g: dict | None, c: dict | None) -> str:
  """CRT's gate and claim verdict at one context L (`aggregate["gate"][L]`, `aggregate["claim"][L]` of
  benchmarks/crt_ptb.py), in the one wording docs/crt.md and the README share. No verdict without
  intervals over seeds (2 or more); where the gate fails, full attention does not use its context past
  L/4, so matching it is a low bar: the claim's rule is reported as saying little, and what the memory
  adds is read from CRT against the memory-less segments alone."""
  parts = []
  if g and g["seeds"] < 2:
    parts.append(f"gate undecided (segmented_L/4 / full_L = {g['segmented_L/4_over_full']:.3f} with "
                 f"{g['seeds']} seed; the verdict needs intervals over seeds)")
  elif g:
    parts.append(f"gate {'holds' if g['holds'] else 'does not hold'} (segmented_L/4 / full_L = "
                 f"{g['segmented_L/4_over_full']:.3f}, intervals "
                 f"{'separated' if g['intervals_separated'] else 'not separated'}, {g['seeds']} seeds)")
  state = _crt_claim_state(g, c) if c else None
  if state == "undecided":
    parts.append(f"claim undecided (crt_L/4 / full_L = {c['crt_L/4_over_full']:.3f}; {c['seeds']} seed for "
                 f"the fewest-seeded of the three models, the verdict needs intervals over seeds)")
  elif state == "no gate":
    parts.append(f"claim's rule {'met' if c['holds'] else 'not met'} but without the gate, so matching full "
                 f"says little (crt_L/4 / full_L = {c['crt_L/4_over_full']:.3f}, FLOPs vs full "
                 f"{c['crt_L/4_flops_over_full']:.2f}×); the memory's own effect, crt_L/4 below "
                 f"segmented_L/4 with separated intervals: "
                 f"{'yes' if c['crt_L/4_below_segmented_L/4_separated'] else 'no'} ({c['seeds']} seeds)")
  elif state:
    parts.append(f"claim {state} (crt_L/4 / full_L = "
                 f"{c['crt_L/4_over_full']:.3f}, below segmented_L/4 with separated intervals: "
                 f"{'yes' if c['crt_L/4_below_segmented_L/4_separated'] else 'no'}, FLOPs vs full "
                 f"{c['crt_L/4_flops_over_full']:.2f}×)")
  return "; ".join(parts)


def _crt_claim_state(g: dict | None, c: dict) -> str:
  """The claim's standing at one L: "undecided" (no intervals over seeds: c["seeds"] is the fewest
  of the three models', the gate's two among them), "no gate" (the gate fails, so the rule says
  little), else "holds" / "does not hold"."""
  if c["seeds"] < 2:
    return "undecided"
  if g and not g["holds"]:
    return "no gate"
  return "holds" if c["holds"] else "does not hold"


def _crt_claim_cell(g: dict, c: dict) -> str:
  """The claim's cell of the README's CRT table, in `crt_verdict`'s terms."""
  if not c:
    return "–"
  state = _crt_claim_state(g, c)
  return f"{'says little: no gate' if state == 'no gate' else state} ({c['crt_L/4_over_full']:.3f})"


def _crt_protocol(r: Results, name: str, missing: str = "(no runs finished yet)") -> str:
  path = r.path(name)
  if not os.path.exists(path):
    return missing
  from benchmarks import crt_ptb as bench  # no jax at import
  payload = r.load(name)
  if "aggregate" not in payload:  # an older file, written before the protocol had seeds and verdicts
    return f"(no runs of the current protocol in {name} yet)"
  lines = [bench.markdown(path), ""]
  agg = payload["aggregate"]
  for context in sorted(set(agg.get("gate", {})) | set(agg.get("claim", {})), key=int):
    lines.append(f"- L = {context}: " + crt_verdict(agg.get("gate", {}).get(context), agg.get("claim", {}).get(context)))
  positioned = [m for m in agg["models"] if m.get("test_by_position")]
  if positioned:
    buckets = positioned[0]["test_by_position"]
    head = [f"words {b['from']}–{b['to'] - 1}" if b["to"] else f"words {b['from']}+" for b in buckets]
    rows = [[m["name"], str(m["test_ppl"]["n"])] + [format_ci(b["ppl"], ".1f") for b in m["test_by_position"]]
            for m in positioned]
    lines += ["", "Test perplexity by the predicted word's position within its document (mean, 95% interval "
              "over seeds; tokens per bucket: " + ", ".join(f"{b['tokens']:,}" for b in buckets) + "):", "",
              _table(["model", "seeds"] + head, rows)]
  files = [name, name.replace(".json", ".png")]
  if positioned:
    files.append(name.replace(".json", "_by_position.png"))
  commits = sorted({str(x.get("git_commit")) for x in payload.get("runs", []) if x.get("git_commit")})
  lines.append("\n" + (f"Code at {', '.join(_short_commit(c) for c in commits)}. " if commits else "")
               + r.files(*files))
  return "\n".join(lines)


# ----- results at a glance (README): one short table per claim, every row linking its files -----------

def glance_decode(r: Results) -> str:
  """Decoding time per token at the largest input length."""
  rows = []
  for name, d in zip(("CPU", "GPU"), _decode(r)):
    k = max(x["k"] for x in d["rows"])
    full = _one(_rows(d, kind="full", k=k))["per_token_ms"]
    srf = _one(_rows(d, kind="srformer", k=k))["per_token_ms"]
    p = name.lower()
    rows.append([_machine(d["machine"]), k, f"{_sig(full)} ms", f"{_sig(srf)} ms", _x(full / srf),
                 r.files(f"decode_scaling_{p}.json", f"decode_scaling_{p}.png")])
  return _table(["machine", "k", "full", "srformer", "speedup", "files"], rows)


def glance_vs_hf(r: Results) -> str:
  """Our srformer T5-small against transformers (PyTorch)."""
  rows = []
  for p in ("cpu", "gpu"):
    d = r.load(f"vs_hf_torch_{p}.json")
    x = _one(_rows(d, impl="srformer_jax", kind="srformer"))
    rows.append([_machine(d["machine"]), _x(x["generate_speedup_vs_hf"]), _x(x["train_speedup_vs_hf"]),
                 r.files(f"vs_hf_torch_{p}.json", f"vs_hf_torch_{p}.png")])
  return _table(["machine", "generate vs HF", "train step vs HF", "files"], rows)


def glance_pipeline(r: Results) -> str:
  """The training loop against the step alone."""
  d = r.load("input_pipeline_cpu.json")
  rows = [[_PIPELINE_SIZES[name].format(b=s["batch_size"]), f"{s['loop_over_alone']:.3f}",
           f"{s['guard_cost']:.1%}" if "guard_cost" in s else "–"]
          for name, s in d["sizes"].items() if name != "tiny"]  # tiny: dispatch-bound, not an experiment
  return _table(["training loop", "loop / step alone (goal >= 0.95)", "divergence guard cost"], rows) + (
      "\n\n" + r.files("input_pipeline_cpu.json", "input_pipeline_cpu.png"))


def glance_cpu_efficiency(r: Results) -> str:
  """The experiments' CPU train steps (and beam search) against their goals."""
  d = r.load("cpu_efficiency_cpu.json")
  if d is None:
    return "(not measured yet)"
  rows = []
  for row in d["rows"]:
    if "goal_share_of_peak" in row:
      most = f" (its matmuls alone: at most {row['floor_share_of_peak']:.0%})" if "floor_share_of_peak" in row else ""
      rows.append([f"`{row['name']}` step", _secs(row["step_s"]),
                   f"{row['share_of_peak']:.1%} of the matmul peak{most}", f"{row['goal_share_of_peak']:.0%}"])
    elif row["name"] == "t5_small_bf16" and "t5_small" in d["goals"]:
      base = "t5_small"  # mixed precision, against the same float32 peak (the sweep's gains nothing)
      rows.append([f"`{base}` step in bfloat16 (the goal is float32's)", _secs(row["step_s"]),
                   f"{row['share_of_peak']:.1%} of the (float32) matmul peak", "–"])
    elif row["name"] == "decode/beam2" and "speedup_vs_before" in row:
      rows.append(["beam 2, 500 test dialogues", _secs(row["test_set_s"]),
                   f"{_x(row['speedup_vs_before'])} faster than before", "2×"])
  return _table(["row", "time", "measured", "goal"], rows) + (
      f"\n\n{_machine(d['machine'])}, matmul peak {d['matmul_peak']['flops_per_s'] / 1e9:.0f} GFLOP/s; one run "
      "(shares move by several points between runs on this machine); "
      + r.files("cpu_efficiency_cpu.json", "cpu_efficiency_cpu.png"))


RENDERERS = {
    "default_job": default_job,
    "default_job_snippet": default_job_snippet,
    "default_job_compare": default_job_compare,
    "input_pipeline": input_pipeline,
    "input_pipeline_merge_ab": input_pipeline_merge_ab,
    "grain_pipeline": grain_pipeline,
    "cpu_efficiency": cpu_efficiency,
    "cpu_allocator": cpu_allocator,
    "xla_cpu_flags": xla_cpu_flags,
    "ngram_block": ngram_block,
    "long_dialogsum_pilot": long_dialogsum_pilot,
    "cross_attention_cost": cross_attention_cost,
    "decode_scaling": decode_scaling,
    "decode_scaling_init": decode_scaling_init,
    "vs_hf_torch": vs_hf_torch,
    "vs_hf_torch_bf16": vs_hf_torch_bf16,
    "train_throughput": train_throughput,
    "long_inputs": long_inputs,
    "long_inputs_timing": long_inputs_timing,
    "segment_sweep_history": segment_sweep_history,
    "segment_sweep": segment_sweep,
    "segment_sweep_budget": segment_sweep_budget,
    "glance_segment_sweep_budget": glance_segment_sweep_budget,
    "grid_fig4": grid_fig4,
    "grid_table4": grid_table4,
    "grid_budget": grid_budget,
    "grid_cells": grid_cells,
    "grid_reproduce": grid_reproduce,
    "segment_share": segment_share,
    "alternatives": alternatives,
    "long_dialogsum": long_dialogsum,
    "long_dialogsum_cost": long_dialogsum_cost,
    "glance_long_dialogsum": glance_long_dialogsum,
    "glance_crt_scisumm": glance_crt_scisumm,
    "glance_crt_ptb": glance_crt_ptb,
    "reader": reader,
    "scisumm_corpus": scisumm_corpus,
    "long_dialogsum_data": long_dialogsum_data,
    "reader_span_pilot": reader_span_pilot,
    "reader_dropout_pilot": reader_dropout_pilot,
    "swap_at_init": swap_at_init,
    "crt_ptb_flops": crt_ptb_flops,
    "crt_ptb_short": crt_ptb_short,
    "crt_ptb": crt_ptb,
    "crt_scisumm": crt_scisumm,
    "crt_scisumm_pilot": crt_scisumm_pilot,
    "glance_decode": glance_decode,
    "glance_vs_hf": glance_vs_hf,
    "glance_pipeline": glance_pipeline,
    "glance_cpu_efficiency": glance_cpu_efficiency,
}


# ----- blocks in documents --------------------------------------------------------------------------------

def documents(root: str = REPO) -> list[str]:
  """README.md and docs/*.md under `root`."""
  return [os.path.join(root, "README.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md")))


def render(name: str, results_dir: str = RESULTS, doc_dir: str = REPO) -> str:
  """The content of block `name` for a document in `doc_dir`."""
  if name not in RENDERERS:
    raise KeyError(f"no renderer for block {name!r}; known: {', '.join(RENDERERS)}")
  return RENDERERS[name](Results(results_dir, doc_dir)).rstrip("\n")


def update_text(text: str, results_dir: str = RESULTS, doc_dir: str = REPO) -> tuple[str, list[str]]:
  """(text with every block re-rendered, names of the blocks that changed). An opening marker without
  its closing one, or a block with no renderer, raises ValueError."""
  opened = OPEN.findall(text)
  closed = [m.group(1) for m in BLOCK.finditer(text)]
  if sorted(opened) != sorted(closed):
    missing = sorted(set(opened) - set(closed)) or opened
    raise ValueError(f"block(s) without a matching '<!-- /report:NAME -->' line: {', '.join(missing)}")
  stale = []

  def sub(m):
    name, old = m.group(1), m.group(2)
    try:
      new = render(name, results_dir, doc_dir)
    except KeyError as e:
      raise ValueError(str(e)) from None
    if old.rstrip("\n") != new:
      stale.append(name)
    return f"<!-- report:{name} -->\n{new}\n<!-- /report:{name} -->"

  return BLOCK.sub(sub, text), stale


def stale_blocks(root: str = REPO, results_dir: str = RESULTS) -> list[str]:
  """`path: NAME` for every block under `root` that differs from its rendering."""
  out = []
  for path in documents(root):
    with open(path) as f:
      _, stale = update_text(f.read(), results_dir, os.path.dirname(path))
    out += [f"{os.path.relpath(path, root)}: {name}" for name in stale]
  return out


def rewrite(root: str = REPO, results_dir: str = RESULTS) -> list[str]:
  """Re-render every block under `root` in place; returns `path: NAME` of the blocks that changed."""
  out = []
  for path in documents(root):
    with open(path) as f:
      text = f.read()
    new, stale = update_text(text, results_dir, os.path.dirname(path))
    if new != text:
      with open(path, "w") as f:
        f.write(new)
    out += [f"{os.path.relpath(path, root)}: {name}" for name in stale]
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--check", action="store_true", help="list stale blocks and exit 1 if any; change nothing")
  p.add_argument("--root", default=REPO, help="repository root holding README.md and docs/")
  args = p.parse_args(argv)
  results = os.path.join(args.root, "benchmarks", "results")
  if args.check:
    stale = stale_blocks(args.root, results)
    for s in stale:
      print(f"stale: {s}")
    return 1 if stale else 0
  for s in rewrite(args.root, results):
    print(f"rewrote {s}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
