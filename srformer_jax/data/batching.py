"""Fixed-shape batches: `BatchIterator` walks a deterministic per-epoch permutation of a tokenised
split; its position (`epoch`, `index`) and statistics are saved with every checkpoint, so a resumed
run reads exactly the batches the uninterrupted run would have. With several processes each
collates only its rows of every global batch. `eval_batches` streams an evaluation split."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterable, Iterator

import numpy as np

from srformer_jax.data.cache import TokenizedSplit
from srformer_jax.data.encoding import BatchSpec, encode_pair
from srformer_jax.data.sources import DataError, Stats
from srformer_jax.data.tokenizers import Tokenizer


def collate(examples, spec: BatchSpec, pad_id: int, rows: int | None = None) -> dict[str, np.ndarray]:
  """Fixed-shape numpy batch: input_ids/attention_mask [B, S]; labels/decoder_mask [B, T]
  (B = `rows`, default spec.batch_size)."""
  b = spec.batch_size if rows is None else rows
  ids = np.full((b, spec.max_source_len), pad_id, np.int32)
  mask = np.zeros((b, spec.max_source_len), np.int32)
  labels = np.full((b, spec.max_target_len), pad_id, np.int32)
  lmask = np.zeros((b, spec.max_target_len), np.int32)
  for i, (src, tgt) in enumerate(examples):
    ids[i, :len(src)], mask[i, :len(src)] = src, 1
    labels[i, :len(tgt)], lmask[i, :len(tgt)] = tgt, 1
  return {"input_ids": ids, "attention_mask": mask, "labels": labels, "label_mask": lmask}


class BatchIterator:
  """Endless batches over shuffled epochs of a tokenised split; `state()` / `restore()` give the
  exact position and the statistics so far.

  Every process walks the same global batches of spec.batch_size examples; `rows=(start, stop)`
  makes it collate only those rows (its part of the global batch).
  """

  def __init__(self, source, tok: Tokenizer, spec: BatchSpec, seed: int = 0, shuffle: bool = True,
               rows: tuple[int, int] | None = None):
    table = source if isinstance(source, TokenizedSplit) else (
        TokenizedSplit.build(source, tok, spec.max_source_len, spec.max_target_len, spec.prefix)
        if len(source) else None)
    if table is None or len(table) == 0:
      raise DataError("empty data source")
    self.table, self.tok, self.spec, self.seed, self.shuffle = table, tok, spec, seed, shuffle
    self.rows = rows or (0, spec.batch_size)
    self.epoch, self.index = 0, 0
    self.stats = Stats()
    self._order = self._permutation(0)

  def _permutation(self, epoch):
    n = len(self.table)
    if not self.shuffle:
      return np.arange(n)
    return np.random.default_rng([self.seed, epoch]).permutation(n)

  def state(self) -> dict:
    return {"epoch": int(self.epoch), "index": int(self.index), "stats": dataclasses.asdict(self.stats)}

  def restore(self, state: dict):
    self.epoch, self.index = int(state["epoch"]), int(state["index"])
    self.stats = Stats.from_dict(state.get("stats"))
    self._order = self._permutation(self.epoch)

  def _next_index(self) -> int:
    if self.index >= len(self._order):
      self.epoch, self.index = self.epoch + 1, 0
      self._order = self._permutation(self.epoch)
    i = int(self._order[self.index])
    self.index += 1
    return i

  def _accept(self, i: int) -> bool:
    """Applies the long-target policy to example i and counts it."""
    spec, t = self.spec, self.table
    if t.tgt_len[i] > spec.max_target_len:
      if spec.long_target == "skip":
        self.stats.skipped_too_long += 1
        return False
      if spec.long_target == "error":
        raise DataError(f"summary of {int(t.tgt_len[i])} tokens exceeds max_target_len="
                        f"{spec.max_target_len} (set data.long_target='truncate' or 'skip', or raise "
                        f"max_target_len): example {i}")
      self.stats.truncated_target += 1
    if t.src_len[i] > spec.max_source_len:
      self.stats.truncated_source += 1
    return True

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    chosen = []
    tries = 0
    while len(chosen) < self.spec.batch_size:
      tries += 1
      if tries > 100 * self.spec.batch_size + len(self.table):
        raise DataError(f"no usable examples under the current limits (config.data.max_source_len, "
                        f"max_target_len, long_target): {self.stats}")
      i = self._next_index()
      if self._accept(i):
        chosen.append(i)
    start, stop = self.rows
    return collate([self.table.example(i) for i in chosen[start:stop]], self.spec, self.tok.pad_id,
                   rows=stop - start)


def eval_batches(source: Iterable[tuple[str, str]], tok: Tokenizer, spec: BatchSpec,
                 max_examples: int | None = None, rows: tuple[int, int] | None = None):
  """Yields (batch, references, n_real) over the source in order, streamed; the last batch is
  padded. `batch` holds rows [start, stop) of each global batch of spec.batch_size; `references`
  and `n_real` are the global batch's."""
  quiet = dataclasses.replace(spec, long_target="truncate")  # references keep their full text
  start, stop = rows or (0, spec.batch_size)
  it = iter(source)
  if max_examples:
    it = itertools.islice(it, max_examples)
  while True:
    items = list(itertools.islice(it, spec.batch_size))
    if not items:
      return
    items_padded = items + [items[-1]] * (spec.batch_size - len(items))
    mine = items_padded[start:stop]
    enc = [encode_pair(tok, d, s, quiet, Stats()) for d, s in mine]
    yield collate(enc, spec, tok.pad_id, rows=stop - start), [s for _, s in items], len(items)
