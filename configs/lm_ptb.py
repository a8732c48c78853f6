"""Shared pieces of the word-level PTB language-model configs (CRT and its baselines).

Every model sees the same windows of `context_len` tokens per stream per step (one segment for the
full-context Transformer, 2 or 4 for the models on L/2, L/4 segments), the same optimiser and steps.
Paths are config fields; the default points at ../shared/data/ptb relative to the working directory,
override with --config.data.data_dir=... (or train_path/valid_path/test_path).
"""

import ml_collections

from configs import base

CONTEXT_LEN = 128  # L: the full-context baseline's segment length
FRACTIONS = {"full": 1, "half": 2, "quarter": 4}


def lm_config(memory: str, fraction: str = "full", context_len: int = CONTEXT_LEN) -> ml_collections.ConfigDict:
  if fraction not in FRACTIONS:
    raise ValueError(f"unknown segment fraction {fraction!r}; known: {list(FRACTIONS)}")
  segment_len = context_len // FRACTIONS[fraction]
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      d_model=256, num_heads=4, d_ff=1024, num_layers=2, segment_len=segment_len, memory=memory,
      memory_input="token", memory_update="sequence", cell="gru", xl_len=0,
      relative_attention_num_buckets=32, relative_attention_max_distance=2 * context_len,
      activation="gelu", dropout_rate=0.3, raf_threshold_init=1.0, raf_leak_init=0.5, dtype="float32",
      kernels="auto"))
  c.data = ml_collections.ConfigDict(dict(
      data_dir="../shared/data/ptb", train_path="", valid_path="", test_path="", eval_batch_size=10))
  c.train = base.train_section(
      batch_size=32, num_steps=4000, learning_rate=1e-3, warmup_steps=200, weight_decay=0.01, grad_clip=0.25,
      seed=0, log_every=50, save_every=500, keep_checkpoints=2)
  c.train.update(dict(  # the language models' own fields
      segments_per_step=context_len // segment_len,  # window = context_len tokens per stream
      truncate_every=0,          # stop the memory's gradient every N segments; 0: only between windows
      eval_every=1000,           # validation perplexity every N steps (0: none)
      patience=0,                # stop after this many validations without a new best (0: never)
      keep_best=True))           # keep the best-validation state in <workdir>/best (evaluated)
  return c
