"""CPU efficiency of every experiment's train step, against the machine's matmul peak, in one process.

Every result this project trains on a CPU is bought with step time, so this is the budget of every
experiment. Rows (the experiments' own shapes, dropout as they use it):

  sweep/<kind>      the segment sweep's small T5 (d 128, 2+2 layers, vocab 4000, batch 16, k 256,
                    q 64, dropout 0.1): full, segmented, xl and srformer at s = 8, and srformer with
                    the length schedule (ragged DialogSum-like lengths)
  crt/<model>       the WordPTB protocol's LM (d 128, 2 layers, L 64, batch 32, dropout 0.1): full
                    context, segmented L/4, CRT L/4, XL L/2
  t5_small          T5-small, full attention, batch 4, k 512, q 128, dropout 0.1
  <row>_xla_dense_grad   the same step with XLA's own gradient of every dense layer (lax.dot_general
                    instead of layers.dense_dot_general): the code before that change, in the same run
  <row>_bf16        the same step with bfloat16 compute (float32 parameters)

Per row: median step time, tokens/s, XLA-counted flops of the compiled step, their share of the
1024x1024 float32 matmul's FLOP/s in the same process (the fastest of 20 calls, before and after the rows: the faster; and the bfloat16 one's), and where the time goes,
measured by ablation: forward alone, forward + backward, the whole step, and the step without
dropout (so backward = fwd_bwd - fwd, optimizer and guard = step - fwd_bwd, dropout = step -
step_without_dropout), and by a profile of three steps (`profile_summary`: each XLA op's own time
by kind of op, the backward pass's share, the top ops), and its matmuls alone (`matmul_floor`: every
dot of the compiled step timed on its own at its shapes and summed, what the step's products cost alone, with
the share of the peak the step would reach if nothing else took time). The share uses the flops of the reference step (the first recorded run for
these shapes, `cpu_efficiency_reference_flops.json`), so a faster step raises it and a rewrite that
computes less cannot lower it. Also the sweep model's beam search (beam 2 and 4, batch 50, k 256,
64 new tokens): seconds for the sweep's 500 test dialogues.

Measure on an idle machine (nothing else running): the JSON records the load average.

  python benchmarks/cpu_efficiency.py                 # ~20 min on a 2-core CPU
  python benchmarks/cpu_efficiency.py --quick         # smoke test (tiny shapes)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

SWEEP = dict(d_model=128, num_heads=4, d_kv=32, d_ff=512, layers=2, vocab=4000, batch=16, k=256, q=64)
CRT = dict(d_model=128, num_heads=4, d_ff=512, layers=2, vocab=10000, batch=32, context=64)
T5S = dict(batch=4, k=512, q=128)
QUICK = dict(sweep=dict(SWEEP, d_model=32, num_heads=2, d_kv=16, d_ff=64, layers=1, vocab=300, batch=2, k=32,
                        q=8),
             crt=dict(CRT, d_model=32, num_heads=2, d_ff=64, layers=1, vocab=300, batch=2, context=16),
             t5=dict(batch=1, k=32, q=8))
GOALS = {"sweep/full": 0.5, "sweep/srformer_s8": 0.5, "t5_small": 0.6}
REFERENCE_FILE = "cpu_efficiency_reference_flops.json"
BF16 = "_bf16"  # suffix of the rows run with bfloat16 compute (ModelConfig.dtype; params stay float32)
XLA_GRAD = "_xla_dense_grad"  # suffix of the rows run with XLA's own gradient of every dense layer (ablation)


def _base(name: str) -> str:
  """The row whose step a variant row computes (same reference flops)."""
  for suffix in (BF16, XLA_GRAD):
    name = name.removesuffix(suffix)
  return name


@contextlib.contextmanager
def _dense_grad(name: str):
  """For an `_xla_dense_grad` row: every dense layer built inside uses `lax.dot_general` and JAX's
  own gradient instead of `layers.dense_dot_general` (the code before that change, side by side)."""
  import jax
  from srformer_jax import layers
  keep = layers.dense_dot_general
  if name.endswith(XLA_GRAD):
    layers.dense_dot_general = jax.lax.dot_general  # looked up by layers.dense when a model is set up
  try:
    yield
  finally:
    layers.dense_dot_general = keep


def matmul_peak(jax, repeats: int, n: int = 1024) -> dict:
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  t = common.time_fn(lambda: f(a, a), max(repeats, 20))
  b = a.astype(jnp.bfloat16)  # bfloat16 inputs, float32 accumulation (AMX / AVX512-BF16 where the CPU has it)
  g = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  tb = common.time_fn(lambda: g(b, b), max(repeats, 20))
  # the fastest call: a peak is the best rate (the machine's interruptions only slow a call down; a
  # median of 20 moved between 289 and 369 GFLOP/s in runs whose steps took the same time)
  return {"n": n, "median_s": t["median_s"], "min_s": t["min_s"], "flops_per_s": 2.0 * n ** 3 / t["min_s"],
          "bf16_median_s": tb["median_s"], "bf16_min_s": tb["min_s"], "bf16_flops_per_s": 2.0 * n ** 3 / tb["min_s"]}


def _flops(compiled) -> float:
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  return float(ca.get("flops", 0.0))


def _time_compiled(fn, args, repeats: int) -> dict:
  import jax
  compiled = jax.jit(fn).lower(*args).compile()
  t = common.time_fn(lambda: compiled(*args), repeats)
  return {"median_s": t["median_s"], "flops": _flops(compiled)}


_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\(")
_CONTAINERS = ("while", "conditional", "call")


def _hlo_index(hlo_text: str) -> dict:
  """HLO instruction name -> (opcode, opcodes inside its fused computation, op_name of its metadata)."""
  comps, instrs, comp = {}, {}, None
  for line in hlo_text.splitlines():
    if line.startswith("%") or line.startswith("ENTRY") or re.match(r"^[\w.\-]+ \(", line):
      comp = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
      comps[comp] = []
      continue
    m = _INSTR.match(line)
    if not m or comp is None:
      continue
    name, opcode = m.groups()
    comps[comp].append(opcode)
    called = re.search(r"calls=%?([\w.\-]+)", line)
    op_name = re.search(r'op_name="([^"]*)"', line)
    instrs[name] = (opcode, called.group(1) if called else None, op_name.group(1) if op_name else "")
  return {n: (op, tuple(comps.get(c, ())) if c else (), on) for n, (op, c, on) in instrs.items()}


def _category(opcode: str, body: tuple, op_name: str) -> str:
  if opcode in _CONTAINERS:
    return "loop control"  # a while loop's own time: its body's ops are counted on their own
  ops = set(body) | {opcode}
  if ops & {"dot", "convolution"} or opcode == "custom-call" and "matmul" in op_name:
    return "matmul"
  if "random_bits" in op_name or "threefry" in op_name or "rng-bit-generator" in ops:
    return "dropout rng"
  if ops & {"scatter", "gather", "dynamic-slice", "dynamic-update-slice"}:
    return "gather/scatter/slice"
  if ops <= {"copy", "transpose", "bitcast", "parameter", "fusion"}:
    return "copy/transpose"
  return "reduce" if "reduce" in ops else "elementwise"


def profile_summary(call, hlo_text: str, steps: int = 3, top: int = 12) -> dict:
  """Where a compiled step's time goes, from a profiler trace of `steps` calls of `call()`.

  Each XLA op's self time (its duration less the ops nested in it, so a scan's while loop counts
  only its own overhead) per step, summed over the CPU threads that ran it; `top` ops by time with
  their kind (matmul, elementwise, reduce, ...), whether JAX's op_name marks them as part of the
  backward pass (`transpose(...)`), and the share of each kind.
  """
  import glob
  import tempfile

  import jax
  from jax.profiler import ProfileData
  common.block(call())
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      for _ in range(steps):
        common.block(call())
    data = ProfileData.from_file(glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)[0])
  index = _hlo_index(hlo_text)
  self_ns: dict = {}
  for plane in data.planes:
    if plane.name != "/host:CPU":
      continue
    for line in plane.lines:
      events = sorted(((e.start_ns, e.duration_ns, dict(e.stats).get("hlo_op")) for e in line.events),
                      key=lambda e: (e[0], -e[1]))
      stack = []  # [end_ns, hlo op name or None] of the events enclosing the current one
      for start, dur, name in events:
        while stack and stack[-1][0] <= start:
          stack.pop()
        if name is not None:
          self_ns[name] = self_ns.get(name, 0.0) + dur
          if stack and stack[-1][1] is not None:  # nested in an op (a while loop's body): not its own time
            self_ns[stack[-1][1]] -= dur
        stack.append([start + dur, name if name is not None else (stack[-1][1] if stack else None)])
  total = sum(self_ns.values())
  kinds: dict = {}
  rows = []
  for name, ns in sorted(self_ns.items(), key=lambda kv: -kv[1]):
    opcode, body, op_name = index.get(name, ("?", (), ""))
    kind = _category(opcode, body, op_name)
    kinds[kind] = kinds.get(kind, 0.0) + ns
    if len(rows) < top:
      rows.append({"op": name, "kind": kind, "backward": "transpose(" in op_name,
                   "ms_per_step": ns / steps / 1e6, "share": ns / total, "op_name": op_name[-160:]})
  backward = sum(ns for n, ns in self_ns.items() if "transpose(" in index.get(n, ("", (), ""))[2])
  return {"op_ms_per_step": total / steps / 1e6, "backward_share": backward / total if total else 0.0,
          "kind_share": {k: v / total for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
          "top_ops": rows}


_DEF = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]")
_DOT = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = (\w+)\[[\d,]*\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)(.*)$")
_HEADER = re.compile(r"^(ENTRY )?%([\w.\-]+) ")  # a computation's first line
_HLO_DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64"}


def _computation_counts(hlo_text: str) -> dict:
  """How many times each computation of an optimized HLO module runs per call of its entry: a while
  loop's body (and what it calls) as often as its known trip count says (once when unknown), a
  conditional's branches never (only one runs: a lower bound), everything else once per call site."""
  import functools
  callers: dict = {}  # callee -> [(caller, factor)]
  comp, entry = None, None
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header:
      comp = header.group(2)
      entry = comp if header.group(1) else entry
      continue
    if comp is None or not line.startswith(" "):
      continue
    trip = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
    for attr, callee in re.findall(r"\b(calls|body|condition|to_apply)=%([\w.\-]+)", line):
      factor = int(trip.group(1)) if trip and attr == "body" else 1
      callers.setdefault(callee, []).append((comp, factor))

  @functools.lru_cache(maxsize=None)
  def count(name: str) -> int:
    return 1 if name == entry else sum(count(c) * f for c, f in callers.get(name, ()))
  return {name: count(name) for name in set(callers) | {entry}}


