"""Examples to token ids: the batch shape limits (`BatchSpec`), documents cut by characters before
tokenising (tested equal to tokenising them whole), truncation keeping EOS."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from srformer_jax.data.sources import DataError, Stats
from srformer_jax.data.tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  batch_size: int
  max_source_len: int
  max_target_len: int
  prefix: str = ""                # e.g. "summarize: " for T5
  long_target: str = "truncate"   # "truncate" | "skip" | "error"


# Documents are cut to this many characters per allowed token before tokenising: far more than any
# tokenizer's characters per token on text, so the kept tokens are those of the whole document.
CUT_CHARS_PER_TOKEN = 12
# The cut text must give this many tokens beyond max_source_len, or the whole document is tokenised:
# only tokens next to the cut can differ from the whole document's.
CUT_MARGIN_TOKENS = 8


def cut_document(text: str, max_tokens: int) -> str:
  """`text` cut at a whitespace before CUT_CHARS_PER_TOKEN * max_tokens characters (unchanged
  when shorter): tokenising a 5 MB document to keep its first 1024 tokens is wasted work."""
  limit = CUT_CHARS_PER_TOKEN * max_tokens
  if len(text) <= limit:
    return text
  cut = limit
  while cut > limit // 2 and not text[cut].isspace():  # cut between words, never inside one
    cut -= 1
  while cut > 0 and text[cut - 1].isspace():
    cut -= 1
  return text[:cut]


def encode_sources(tok: Tokenizer, docs: Sequence[str], max_len: int, prefix: str = "") -> list[list[int]]:
  """Token ids of `prefix + doc` (untruncated up to at least max_len + margin tokens), tokenising
  documents cut by `cut_document`; identical to tokenising the whole documents, then truncating
  to max_len (a cut that leaves too few tokens falls back to the whole document)."""
  cut = [cut_document(d, max_len) for d in docs]
  enc = _encode_all(tok, [prefix + d for d in cut])
  redo = [i for i, (c, d, e) in enumerate(zip(cut, docs, enc))
          if len(c) < len(d) and len(e) < max_len + CUT_MARGIN_TOKENS]
  for i, e in zip(redo, _encode_all(tok, [prefix + docs[i] for i in redo])):
    enc[i] = e
  return enc


def _encode_all(tok: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
  if not texts:
    return []
  if hasattr(tok, "encode_batch"):
    return [list(e) for e in tok.encode_batch(texts)]
  return [tok.encode(t) for t in texts]


def _truncate(ids: list[int], max_len: int, eos_id: int) -> list[int]:
  return ids if len(ids) <= max_len else ids[:max_len - 1] + [eos_id]


def encode_pair(tok: Tokenizer, doc: str, summ: str, spec: BatchSpec, stats: Stats):
  """Token ids of one example, truncated to the spec (EOS kept), or None if it is skipped."""
  src = encode_sources(tok, [doc], spec.max_source_len, spec.prefix)[0]
  tgt = tok.encode(summ)
  if len(src) > spec.max_source_len:
    src = _truncate(src, spec.max_source_len, tok.eos_id)
    stats.truncated_source += 1
  if len(tgt) > spec.max_target_len:
    if spec.long_target == "skip":
      stats.skipped_too_long += 1
      return None
    if spec.long_target == "error":
      raise DataError(f"summary of {len(tgt)} tokens exceeds max_target_len={spec.max_target_len} "
                      f"(set data.long_target='truncate' or 'skip', or raise max_target_len): "
                      f"{summ[:80]!r}...")
    tgt = _truncate(tgt, spec.max_target_len, tok.eos_id)
    stats.truncated_target += 1
  return src, tgt
