"""Evaluation: generate summaries for an eval split and score them with ROUGE (rouge-score).

With several processes each feeds its rows of every decode batch and the generated token ids are
gathered (process_allgather); process 0 writes predictions.jsonl and rouge.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re

import jax
import numpy as np

from srformer_jax import data, processes, run_setup, runfiles, sharding, validation
from srformer_jax.decoding import DecodeConfig, compile_generate
from srformer_jax.errors import DataError

log = logging.getLogger(__name__)
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENT = re.compile(r"(?<=[.!?])\s+")


def sentences_per_line(text: str) -> str:
  """rougeLsum scores sentence by sentence and expects one per line (no nltk download needed)."""
  return "\n".join(s.strip() for s in _SENT.split(text.strip()) if s.strip())


def rouge(predictions, references) -> dict[str, float]:
  """Mean F-measure x100 of ROUGE-1/2/L/Lsum with Porter stemming (the summarization convention)."""
  from rouge_score import rouge_scorer
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
  totals = {k: 0.0 for k in ROUGE_TYPES}
  for pred, ref in zip(predictions, references):
    s = scorer.score(sentences_per_line(ref), sentences_per_line(pred))
    for k in ROUGE_TYPES:
      totals[k] += s[k].fmeasure
  n = max(len(predictions), 1)
  return {k: 100.0 * v / n for k, v in totals.items()}


def decode_config(cfg, tok=None) -> DecodeConfig:
  """The run config's generation settings; `tok` turns config.decode.ngram_scope_separator (text)
  into the ids that scope the n-gram ban."""
  d = cfg.decode
  sep = d.get("ngram_scope_separator", "")
  if sep and tok is None:
    raise ValueError("config.decode.ngram_scope_separator is set: pass the run's tokenizer to decode_config")
  return DecodeConfig(max_len=d.max_len or cfg.data.max_target_len, num_beams=d.num_beams,
                      length_penalty=d.length_penalty, no_repeat_ngram_size=d.no_repeat_ngram_size,
                      min_len=d.min_len, early_stopping=d.early_stopping,
                      ngram_scope_ids=separator_ids(tok, sep) if sep else ())


def separator_ids(tok, text: str) -> tuple[int, ...]:
  """The ids `text` becomes between words of a longer text (the tokenizer's special tokens dropped)."""
  special = {tok.eos_id, tok.pad_id} | set(getattr(getattr(tok, "tok", None), "all_special_ids", None) or ())
  ids = tuple(int(i) for i in tok.encode(" " + text.strip()) if i not in special)
  if not ids:
    raise ValueError(f"config.decode.ngram_scope_separator {text!r} is no token of this tokenizer: "
                     f"set it to the text that joins the summaries, or to '' (the whole output)")
  return ids


def check_split(cfg, workdir: str, split_key: str = "eval_split"):
  """Refuses, before any training, an evaluation split with no example (a DataError naming
  config.data.<split_key>), instead of finding it out once training has finished."""
  src = run_setup.load_source(cfg, split_key, workdir)
  if next(iter(src), None) is None:
    raise DataError(f"config.data.{split_key} ({cfg.data[split_key]!r}) holds no examples ({src.stats}): "
                    f"point it at a split with documents to evaluate on, or pass --eval=false")


def evaluate(cfg, workdir: str, split_key: str = "eval_split", out_dir: str | None = None) -> dict:
  """Generates for the eval split, writes predictions.jsonl and rouge.json (into `out_dir`, default
  the run's `workdir`), returns the scores."""
  from tqdm.auto import tqdm
  run_setup.validate_config(cfg)
  processes.init_distributed(cfg)
  model, tok, params = run_setup.load_trained_model(cfg, workdir)
  src = run_setup.load_source(cfg, split_key, workdir)
  spec = run_setup.batch_spec(cfg, cfg.decode.batch_size)
  rows, put = (0, spec.batch_size), None
  if jax.process_count() > 1:
    # every process feeds its rows of a global batch (a multiple of the batch shards)
    batch_sharding = sharding.batch_sharding(run_setup.make_mesh(cfg))
    shards = sharding.batch_shards(batch_sharding.mesh)
    spec = dataclasses.replace(spec, batch_size=-(-spec.batch_size // shards) * shards)
    rows = processes.local_rows(batch_sharding, spec.batch_size)
    put = lambda v: jax.make_array_from_process_local_data(  # noqa: E731
        batch_sharding, v, (spec.batch_size,) + v.shape[1:])
  dc = decode_config(cfg, tok)
  preds, refs = [], []
  bar = tqdm(desc="eval", dynamic_ncols=True, disable=not processes.is_main())
  gen = None
  for batch, references, n in data.eval_batches(src, tok, spec, cfg.data.max_eval_examples, rows):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    validation.id_range(ids, model.config.vocab_size, "input_ids")
    if put is not None:
      ids, mask = put(ids), put(mask)
    if gen is None:  # every batch has this shape (the last one is padded): one compilation
      gen = compile_generate(model, params, ids, mask, dc)
      processes.barrier("eval_generate_compiled")  # see compile_generate
    out = gen(params, ids, mask)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      out = multihost_utils.process_allgather(out, tiled=True)
    out = np.asarray(jax.device_get(out))
    preds += [tok.decode(row) for row in out[:n]]
    refs += references
    bar.update(n)
  bar.close()
  scores = rouge(preds, refs)
  scores.update(num_examples=len(preds), num_beams=dc.num_beams, max_len=dc.max_len,
                cross_attention=model.config.cross_attention, segment_size=model.config.segment_size)
  if processes.is_main():
    out_dir = out_dir or workdir
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, runfiles.PREDICTIONS), "w") as f:
      for p, r in zip(preds, refs):
        f.write(json.dumps({"prediction": p, "reference": r}, ensure_ascii=False) + "\n")
    runfiles.write_json(os.path.join(out_dir, runfiles.ROUGE), scores, indent=2)
    log.info("ROUGE: %s", {k: round(scores[k], 2) for k in ROUGE_TYPES})
  return scores