def hlo_dots(hlo_text: str) -> list[dict]:
  """Every dot instruction of an optimized HLO module (top level, inside fusions and loop bodies):
  its operands' dtypes and shapes, its result dtype, its dimension numbers and how many times it
  runs per call (`_computation_counts`)."""
  counts = _computation_counts(hlo_text)
  dots, shapes, comp = [], {}, None
  for line in hlo_text.splitlines():
    if not line.startswith(" "):  # a computation's header or closing brace: names are per computation
      header = _HEADER.match(line)
      comp, shapes = (header.group(2) if header else comp), {}
      continue
    m = _DEF.match(line)
    if m:
      shapes[m.group(1)] = (m.group(2), tuple(int(x) for x in m.group(3).split(",") if x))
    d = _DOT.match(line)
    if d and d.group(2) in shapes and d.group(3) in shapes and counts.get(comp, 0) > 0:
      dims = {k: tuple(int(x) for x in v.split(",") if x)
              for k, v in re.findall(r"(\w+_dims)=\{([\d,]*)\}", d.group(4))}
      (ldt, lhs), (rdt, rhs) = shapes[d.group(2)], shapes[d.group(3)]
      dots.append({"lhs": lhs, "rhs": rhs, "dtypes": (ldt, rdt, d.group(1)),
                   "contracting": (dims.get("lhs_contracting_dims", ()), dims.get("rhs_contracting_dims", ())),
                   "batch": (dims.get("lhs_batch_dims", ()), dims.get("rhs_batch_dims", ())),
                   "runs": counts[comp]})
  return dots


