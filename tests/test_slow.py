"""Heavier end-to-end checks, run with `python -m pytest -m slow` (not in the default suite)."""

import json
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
