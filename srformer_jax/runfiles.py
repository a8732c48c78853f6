"""A run directory's files: their names, and the one way JSON is written into it.

Every file a run writes (training, evaluation, the language-model runs) is named here once, so a
tool that reads runs (`api.load_run`, the benchmarks) and the code that writes them cannot drift.
JSON is written atomically (a temporary file, renamed: a kill leaves the old file or the new one)
and, in a multi-process run, by process 0 only.
"""

from __future__ import annotations

import json
import os

CHECKPOINTS = "checkpoints"        # orbax checkpoints of the train state (`checkpoint.Checkpointer`)
MODEL_CONFIG = "model_config.json"  # the model's ModelConfig / CRTConfig, as dataclasses.asdict
RUN_CONFIG = "run_config.json"      # the run's whole ml_collections config, written at train start
METRICS = "metrics.jsonl"           # one strict-JSON line per logged step
TENSORBOARD = "tb"
LOSS_PLOT = "loss.png"
DATA_STATS = "data_stats.json"      # what the data pipeline kept, cut and skipped
PREDICTIONS = "predictions.jsonl"   # evaluation: one {"prediction", "reference"} a line
ROUGE = "rouge.json"
SPM_DIR = "spm"                     # a tokenizer trained by the run (data.tokenizer = "train_spm")
TOKENIZED = "tokenized"             # the cached tokenised training split
CORPUS = "corpus"                   # the docstring corpus of the offline default
BEST_DIR = "best"                   # language models: the best-validation state ...
BEST = "best.json"                  # ... and its step and perplexity (written after the state)
STOPPED = "stopped.json"            # early stopping: where and why
EVAL_RESULTS = "eval_results.json"  # language models: valid/test perplexity
VOCAB = "vocab.txt"                 # language models: the vocabulary, one word a line


def is_main() -> bool:
  import jax
  return jax.process_index() == 0


def write_json(path: str, obj, all_processes: bool = False, **kw):
  """Writes JSON atomically, from process 0 only unless `all_processes`. Non-finite floats are an
  error (strict JSON), as everywhere in a run directory."""
  if not all_processes and not is_main():
    return
  kw.setdefault("allow_nan", False)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, **kw)
  os.replace(tmp, path)


def read_json(path: str):
  """The parsed file, or None when it does not exist."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