def _dot_flops(dot: dict) -> float:
  rhs_free = [n for i, n in enumerate(dot["rhs"]) if i not in dot["contracting"][1] + dot["batch"][1]]
  return 2.0 * math.prod(dot["lhs"]) * math.prod(rhs_free)


def matmul_floor(hlo_text: str, repeats: int, slowest: int = 8) -> dict:
  """The step's matmuls alone: each distinct dot of the compiled step (shapes, dtypes, dimension
  numbers) timed on its own (the fastest of 20 or more calls), times how often the step runs it,
  summed.

  Close to a lower bound on the step for products large enough to run on all cores, as the
  sweep's and T5-small's do (a small one may overlap other work inside the step), less each call's
  own dispatch (~5-12 us here, ~2 ms over a sweep step's 151-169 products). A dot in a loop body
  counts as often as the loop's known trip count (once when XLA does not know it).
  `reference_flops / floor / peak` is then the most of the matmul peak that the step could reach
  if everything but its matmuls took no time.
  """
  import collections

  import jax
  import jax.numpy as jnp
  dots = hlo_dots(hlo_text)
  counts = collections.Counter()
  for d in dots:
    counts[(d["lhs"], d["rhs"], d["dtypes"], d["contracting"], d["batch"])] += d["runs"]
  rows, total, skipped = [], 0.0, 0
  for (lhs, rhs, dtypes, contracting, batch), n in counts.items():
    if any(t not in _HLO_DTYPES for t in dtypes):  # an integer or fp8 product: not timed, counted
      skipped += n
      continue
    ldt, rdt, odt = (jnp.dtype(_HLO_DTYPES[t]) for t in dtypes)
    x = jax.random.normal(jax.random.key(0), lhs, jnp.float32).astype(ldt)
    y = jax.random.normal(jax.random.key(1), rhs, jnp.float32).astype(rdt)
    f = jax.jit(lambda x, y, dn=(contracting, batch), odt=odt: jax.lax.dot_general(
        x, y, dn, preferred_element_type=odt))
    # the fastest of at least 20 calls: the product's own time, not the
    # machine's interruptions (a median of a few calls ran up to 2x slower on this CPU)
    each = common.time_fn(lambda f=f, x=x, y=y: f(x, y), max(repeats, 20))["min_s"]
    total += n * each
    flops = _dot_flops({"lhs": lhs, "rhs": rhs, "contracting": contracting, "batch": batch})
    rows.append({"lhs": list(lhs), "rhs": list(rhs), "dtypes": list(dtypes),
                 "contracting": [list(c) for c in contracting], "batch": [list(b) for b in batch],
                 "count": n, "ms_each": each * 1e3, "flops_per_s": flops / each})
  rows.sort(key=lambda r: -r["count"] * r["ms_each"])
  return {"s": total, "dots": len(dots), "runs": sum(d["runs"] for d in dots), "distinct": len(counts),
          "runs_not_timed": skipped, "slowest": rows[:slowest]}


