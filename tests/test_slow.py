"""Heavier end-to-end checks, run with `python -m pytest -m slow` (not in the default suite)."""

import json
import math
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_offline_default_job_end_to_end(tmp_path):
  """The README's main command: trains and evaluates on CPU in under 10 minutes; loss falls."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device, as on a user's machine
  t0 = time.perf_counter()
  subprocess.run([sys.executable, "train.py", "--config=configs/default.py", f"--workdir={tmp_path}"],
                 cwd=REPO, env=env, check=True, timeout=900)
  elapsed = time.perf_counter() - t0
  with open(tmp_path / "metrics.jsonl") as f:
    losses = [json.loads(line)["loss"] for line in f]
  rouge = json.load(open(tmp_path / "rouge.json"))
  print(f"\ndefault job: {elapsed:.0f} s, loss {losses[0]:.2f} -> {losses[-1]:.2f}, ROUGE-1 {rouge['rouge1']:.1f}")
  assert elapsed < 600
  assert losses[-1] < losses[0] - 2.0
  assert rouge["rouge1"] > 5.0
  assert (tmp_path / "loss.png").exists()


@pytest.mark.slow
def test_segment_sweep_quick(tmp_path, shared_dir):
  """benchmarks/segment_sweep.py --quick on DialogSum: three cells train, evaluate and are
  collected into the JSON and plots; a second run reuses the finished cells (resume)."""
  data_dir = os.path.join(shared_dir, "data", "dialogsum")
  if not os.path.isdir(data_dir):
    pytest.skip(f"DialogSum is not in the shared reference data ({data_dir} does not exist)")
  cmd = [sys.executable, "benchmarks/segment_sweep.py", "--quick", f"--data_dir={data_dir}",
         f"--runs={tmp_path / 'runs'}", f"--out={tmp_path / 'out'}",
         "--only=full,srformer_s8_length,recurrent_only_s8_padded", "--workers=2"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  subprocess.run(cmd, cwd=REPO, env=env, check=True, timeout=1200)
  result = json.load(open(tmp_path / "out" / "segment_sweep_quick_scratch.json"))
  assert [c["name"] for c in result["cells"]] == ["full", "srformer_s8_length", "recurrent_only_s8_padded"]
  assert all(c["steps"] == 6 and c["eval_examples"] == 8 for c in result["cells"])
  assert result["cells"][1]["raf"] and result["cells"][0]["raf"] is None
  for c in result["cells"]:  # teacher-forced test loss, own vs swapped documents
    assert math.isfinite(c["test_loss"]) and math.isfinite(c["source_gain"])
    assert 1 <= c["distinct_predictions"] <= c["eval_examples"]
  assert (tmp_path / "out" / "segment_sweep_quick_scratch_fig4.png").exists()
  assert (tmp_path / "out" / "segment_sweep_quick_scratch_ablations.png").exists()
  before = os.path.getmtime(tmp_path / "runs" / "full" / "rouge.json")
  subprocess.run(cmd, cwd=REPO, env=env, check=True, timeout=600)
  assert os.path.getmtime(tmp_path / "runs" / "full" / "rouge.json") == before


@pytest.mark.slow
def test_reader_quick_exports_a_checkpoint_the_sweep_can_start_from(tmp_path, shared_dir):
  """benchmarks/reader.py --quick: the summarization + span-corruption mixture, the curve, and an
  exported HF directory whose tokenizer keeps every sentinel one piece; the export loads with
  another cross-attention (new RAF parameters initialised, the rest equal)."""
  data_dir = os.path.join(shared_dir, "data", "dialogsum")
  if not os.path.isdir(data_dir):
    pytest.skip(f"DialogSum is not in the shared reference data ({data_dir} does not exist)")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  subprocess.run([sys.executable, "benchmarks/reader.py", "--quick", f"--data_dir={data_dir}",
                  f"--workdir={tmp_path / 'run'}", f"--export={tmp_path / 'export'}", f"--out={tmp_path / 'out'}"],
                 cwd=REPO, env=env, check=True, timeout=1200)
  result = json.load(open(tmp_path / "out" / "reader_quick.json"))
  assert [r["step"] for r in result["curve"]] == [3, 6]
  assert all(math.isfinite(r["source_gain"]) and r["distinct_predictions"] >= 1 for r in result["curve"])
  import sentencepiece as spm
  from benchmarks.reader import SENTINELS
  sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "export" / "spm.model"))
  assert all(len(sp.encode(s, out_type=str)) <= 2 and s in sp.encode(s, out_type=str) for s in SENTINELS)
  from srformer_jax import load_hf_checkpoint
  full_cfg, full, _ = load_hf_checkpoint(str(tmp_path / "export"))
  cfg, params, new = load_hf_checkpoint(str(tmp_path / "export"), cross_attention="srformer", segment_size=8)
  assert full_cfg.cross_attention == "full" and cfg.cross_attention == "srformer" and new
  import numpy as np
  from flax import traverse_util
  a, b = traverse_util.flatten_dict(full), traverse_util.flatten_dict(params)
  assert set(a) < set(b) and all(np.array_equal(a[k], b[k]) for k in a)
  # the sweep fine-tunes from it: two seeds of full attention and one segmented cell, intervals
  subprocess.run([sys.executable, "benchmarks/segment_sweep.py", "--quick", f"--data_dir={data_dir}",
                  f"--reader={tmp_path / 'export'}", f"--runs={tmp_path / 'runs'}", f"--out={tmp_path / 'out'}",
                  "--only=full,full_seed1,segmented_s8_padded", "--workers=1"], cwd=REPO, env=env, check=True,
                 timeout=1200)
  sweep = json.load(open(tmp_path / "out" / "segment_sweep_quick.json"))
  assert sweep["protocol"] == "fine-tuned from the reader" and sweep["overrides"]["model.init_from"]
  assert [c["name"] for c in sweep["cells"]] == ["full", "segmented_s8_padded", "full_seed1"]  # seed-major
  groups = {g["group"]: g for g in sweep["groups"]}
  assert groups["full"]["seeds"] == [0, 1] and groups["full"]["rouge1"]["n"] == 2
  assert groups["segmented_s8_padded"]["rouge1"]["interval"] == "bootstrap over test examples"
  assert "segmented_below_full" in sweep["verdict"]


@pytest.mark.slow
@pytest.mark.parametrize("script", ["cpu_efficiency", "cpu_allocator", "cross_attention_cost", "decode_scaling", "input_pipeline",
                                    "default_job", "default_job_compare", "long_inputs", "xla_cpu_flags",
                                    "train_throughput", "vs_hf_torch"])
def test_benchmark_quick(tmp_path, script):
  """Each benchmark's --quick mode runs against the current library and writes its JSON (the
  numbers are not checked: they are measurements, not assertions)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  subprocess.run([sys.executable, f"benchmarks/{script}.py", "--quick", "--repeats=1", f"--out={tmp_path}"],
                 cwd=REPO, env=env, check=True, timeout=1800)
  outputs = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
  assert outputs, f"{script} wrote no JSON"
  for f in outputs:
    with open(tmp_path / f) as fh:
      assert json.load(fh)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "srformer"])
