"""Using a trained run: `load_run(workdir)` and `summarize(texts, run=...)`.

A run directory (`train.py --workdir`) holds the checkpoints, the model config
(`model_config.json`), the tokenizer (for `tokenizer="train_spm"`) and, since this module exists,
the full run config (`run_config.json`). `load_run` rebuilds model, params, tokenizer and decode
settings from it; `summarize` tokenizes, batches and decodes texts the way evaluation does.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Any, Iterable, Sequence

import jax
import ml_collections
import numpy as np
from flax import linen as nn

from srformer_jax import data, defaults, runfiles
from srformer_jax import validation as check
from srformer_jax.config import ModelConfig
from srformer_jax.decoding import DecodeConfig, generate_jit


@dataclasses.dataclass
class Run:
  """A trained run, ready to decode."""

  workdir: str
  config: ml_collections.ConfigDict = dataclasses.field(repr=False)  # train.py's --config
  model: nn.Module = dataclasses.field(repr=False)
  params: Any = dataclasses.field(repr=False)
  tokenizer: data.Tokenizer = dataclasses.field(repr=False)
  decode_config: DecodeConfig  # from config.decode (max_len 0: data.max_target_len)

  @property
  def model_config(self) -> ModelConfig:
    return self.model.config


def load_config(config) -> ml_collections.ConfigDict:
  """A run config from a ConfigDict, a `run_config.json`, or a `configs/<name>.py` path."""
  if isinstance(config, ml_collections.ConfigDict):
    return ml_collections.ConfigDict(config.to_dict())  # a copy: load_run may change mesh_shape
  path = os.fspath(config)
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  if path.endswith(".json"):  # a run_config.json, maybe from before fields were added: their defaults
    with open(path) as f:
      return defaults.with_defaults(ml_collections.ConfigDict(json.load(f)))
  if path.endswith(".py"):
    spec = importlib.util.spec_from_file_location("srformer_run_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
  raise ValueError(f"config must be a ConfigDict, a .json file or a configs/*.py file, got {path!r}")


def load_run(workdir: str | os.PathLike, config=None,
             mesh_shape: Sequence[int] | None = None) -> Run:
  """Loads the latest checkpoint of a training run (see `run_setup.load_trained_model`: with no
  checkpoint yet, the config's `model.init_from` HF checkpoint, else FileNotFoundError).

  config: None reads `<workdir>/run_config.json`, which `train_lib.train` writes; a ConfigDict or
    a config file path (.py with get_config(), or .json) is used instead when given (needed for runs
    trained before the run config was saved).
  mesh_shape: overrides config.train.mesh_shape, e.g. (1, 1, 1) to load a run trained on many
    devices onto one.
  """
  from srformer_jax import eval_lib, run_setup  # orbax, optax: imported when a run is loaded
  workdir = os.fspath(workdir)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"run directory {workdir!r} does not exist")
  if config is None:
    saved = os.path.join(workdir, runfiles.RUN_CONFIG)
    if not os.path.exists(saved):
      raise FileNotFoundError(
          f"{workdir!r} has no {runfiles.RUN_CONFIG} (runs trained before it was saved, or not a "
          f"run directory): pass config=, the config it was trained with (a ConfigDict or the path "
          f"of its configs/*.py)")
    config = saved
  cfg = load_config(config)
  if mesh_shape is not None:
    cfg.train.mesh_shape = tuple(mesh_shape)
  model, tok, params = run_setup.load_trained_model(cfg, workdir)
  if tok.vocab_size > model.config.vocab_size:
    raise ValueError(f"the tokenizer has {tok.vocab_size} ids but the model's vocabulary only "
                     f"{model.config.vocab_size}: config.data.tokenizer does not belong to this run")
  return Run(workdir, cfg, model, params, tok, eval_lib.decode_config(cfg, tok))


def _bucket(n: int, batch_size: int) -> int:
  """Rows of the padded batch for n texts: the next power of two, at most batch_size, so a list of
  any length compiles at most log2(batch_size) + 1 shapes."""
  return min(batch_size, 1 << max(n - 1, 0).bit_length())


def summarize(texts: str | Iterable[str], run: Run | str | os.PathLike, batch_size: int | None = None,
              progress: bool | None = None, **decode_overrides) -> list[str] | str:
  """Summaries of `texts` (a list of documents; one string gives one string back).

  run: a `Run` or a run directory (loaded with `load_run`; pass a Run to summarize repeatedly).
  batch_size: texts decoded together (default config.decode.batch_size). Every batch is padded to
    [bucket, data.max_source_len], bucket a power of two <= batch_size, so the jitted decoder
    compiles once per bucket. The length is not bucketed: SRformer's segment rule depends on the
    padded input length, so inputs are padded as in training and evaluation.
  progress: a progress bar on stderr (default: when there is more than one batch).
  decode_overrides: DecodeConfig fields (max_len, num_beams, length_penalty, no_repeat_ngram_size,
    min_len, early_stopping) replacing the run's config.decode settings.

  Texts get the config's prefix and are truncated to data.max_source_len tokens (EOS kept). An
  empty (or whitespace-only) text is a ValueError.
  """
  if isinstance(run, (str, os.PathLike)):
    run = load_run(run)
  if not isinstance(run, Run):
    raise TypeError(f"run must be a Run (from load_run) or a run directory, got {type(run).__name__}")
  if isinstance(texts, str):
    return summarize([texts], run, batch_size, progress, **decode_overrides)[0]
  texts = list(texts)
  for i, t in enumerate(texts):
    if not isinstance(t, str):
      raise TypeError(f"texts[{i}] is a {type(t).__name__}, not a str: pass a list of documents")
    if not t.strip():  # the model would still write a "summary" of nothing
      raise ValueError(f"texts[{i}] is empty (or only whitespace): there is nothing to summarize")
  batch_size = check.integer(run.config.decode.batch_size if batch_size is None else batch_size,
                             "batch_size", 1, " (texts decoded together)")
  fields = {f.name for f in dataclasses.fields(DecodeConfig)}
  unknown = sorted(set(decode_overrides) - fields)
  if unknown:
    raise TypeError(f"summarize() got unknown decode settings {unknown}; valid: {sorted(fields)}")
  dc = dataclasses.replace(run.decode_config, **decode_overrides)
  if not texts:
    return []
  from tqdm.auto import tqdm
  from srformer_jax import run_setup
  tok, model = run.tokenizer, run.model
  spec = dataclasses.replace(run_setup.batch_spec(run.config, batch_size), long_target="truncate")
  stats = data.Stats()
  out: list[str] = []
  show = len(texts) > batch_size if progress is None else progress
  with tqdm(total=len(texts), desc="summarize", disable=not show, dynamic_ncols=True) as bar:
    for start in range(0, len(texts), batch_size):
      chunk = texts[start:start + batch_size]
      rows = _bucket(len(chunk), batch_size)
      enc = [data.encode_pair(tok, t, "", spec, stats) for t in chunk]
      enc += [enc[-1]] * (rows - len(enc))  # fill rows repeat the last text (all real tokens)
      batch = data.collate(enc, dataclasses.replace(spec, batch_size=rows), tok.pad_id)
      ids = np.asarray(jax.device_get(generate_jit(model, run.params, batch["input_ids"],
                                                   batch["attention_mask"], dc)))
      out += [tok.decode(row) for row in ids[:len(chunk)]]
      bar.update(len(chunk))
  return out