def _optimizer(lr: float = 1e-3):
  """The experiments' optimizer (trainer.make_optimizer: clipping + AdamW with a decay mask)."""
  import ml_collections
  from srformer_jax.defaults import train_section
  from srformer_jax.trainer import make_optimizer
  cfg = ml_collections.ConfigDict({"train": train_section(warmup_steps=10, num_steps=1000, learning_rate=lr,
                                                          grad_clip=1.0, weight_decay=0.01)})
  return make_optimizer(cfg)


def seq2seq_step(jax, mc, batch: dict):
  """An encoder-decoder train step as train.py runs it (one device): (trainer, step, holder, sharded
  batch, key); `step()` runs one step on `holder["state"]` and returns its loss (to block on)."""
  from srformer_jax import sharding
  from srformer_jax.model import build_model
  from srformer_jax.train_lib import Trainer
  tx, schedule = _optimizer()
  trainer = Trainer(build_model(mc), tx, schedule, sharding.make_mesh((1, 1, 1)))
  holder = {"state": trainer.init_state(jax.random.key(0))}
  sharded, key = trainer.shard_batch(batch), jax.random.key(1)

  def step():
    holder["state"], m = trainer.step(holder["state"], sharded, key)
    return m["loss"]
  return trainer, step, holder, sharded, key


def seq2seq_row(jax, name: str, mc, batch: dict, repeats: int) -> dict:
  """Step / fwd / fwd+bwd / no-dropout step of an encoder-decoder train step."""
  import dataclasses

  import numpy as np
  from srformer_jax.train_lib import loss_and_metrics

  out = {"name": name}
  for label, config in (("step", mc), ("step_without_dropout", dataclasses.replace(mc, dropout_rate=0.0))):
    trainer, step, holder, sharded, key = seq2seq_step(jax, config, batch)
    compiled = trainer.compile(holder["state"], batch, key)
    out[f"{label}_s"] = common.time_fn(step, repeats)["median_s"]
    if label == "step":
      out["xla_flops"] = _flops(compiled)
      hlo = compiled.as_text()
      out["profile"] = profile_summary(step, hlo)
      out["matmul_floor"] = matmul_floor(hlo, repeats)
      params = holder["state"].params
      fwd = lambda p, b, r: loss_and_metrics(trainer.model, p, b, r, False)[0]  # noqa: E731
      out["fwd_s"] = _time_compiled(fwd, (params, sharded, key), repeats)["median_s"]
      out["fwd_bwd_s"] = _time_compiled(jax.grad(fwd), (params, sharded, key), repeats)["median_s"]
  out["tokens"] = int(np.sum(batch["attention_mask"]) + np.sum(batch["label_mask"]))
  return out


def sweep_config(s: dict, **kw):
  """The segment sweep's model as train.py builds it from configs/dialogsum_sweep.py (gated-GELU
  feed-forward, tied embeddings), with the sizes of `s` and the model fields `kw`."""
  import dataclasses
  from configs import dialogsum_sweep
  from srformer_jax import ModelConfig
  from srformer_jax.run_setup import model_fields
  cfg = dialogsum_sweep.get_config()
  cfg.model.scratch.update(d_model=s["d_model"], num_heads=s["num_heads"], d_kv=s["d_kv"], d_ff=s["d_ff"],
                           num_encoder_layers=s["layers"], num_decoder_layers=s["layers"])
  cfg.data.update(max_source_len=s["k"], max_target_len=s["q"])
  fields = dict(model_fields(cfg), vocab_size=s["vocab"], pad_token_id=0, eos_token_id=1,
                decoder_start_token_id=0)
  return dataclasses.replace(ModelConfig(**dict(cfg.model.scratch), **fields), **kw)


