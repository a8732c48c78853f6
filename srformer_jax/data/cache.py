"""Tokenised splits: a source tokenised once into flat token arrays, cached as .npy files keyed by the
data's content, the tokenizer and the limits (so a copied or moved workdir reuses its cache)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
from typing import Iterable

import numpy as np

from srformer_jax.data.encoding import (CUT_CHARS_PER_TOKEN, CUT_MARGIN_TOKENS, BatchSpec, _encode_all, _truncate,
                                        encode_sources)
from srformer_jax.data.sources import DataError, Stats
from srformer_jax.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)


_TABLE_ARRAYS = ("src_tokens", "src_offsets", "src_len", "tgt_tokens", "tgt_offsets", "tgt_len")


class TokenizedSplit:
  """A source tokenised once: sources truncated to max_source_len and targets to max_target_len
  (EOS kept), flat in token arrays with offsets, plus each example's untruncated lengths (the
  long-target policy and the statistics are applied when an example is drawn)."""

  def __init__(self, arrays: dict[str, np.ndarray], meta: dict):
    self.arrays, self.meta = arrays, meta
    for k in _TABLE_ARRAYS:
      setattr(self, k, arrays[k])
    self.source_stats = Stats.from_dict(meta.get("source_stats"))

  def __len__(self):
    return len(self.src_len)

  def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    return (self.src_tokens[self.src_offsets[i]:self.src_offsets[i + 1]],
            self.tgt_tokens[self.tgt_offsets[i]:self.tgt_offsets[i + 1]])

  @classmethod
  def build(cls, source: Iterable[tuple[str, str]], tok: Tokenizer, max_source_len: int,
            max_target_len: int, prefix: str = "", chunk: int = 512, meta: dict | None = None):
    """Tokenises `source` in chunks (the texts are streamed, never all held at once)."""
    dtype = np.uint16 if tok.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    parts = {k: [] for k in ("src", "tgt")}
    src_len, tgt_len = [], []
    it = iter(source)
    while True:
      pairs = list(itertools.islice(it, chunk))
      if not pairs:
        break
      srcs = encode_sources(tok, [d for d, _ in pairs], max_source_len, prefix)
      tgts = _encode_all(tok, [s for _, s in pairs])
      for src, tgt in zip(srcs, tgts):
        src_len.append(len(src))
        tgt_len.append(len(tgt))
        parts["src"].append(np.asarray(_truncate(src, max_source_len, tok.eos_id), dtype))
        parts["tgt"].append(np.asarray(_truncate(tgt, max_target_len, tok.eos_id), dtype))
    if not src_len:
      raise DataError("empty data source")

    def flat(seqs):
      offsets = np.zeros(len(seqs) + 1, np.int64)
      offsets[1:] = np.cumsum([len(x) for x in seqs])
      return np.concatenate(seqs), offsets

    arrays = {}
    arrays["src_tokens"], arrays["src_offsets"] = flat(parts["src"])
    arrays["tgt_tokens"], arrays["tgt_offsets"] = flat(parts["tgt"])
    arrays["src_len"], arrays["tgt_len"] = np.asarray(src_len, np.int32), np.asarray(tgt_len, np.int32)
    meta = dict(meta or {}, max_source_len=max_source_len, max_target_len=max_target_len, prefix=prefix,
                num_examples=len(src_len))
    stats = getattr(source, "stats", None)
    if stats is not None:
      meta["source_stats"] = dataclasses.asdict(stats)
    return cls(arrays, meta)

  def save(self, directory: str):
    """Writes the arrays and meta.json into `directory` atomically (a temporary sibling, renamed)."""
    tmp = f"{directory}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for k in _TABLE_ARRAYS:
      np.save(os.path.join(tmp, k + ".npy"), self.arrays[k])
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(self.meta, f, indent=2)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)

  @classmethod
  def load(cls, directory: str) -> "TokenizedSplit":
    with open(os.path.join(directory, "meta.json")) as f:
      meta = json.load(f)
    arrays = {k: np.load(os.path.join(directory, k + ".npy"), mmap_mode="r") for k in _TABLE_ARRAYS}
    return cls(arrays, meta)


def cache_key(tok: Tokenizer, spec: "BatchSpec", source_id: str) -> str:
  """Names a cached split by what its tokens depend on: source, tokenizer and limits."""
  ident = json.dumps([source_id, getattr(tok, "fingerprint", type(tok).__name__), tok.vocab_size,
                      spec.max_source_len, spec.max_target_len, spec.prefix, CUT_CHARS_PER_TOKEN,
                      CUT_MARGIN_TOKENS])
  return hashlib.sha256(ident.encode()).hexdigest()[:16]


def tokenized_split(source_fn, tok: Tokenizer, spec: "BatchSpec", cache_dir: str | None = None,
                    source_id: str = "") -> TokenizedSplit:
  """The tokenised split from `cache_dir/<key>` if there, else built from `source_fn()` (and
  saved when `cache_dir` is given)."""
  path = os.path.join(cache_dir, cache_key(tok, spec, source_id)) if cache_dir else None
  if path and os.path.exists(os.path.join(path, "meta.json")):
    return TokenizedSplit.load(path)
  table = TokenizedSplit.build(source_fn(), tok, spec.max_source_len, spec.max_target_len, spec.prefix,
                               meta={"source_id": source_id})
  if path:
    table.save(path)
    log.info("tokenised %d examples into %s", len(table), path)
    table = TokenizedSplit.load(path)
  return table
