"""Evaluation: generate summaries for an eval split and score them with ROUGE (rouge-score)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re

import jax
import numpy as np

from srformer_jax import checkpoint, data, sharding
from srformer_jax.config import ModelConfig
from srformer_jax.decoding import DecodeConfig, generate_jit
from srformer_jax.model import abstract_params, build_model, logical_param_specs
from srformer_jax import train_lib

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


def decode_config(cfg) -> DecodeConfig:
  d = cfg.decode
  return DecodeConfig(max_len=d.max_len or cfg.data.max_target_len, num_beams=d.num_beams,
                      length_penalty=d.length_penalty, no_repeat_ngram_size=d.no_repeat_ngram_size,
                      min_len=d.min_len, early_stopping=d.get("early_stopping", True))


def load_for_eval(cfg, workdir: str):
  """(model, tokenizer, params): the latest checkpoint in workdir, else the init_from checkpoint."""
  tok = train_lib.build_tokenizer(cfg, workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  cfg_file = os.path.join(workdir, "model_config.json")
  if os.path.exists(cfg_file) and os.path.isdir(ckpt_dir):
    with open(cfg_file) as f:
      model_config = ModelConfig.from_dict(json.load(f))
    # the segment rule of decoding uses the generation length of this config
    model_config = dataclasses.replace(model_config, gen_len=train_lib.model_fields(cfg)["gen_len"])
    mesh = sharding.make_mesh(tuple(cfg.train.mesh_shape))
    shardings = sharding.logical_to_sharding(logical_param_specs(model_config), mesh)
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            abstract_params(model_config), shardings)
    ck = checkpoint.Checkpointer(ckpt_dir)
    if ck.latest_step() is not None:
      params, step = ck.restore_params(abstract)
      log.info("evaluating checkpoint step %d", step)
      ck.close()
      return build_model(model_config), tok, params
  model_config, params, new = train_lib.build_model_config(cfg, tok)
  if params is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir} and no config.model.init_from to evaluate")
  if new:
    log.warning("evaluating with freshly initialised SRformer parameters: %s", new)
  return build_model(model_config), tok, params


def evaluate(cfg, workdir: str, split_key: str = "eval_split") -> dict:
  """Generates for the eval split, writes predictions.jsonl and rouge.json, returns the scores."""
  from tqdm.auto import tqdm
  model, tok, params = load_for_eval(cfg, workdir)
  src = train_lib.load_source(cfg, split_key, workdir)
  spec = train_lib.batch_spec(cfg, cfg.decode.batch_size)
  dc = decode_config(cfg)
  preds, refs = [], []
  n_total = len(src) if not cfg.data.get("max_eval_examples") else min(len(src), cfg.data.max_eval_examples)
  bar = tqdm(total=n_total, desc="eval", dynamic_ncols=True)
  for batch, references, n in data.eval_batches(src, tok, spec, cfg.data.get("max_eval_examples")):
    out = np.asarray(jax.device_get(generate_jit(model, params, batch["input_ids"],
                                                 batch["attention_mask"], dc)))
    preds += [tok.decode(row) for row in out[:n]]
    refs += references
    bar.update(n)
  bar.close()
  scores = rouge(preds, refs)
  scores.update(num_examples=len(preds), num_beams=dc.num_beams, max_len=dc.max_len,
                cross_attention=model.config.cross_attention, segment_size=model.config.segment_size)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "predictions.jsonl"), "w") as f:
    for p, r in zip(preds, refs):
      f.write(json.dumps({"prediction": p, "reference": r}, ensure_ascii=False) + "\n")
  with open(os.path.join(workdir, "rouge.json"), "w") as f:
    json.dump(scores, f, indent=2)
  log.info("ROUGE: %s", {k: round(scores[k], 2) for k in ROUGE_TYPES})
  return scores