def seq2seq_batch(batch: int, k: int, q: int, vocab: int, ragged: bool, seed: int = 0) -> dict:
  """Random ids; `ragged`: DialogSum-like source lengths (40% to 100% of k) with right padding."""
  import numpy as np
  rng = np.random.default_rng(seed)
  lengths = rng.integers(int(0.4 * k), k + 1, batch) if ragged else np.full(batch, k)
  mask = (np.arange(k)[None] < lengths[:, None]).astype(np.int32)
  return {"input_ids": (rng.integers(2, vocab, (batch, k)) * mask).astype(np.int32), "attention_mask": mask,
          "labels": rng.integers(2, vocab, (batch, q)).astype(np.int32), "label_mask": np.ones((batch, q), np.int32)}


def crt_step(jax, memory: str, fraction: str, overrides: dict, s: dict, dropout: float = 0.1):
  """The WordPTB LM's train step on one window as train_lm.py runs it: (model, trainer, step, holder,
  window, key); `step()` runs one step on `holder["state"]` and returns its loss."""
  import numpy as np
  from configs import lm_ptb
  from srformer_jax import sharding
  from srformer_jax.crt import stream
  from srformer_jax.crt import train as lm_train
  cfg = lm_ptb.lm_config(memory, fraction, context_len=s["context"])
  cfg.model.update(d_model=s["d_model"], num_heads=s["num_heads"], d_ff=s["d_ff"], num_layers=s["layers"],
                   dropout_rate=dropout, **overrides)
  cfg.train.update(batch_size=s["batch"], num_steps=1000, learning_rate=2e-3, warmup_steps=100)
  model = stream.build_model(lm_train.model_config(cfg, s["vocab"]))
  tx, schedule = lm_train.make_optimizer(cfg)
  trainer = lm_train.LMTrainer(model, tx, schedule, sharding.make_mesh((1, 1, 1)), s["batch"], 0)
  holder = {"state": trainer.init_state(jax.random.key(0))}
  x = np.random.default_rng(0).integers(0, s["vocab"], (s["batch"], s["context"])).astype(np.int32)
  key = jax.random.key(1)

  def step():
    holder["state"], m = trainer.step(holder["state"], {"inputs": x, "targets": x, "reset": False}, key)
    return m["loss"]
  return model, trainer, step, holder, x, key


def crt_row(jax, name: str, memory: str, fraction: str, overrides: dict, s: dict, repeats: int) -> dict:
  """Step / fwd / fwd+bwd / no-dropout step of the WordPTB LM train step on one window."""
  from srformer_jax.crt import stream
  from srformer_jax.crt.model import init_carry

  out = {"name": name}
  for label, dropout in (("step", 0.1), ("step_without_dropout", 0.0)):
    model, trainer, step, holder, x, key = crt_step(jax, memory, fraction, overrides, s, dropout)
    out[f"{label}_s"] = common.time_fn(step, repeats)["median_s"]
    if label == "step":
      lowered = trainer.lower(holder["state"], trainer.shard_batch({"inputs": x, "targets": x, "reset": False}), key)
      compiled = lowered.compile()
      out["xla_flops"] = _flops(compiled)
      hlo = compiled.as_text()
      out["profile"] = profile_summary(step, hlo)
      out["matmul_floor"] = matmul_floor(hlo, repeats)
      carry = init_carry(model.config, s["batch"])
      params = holder["state"].params

      def fwd(p, xs, r):
        ce, _ = stream.scan_segments(model, p, xs, carry, xs, deterministic=False, rng=r)
        return ce.mean()

      out["fwd_s"] = _time_compiled(fwd, (params, x, key), repeats)["median_s"]
      out["fwd_bwd_s"] = _time_compiled(jax.grad(fwd), (params, x, key), repeats)["median_s"]
  out["tokens"] = s["batch"] * s["context"]
  return out


def decode_fn(jax, num_beams: int, s: dict):
  """The sweep model's beam search on a batch of up to 50 ragged inputs (random weights: every beam
  runs to max_len): (a zero-argument callable returning the outputs, the batch size)."""
  from srformer_jax import DecodeConfig, build_model, generate_jit, init_params
  mc = sweep_config(s, cross_attention="srformer", segment_size=8)
  model = build_model(mc)
  params = init_params(mc, jax.random.key(0))
  batch = min(50, max(s["batch"], 2))
  b = seq2seq_batch(batch, s["k"], s["q"], s["vocab"], ragged=True)
  dc = DecodeConfig(max_len=s["q"], num_beams=num_beams, length_penalty=1.0, no_repeat_ngram_size=3)
  return (lambda: generate_jit(model, params, b["input_ids"], b["attention_mask"], dc)), batch