def test_model_learns_to_read_its_source_on_a_copy_task(kind):
  """A tiny T5 trained to copy random tokens (where the input is the only information) learns to
  use it: the teacher-forced loss with the right inputs falls well below the loss with another
  example's inputs (diagnostics.source_reliance). Guards against a cross-attention or encoder path
  that gets no learning signal, which the DialogSum sweep's small budget could not tell apart."""
  import jax
  import numpy as np
  import optax
  from srformer_jax import ModelConfig, build_model, sharding
  from srformer_jax.diagnostics import source_reliance
  from srformer_jax.train_lib import Trainer
  length, vocab, steps = 32, 40, 300
  config = ModelConfig(arch="t5", vocab_size=vocab, d_model=64, num_heads=4, d_kv=16, d_ff=256, num_encoder_layers=2,
                       num_decoder_layers=2, relative_attention_num_buckets=16,
                       relative_attention_max_distance=64, dropout_rate=0.0, cross_attention=kind,
                       segment_size=8, gen_len=length)
  model = build_model(config)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 30, steps)
  trainer = Trainer(model, optax.adamw(schedule), schedule, sharding.make_mesh((1, 1, 1)))
  state = trainer.init_state(jax.random.key(0))
  rng = np.random.default_rng(0)

  def batch(size):
    x = rng.integers(3, vocab, (size, length)).astype(np.int32)
    ones = np.ones((size, length), np.int32)
    return {"input_ids": x, "attention_mask": ones, "labels": x.copy(), "label_mask": ones}

  for i in range(steps):
    state, _ = trainer.step(state, batch(32), jax.random.key(i))
  out = source_reliance(model, state.params, [(batch(64), 64)])
  assert out["source_gain"] > 0.2, out


@pytest.mark.slow
def test_kernel_forms_quick(tmp_path):
  """benchmarks/kernel_forms.py --quick: both forms of every row timed, ratios written."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "benchmarks/kernel_forms.py", "--quick", "--repeats", "1", "--out",
                        str(tmp_path)], cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.load(open(tmp_path / "kernel_forms_cpu.json"))["rows"]
  assert {(r["kind"], r["form"]) for r in rows} == {(k, f) for k in ("full", "srformer") for f in ("cpu", "xla")}
  assert all(r["train_xla_over_cpu"] > 0 and r["decode_xla_over_cpu"] > 0 for r in rows)