def decode_row(jax, num_beams: int, s: dict, repeats: int, test_examples: int = 500) -> dict:
  """The sweep model's beam search: time per batch and for the 500 test dialogues."""
  fn, batch = decode_fn(jax, num_beams, s)
  t = common.time_fn(fn, repeats)
  return {"name": f"decode/beam{num_beams}", "batch": batch, "max_len": s["q"], "batch_s": t["median_s"],
          "test_set_s": t["median_s"] * test_examples / batch, "examples_per_s": batch / t["median_s"]}


def t5_small_config(quick: bool, t5: dict):
  """T5-small as the benchmarks build it (dropout 0.1); the quick mode's tiny sweep model instead."""
  from benchmarks import models
  return sweep_config(QUICK["sweep"]) if quick else models.t5_small(dropout_rate=0.1, gen_len=t5["q"])


SWEEP_ROWS = {"sweep/full": dict(cross_attention="full"),
              "sweep/srformer_s8": dict(cross_attention="srformer", segment_size=8)}


def row_step(jax, name: str, quick: bool):
  """A zero-argument callable running one step of the plain row `name` (sweep/full,
  sweep/srformer_s8, crt/crt_L/4, t5_small, decode/beam2) at the full or quick sizes; it returns a
  value to block on."""
  sweep, crt, t5 = (QUICK["sweep"], QUICK["crt"], QUICK["t5"]) if quick else (SWEEP, CRT, T5S)
  if name in SWEEP_ROWS:
    mc = sweep_config(sweep, **SWEEP_ROWS[name])
    return seq2seq_step(jax, mc, seq2seq_batch(sweep["batch"], sweep["k"], sweep["q"], sweep["vocab"], False))[1]
  if name == "t5_small":
    mc = t5_small_config(quick, t5)
    return seq2seq_step(jax, mc, seq2seq_batch(t5["batch"], t5["k"], t5["q"], mc.vocab_size, False))[1]
  if name == "crt/crt_L/4":
    return crt_step(jax, "crt", "quarter", {}, crt)[2]
  if name.startswith("decode/beam"):
    return decode_fn(jax, int(name.removeprefix("decode/beam")), sweep)[0]
  raise ValueError(f"unknown row {name!r}")


def finish(row: dict, peak: float, reference: dict) -> dict:
  # a variant row (bfloat16, XLA's dense gradient) computes its base row's step: the same reference flops
  ref = reference.setdefault(_base(row["name"]), row["xla_flops"])
  row.update(reference_flops=ref, tokens_per_s=row["tokens"] / row["step_s"],
             achieved_flops_per_s=ref / row["step_s"], share_of_peak=ref / row["step_s"] / peak,
             time_split={"forward": row["fwd_s"] / row["step_s"],
                         "backward": (row["fwd_bwd_s"] - row["fwd_s"]) / row["step_s"],
                         "optimizer_and_guard": (row["step_s"] - row["fwd_bwd_s"]) / row["step_s"],
                         "dropout": (row["step_s"] - row["step_without_dropout_s"]) / row["step_s"]})
  if "matmul_floor" in row:  # the most of the peak the step could reach if only its matmuls took time
    row["floor_share_of_peak"] = ref / row["matmul_floor"]["s"] / peak
  if row["name"] in GOALS:
    row["goal_share_of_peak"] = GOALS[row["name"]]
  print(f"{row['name']:<26} step {row['step_s'] * 1e3:8.1f} ms  {row['tokens_per_s']:8.0f} tok/s  "
        f"share {row['share_of_peak']:.2f} (matmuls alone {row.get('floor_share_of_peak', float('nan')):.2f})  fwd {row['time_split']['forward']:.2f} "
        f"bwd {row['time_split']['backward']:.2f} opt {row['time_split']['optimizer_and_guard']:.2f} "
        f"dropout {row['time_split']['dropout']:.2f}", flush=True)
  return row


def plot(rows: list[dict], peak: float, path: str, title: str):
  import numpy as np
  plt = common.plt()
  train = [r for r in rows if "share_of_peak" in r]
  profiled = any("profile" in r for r in train)
  fig, axes = plt.subplots(1, 3 if profiled else 2, figsize=(17 if profiled else 12, 0.45 * len(train) + 3.5))
  ax1, ax2 = axes[:2]
  below = -0.5 / (0.75 * (0.45 * len(train) + 3.5))  # legends under the x labels: ~0.5 inch, in axes units
  y = np.arange(len(train))
  ax1.barh(y, [r["share_of_peak"] for r in train], color="tab:blue")
  for i, r in enumerate(train):
    if "goal_share_of_peak" in r:
      ax1.plot([r["goal_share_of_peak"]] * 2, [i - 0.4, i + 0.4], "r-", lw=2)
    if "floor_share_of_peak" in r:
      ax1.plot([r["floor_share_of_peak"]] * 2, [i - 0.4, i + 0.4], "k:", lw=2)
  ax1.set_yticks(y, [r["name"] for r in train])
  ax1.set_xlabel(f"share of the matmul peak ({peak / 1e9:.0f} GFLOP/s); red: goal;\n"
                 "dotted: the most its matmuls allow (each timed alone)")
  ax1.invert_yaxis()
  parts = ("forward", "backward", "optimizer_and_guard")
  left = np.zeros(len(train))
  for part in parts:
    vals = np.array([max(r["time_split"][part], 0.0) for r in train])
    ax2.barh(y, vals, left=left, label=part)
    left += vals
  ax2.scatter([r["time_split"]["dropout"] for r in train], y, color="k", marker="x", zorder=3,
              label="dropout's cost (step - step without)")
  ax2.set_yticks(y, [""] * len(train))
  ax2.set_xlabel("share of the step time")
  ax2.invert_yaxis()
  ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, below), ncol=2)
  if profiled:  # the profiler's op time by kind of op
    ax3 = axes[2]
    shares = [r.get("profile", {}).get("kind_share", {}) for r in train]
    kinds = sorted({k for sh in shares for k in sh}, key=lambda k: -sum(sh.get(k, 0.0) for sh in shares))
    left = np.zeros(len(train))
    for kind in kinds:
      vals = np.array([sh.get(kind, 0.0) for sh in shares])
      ax3.barh(y, vals, left=left, label=kind)
      left += vals
    ax3.set_yticks(y, [""] * len(train))
    ax3.set_xlabel("share of the profiled op time, by kind of op")
    ax3.invert_yaxis()
    ax3.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, below), ncol=4)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  common.save_figure(fig, path)


def main():
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--only", default="", help="comma-separated row-name prefixes (default: all)")
  args = p.parse_args()
  jax = common.setup_platform(args.platform)
  name = "quick" if args.quick else args.platform
  sweep = QUICK["sweep"] if args.quick else SWEEP
  crt = QUICK["crt"] if args.quick else CRT
  t5 = QUICK["t5"] if args.quick else T5S
  repeats = 2 if args.quick else args.repeats
  want = lambda n: not args.only or any(n.startswith(x) for x in args.only.split(","))  # noqa: E731
  ref_path = os.path.join(args.out, REFERENCE_FILE)
  reference = {}
  if os.path.exists(ref_path):
    with open(ref_path) as f:
      reference = json.load(f).get(name, {})
  load_before = os.getloadavg()
  peak = matmul_peak(jax, repeats)
  print(f"matmul 1024x1024 f32: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s, bf16 inputs: "
        f"{peak['bf16_flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
  rows = []
  for label, kw, ragged in (("sweep/full", SWEEP_ROWS["sweep/full"], False),
                            ("sweep/segmented_s8", dict(cross_attention="segmented", segment_size=8), False),
                            ("sweep/xl_s8", dict(cross_attention="xl", segment_size=8), False),
                            ("sweep/srformer_s8", SWEEP_ROWS["sweep/srformer_s8"], False),
                            ("sweep/srformer_s8_length", dict(cross_attention="srformer", segment_size=8,
                                                              segment_schedule="length"), True),
                            ("sweep/full" + XLA_GRAD, dict(cross_attention="full"), False),
                            ("sweep/srformer_s8" + XLA_GRAD, dict(cross_attention="srformer", segment_size=8), False),
                            ("sweep/full" + BF16, dict(cross_attention="full", dtype="bfloat16"), False),
                            ("sweep/srformer_s8" + BF16, dict(cross_attention="srformer", segment_size=8,
                                                              dtype="bfloat16"), False)):
    if want(label):
      batch = seq2seq_batch(sweep["batch"], sweep["k"], sweep["q"], sweep["vocab"], ragged)
      with _dense_grad(label):
        rows.append(finish(seq2seq_row(jax, label, sweep_config(sweep, **kw), batch, repeats),
                           peak["flops_per_s"], reference))
  for label, memory, fraction, overrides in (("crt/full_L", "none", "full", {}),
                                             ("crt/segmented_L/4", "none", "quarter", {}),
                                             ("crt/crt_L/4", "crt", "quarter", {}),
                                             ("crt/xl_L/2", "xl", "half", {}),
                                             ("crt/crt_L/4" + XLA_GRAD, "crt", "quarter", {}),
                                             ("crt/crt_L/4" + BF16, "crt", "quarter", dict(dtype="bfloat16"))):
    if want(label):
      with _dense_grad(label):
        rows.append(finish(crt_row(jax, label, memory, fraction, overrides, crt, repeats), peak["flops_per_s"],
                           reference))
  import dataclasses
  for label in ("t5_small", "t5_small" + XLA_GRAD, "t5_small" + BF16):
    if want(label):
      mc = t5_small_config(args.quick, t5)
      if label.endswith(BF16):
        mc = dataclasses.replace(mc, dtype="bfloat16")
      batch = seq2seq_batch(t5["batch"], t5["k"], t5["q"], mc.vocab_size, ragged=False)
      with _dense_grad(label):
        rows.append(finish(seq2seq_row(jax, label, mc, batch, min(repeats, 3)), peak["flops_per_s"], reference))
  for beams in (2, 4):
    if want(f"decode/beam{beams}"):
      rows.append(decode_row(jax, beams, sweep, min(repeats, 3)))
      print(f"decode beam {beams}: {rows[-1]['test_set_s']:.0f} s for 500 test dialogues", flush=True)
  # measured again after the rows: the faster of the two is the peak every share is counted against
  end_peak = matmul_peak(jax, repeats)
  peaks = [peak["flops_per_s"], end_peak["flops_per_s"]]
  if end_peak["flops_per_s"] > peak["flops_per_s"]:
    peak = end_peak
  peak["measured_flops_per_s"] = peaks
  for r in rows:
    if "step_s" in r:
      r["share_of_peak"] = r["reference_flops"] / r["step_s"] / peak["flops_per_s"]
      if "matmul_floor" in r:
        r["floor_share_of_peak"] = r["reference_flops"] / r["matmul_floor"]["s"] / peak["flops_per_s"]
  print("matmul peak (start, end): " + ", ".join(f"{p / 1e9:.1f}" for p in peaks) + " GFLOP/s; shares against "
        f"{peak['flops_per_s'] / 1e9:.1f}: " + ", ".join(f"{r['name']} {r['share_of_peak']:.3f}" for r in rows
                                                         if "share_of_peak" in r), flush=True)
  all_refs = {}
  if os.path.exists(ref_path):
    with open(ref_path) as f:
      all_refs = json.load(f)
  all_refs[name] = reference  # the recorded flops, extended by rows measured for the first time
  common.write(args.out, REFERENCE_FILE.removesuffix(".json"), all_refs)
  before_path = os.path.join(args.out, f"cpu_efficiency_{name}_before.json")
  if os.path.exists(before_path):  # the same rows measured with the code before the speed-ups
    with open(before_path) as f:
      before = {r["name"]: r for r in json.load(f)["rows"]}
    for r in rows:
      b = before.get(r["name"])
      if b and "step_s" in r:
        r.update(before_step_s=b["step_s"], speedup_vs_before=b["step_s"] / r["step_s"])
      elif b and "test_set_s" in r:
        r.update(before_test_set_s=b["test_set_s"], speedup_vs_before=b["test_set_s"] / r["test_set_s"])
  kept = []
  out_path = os.path.join(args.out, f"cpu_efficiency_{name}.json")
  if args.only and os.path.exists(out_path):
    # rows not measured this time keep their earlier measurement (and the peak of that run)
    with open(out_path) as f:
      earlier = json.load(f)
    measured = {r["name"] for r in rows}
    for r in earlier["rows"]:
      if r["name"] not in measured:
        r.setdefault("peak_flops_per_s_of_its_run", earlier["matmul_peak"]["flops_per_s"])
        kept.append(r)
    order = [r["name"] for r in earlier["rows"]]
    rows = sorted(rows + kept, key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
  payload = {"machine": common.machine(jax), "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
             "matmul_peak": peak, "shapes": {"sweep": sweep, "crt": crt, "t5_small": t5}, "goals": GOALS,
             "rows": rows, "rows_from_an_earlier_run": [r["name"] for r in kept],
             "note": "share_of_peak = reference_flops / step_s / matmul peak, the peak being the faster of "
                     "two measurements (before and after the rows), each the fastest of 20 calls (runs "
                     "before this field's change took the median); time_split by ablation "
                     "(forward alone, forward+backward, whole step, step without dropout). xla_flops of the "
                     "WordPTB rows count a scanned step's loop body once (XLA's cost analysis); their "
                     "reference_flops count every segment (recorded with the scan unrolled). "
                     "speedup_vs_before: against cpu_efficiency_cpu_before.json (the code before the "
                     "speed-ups, same machine kind). rows_from_an_earlier_run: rows --only did not measure "
                     "this time, kept with their shares against their own run's peak "
                     "(peak_flops_per_s_of_its_run)."}
  common.write(args.out, f"cpu_efficiency_{name}", payload)
  plot(rows, peak["flops_per_s"], os.path.join(args.out, f"cpu_efficiency_{name}.png"),
       f"train steps on {payload['machine']['cpu']} x{payload['machine']['cpu_count']}: XLA flops / step time")


if __name__ == "__main__":
  from srformer_jax import host_malloc
  host_malloc.reexec_with_huge_pages()  # the steps as the experiments run them (cpu_allocator.py: with / without)
  main()
