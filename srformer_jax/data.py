"""Summarization data: tfds datasets and local JSONL, tokenised into fixed-shape batches.

A `Source` is a random-access sequence of (document, summary) text pairs. `BatchIterator` walks a
deterministic per-epoch permutation of it; its position (`epoch`, `index`) is saved with every
checkpoint, so a resumed run reads exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Iterator, Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)

# tfds name -> (document feature, summary feature)
TFDS_FIELDS = {
    "cnn_dailymail": ("article", "highlights"),
    "xsum": ("document", "summary"),
    "scientific_papers": ("article", "abstract"),
    "media_sum": ("utt", "summary"),
}


class DataError(ValueError):
  """Unusable input data (missing file, nothing left after filtering, ...)."""


# ------------------------------------------------------------------------------------------------
# text sources


@dataclasses.dataclass
class Stats:
  """What happened to the raw examples (reported, and written next to the run)."""

  read: int = 0
  kept: int = 0
  skipped_empty: int = 0
  skipped_bad_line: int = 0
  skipped_too_long: int = 0
  truncated_source: int = 0
  truncated_target: int = 0

  def merge(self, other: "Stats"):
    for f in dataclasses.fields(self):
      setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class Source(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, i: int) -> tuple[str, str]: ...


class ListSource:
  """(document, summary) pairs held in memory."""

  def __init__(self, pairs: Sequence[tuple[str, str]], stats: Stats | None = None):
    self.pairs = list(pairs)
    self.stats = stats or Stats(read=len(self.pairs), kept=len(self.pairs))

  def __len__(self):
    return len(self.pairs)

  def __getitem__(self, i):
    return self.pairs[i]


def read_jsonl(path: str, document_key: str = "document", summary_key: str = "summary",
               max_examples: int | None = None) -> ListSource:
  """Reads {document, summary} lines. Empty documents and undecodable / malformed lines are skipped
  and counted (with a warning naming the first few line numbers), never fatal."""
  if not os.path.exists(path):
    raise DataError(f"data file {path!r} does not exist (set config.data.path to a JSONL file with "
                    f"'{document_key}' and '{summary_key}' fields per line)")
  stats = Stats()
  pairs = []
  bad: list[int] = []
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      stats.read += 1
      try:
        row = json.loads(raw.decode("utf-8"))
        doc, summ = row[document_key], row[summary_key]
        if not isinstance(doc, str) or not isinstance(summ, str):
          raise TypeError("fields must be strings")
      except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        stats.skipped_bad_line += 1
        bad.append(lineno)
        continue
      if not doc.strip() or not summ.strip():
        stats.skipped_empty += 1
        continue
      pairs.append((doc, summ))
      if max_examples and len(pairs) >= max_examples:
        break
  if bad:
    log.warning("%s: skipped %d unreadable lines (not UTF-8 JSON with %r/%r strings), e.g. lines %s",
                path, len(bad), document_key, summary_key, bad[:5])
  stats.kept = len(pairs)
  if not pairs:
    raise DataError(f"{path!r} holds no usable examples ({stats})")
  return ListSource(pairs, stats)


def _feature_text(value) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray) and value.dtype == object or isinstance(value, (list, tuple)):
    return "\n".join(_feature_text(v) for v in value)
  if isinstance(value, np.ndarray):
    return _feature_text(value.item())
  return str(value)


def read_tfds(name: str, split: str, data_dir: str | None = None, max_examples: int | None = None,
              document_key: str | None = None, summary_key: str | None = None) -> ListSource:
  """Loads a tfds summarization split into memory as text pairs (media_sum: utterances joined
  with their speakers, one per line)."""
  import tensorflow_datasets as tfds
  base = name.split("/")[0].split(":")[0]
  doc_key, sum_key = TFDS_FIELDS.get(base, (document_key, summary_key))
  doc_key, sum_key = document_key or doc_key, summary_key or sum_key
  if not doc_key or not sum_key:
    raise DataError(f"unknown tfds dataset {name!r}: set config.data.document_key / summary_key")
  if max_examples:
    split = f"{split}[:{max_examples}]"
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, try_gcs=False, download=False)
  except Exception as e:
    raise DataError(
        f"could not load tfds {name!r} split {split!r} from data_dir={data_dir!r}: {e}. Prepare it "
        f"first (`tfds build {base}` on a machine with internet) or use config.data.source='jsonl'."
    ) from e
  stats = Stats()
  pairs = []
  for ex in tfds.as_numpy(ds):
    stats.read += 1
    if base == "media_sum" and "speaker" in ex:
      doc = "\n".join(f"{_feature_text(s)}: {_feature_text(u)}" for s, u in zip(ex["speaker"], ex[doc_key]))
    else:
      doc = _feature_text(ex[doc_key])
    summ = _feature_text(ex[sum_key])
    if not doc.strip() or not summ.strip():
      stats.skipped_empty += 1
      continue
    pairs.append((doc, summ))
  stats.kept = len(pairs)
  if not pairs:
    raise DataError(f"tfds {name!r} split {split!r} holds no usable examples ({stats})")
  return ListSource(pairs, stats)


# ------------------------------------------------------------------------------------------------
# tokenizers


class Tokenizer(Protocol):
  pad_id: int
  eos_id: int
  vocab_size: int
  def encode(self, text: str) -> list[int]: ...
  def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
  """A SentencePiece model (pad=0, eos=1, unk=2, as `train_sentencepiece` makes them; like T5)."""

  def __init__(self, model_file: str):
    import sentencepiece as spm
    if not os.path.exists(model_file):
      raise DataError(f"SentencePiece model {model_file!r} does not exist")
    self.sp = spm.SentencePieceProcessor(model_file=model_file)
    self.pad_id, self.eos_id = self.sp.pad_id(), self.sp.eos_id()
    self.vocab_size = self.sp.get_piece_size()

  def encode(self, text):
    return self.sp.encode(text) + [self.eos_id]

  def decode(self, ids):
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self.sp.decode([i for i in ids if i != self.pad_id])


class HFTokenizer:
  """A Hugging Face tokenizer loaded from a local directory (or hub name when online)."""

  def __init__(self, name_or_path: str):
    from transformers import AutoTokenizer
    try:
      self.tok = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as e:
      raise DataError(f"could not load a tokenizer from {name_or_path!r}: {e}") from e
    self.pad_id, self.eos_id = self.tok.pad_token_id, self.tok.eos_token_id
    self.vocab_size = len(self.tok)

  def encode(self, text):
    return self.tok(text, add_special_tokens=True)["input_ids"]

  def decode(self, ids):
    ids = [int(i) for i in ids]
    if self.eos_id in ids[1:]:
      ids = ids[:ids.index(self.eos_id, 1)]
    return self.tok.decode(ids, skip_special_tokens=True).strip()


def load_tokenizer(spec: str) -> Tokenizer:
  """'spm:<file.model>' or 'hf:<dir or hub name>'."""
  kind, _, path = spec.partition(":")
  if kind == "spm":
    return SentencePieceTokenizer(path)
  if kind == "hf":
    return HFTokenizer(path)
  raise DataError(f"tokenizer spec must be 'spm:<file>' or 'hf:<dir>', got {spec!r}")


def train_sentencepiece(texts: Sequence[str], out_prefix: str, vocab_size: int = 2000,
                        seed: int = 0) -> str:
  """Trains a unigram SentencePiece model (pad=0, eos=1, unk=2) on texts; returns the .model path."""
  import sentencepiece as spm
  os.makedirs(os.path.dirname(out_prefix) or ".", exist_ok=True)
  corpus = out_prefix + ".corpus.txt"
  with open(corpus, "w", encoding="utf-8") as f:
    for t in texts:
      f.write(t.replace("\n", " ") + "\n")
  spm.set_random_generator_seed(seed)
  spm.SentencePieceTrainer.train(
      input=corpus, model_prefix=out_prefix, vocab_size=vocab_size, model_type="unigram",
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=2,
      input_sentence_size=200000, shuffle_input_sentence=True, minloglevel=2)
  os.remove(corpus)
  return out_prefix + ".model"


# ------------------------------------------------------------------------------------------------
# batching


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  batch_size: int
  max_source_len: int
  max_target_len: int
  prefix: str = ""                # e.g. "summarize: " for T5
  long_target: str = "truncate"   # "truncate" | "skip" | "error"


def encode_pair(tok: Tokenizer, doc: str, summ: str, spec: BatchSpec, stats: Stats):
  """Token ids of one example, truncated to the spec (EOS kept), or None if it is skipped."""
  src = tok.encode(spec.prefix + doc)
  tgt = tok.encode(summ)
  if len(src) > spec.max_source_len:
    src = src[:spec.max_source_len - 1] + [tok.eos_id]
    stats.truncated_source += 1
  if len(tgt) > spec.max_target_len:
    if spec.long_target == "skip":
      stats.skipped_too_long += 1
      return None
    if spec.long_target == "error":
      raise DataError(f"summary of {len(tgt)} tokens exceeds max_target_len={spec.max_target_len} "
                      f"(set data.long_target='truncate' or 'skip', or raise max_target_len): "
                      f"{summ[:80]!r}...")
    tgt = tgt[:spec.max_target_len - 1] + [tok.eos_id]
    stats.truncated_target += 1
  return src, tgt


def collate(examples, spec: BatchSpec, pad_id: int) -> dict[str, np.ndarray]:
  """Fixed-shape numpy batch: input_ids/attention_mask [B, S]; labels/decoder_mask [B, T]."""
  b = spec.batch_size
  ids = np.full((b, spec.max_source_len), pad_id, np.int32)
  mask = np.zeros((b, spec.max_source_len), np.int32)
  labels = np.full((b, spec.max_target_len), pad_id, np.int32)
  lmask = np.zeros((b, spec.max_target_len), np.int32)
  for i, (src, tgt) in enumerate(examples):
    ids[i, :len(src)], mask[i, :len(src)] = src, 1
    labels[i, :len(tgt)], lmask[i, :len(tgt)] = tgt, 1
  return {"input_ids": ids, "attention_mask": mask, "labels": labels, "label_mask": lmask}


class BatchIterator:
  """Endless batches over shuffled epochs; `state()` / `restore()` give the exact position."""

  def __init__(self, source: Source, tok: Tokenizer, spec: BatchSpec, seed: int = 0,
               shuffle: bool = True):
    if len(source) == 0:
      raise DataError("empty data source")
    self.source, self.tok, self.spec, self.seed, self.shuffle = source, tok, spec, seed, shuffle
    self.epoch, self.index = 0, 0
    self.stats = Stats()
    self._order = self._permutation(0)

  def _permutation(self, epoch):
    n = len(self.source)
    if not self.shuffle:
      return np.arange(n)
    return np.random.default_rng([self.seed, epoch]).permutation(n)

  def state(self) -> dict:
    return {"epoch": int(self.epoch), "index": int(self.index)}

  def restore(self, state: dict):
    self.epoch, self.index = int(state["epoch"]), int(state["index"])
    self._order = self._permutation(self.epoch)

  def _next_example(self):
    if self.index >= len(self._order):
      self.epoch, self.index = self.epoch + 1, 0
      self._order = self._permutation(self.epoch)
    i = int(self._order[self.index])
    self.index += 1
    return self.source[i]

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    examples = []
    tries = 0
    while len(examples) < self.spec.batch_size:
      tries += 1
      if tries > 100 * self.spec.batch_size + len(self.source):
        raise DataError(f"no usable examples under the current limits ({self.stats})")
      doc, summ = self._next_example()
      enc = encode_pair(self.tok, doc, summ, self.spec, self.stats)
      if enc is not None:
        examples.append(enc)
    return collate(examples, self.spec, self.tok.pad_id)


def eval_batches(source: Source, tok: Tokenizer, spec: BatchSpec, max_examples: int | None = None):
  """Yields (batch, references, n_real) over the source in order; the last batch is padded."""
  n = min(max_examples, len(source)) if max_examples else len(source)
  stats = Stats()
  quiet = dataclasses.replace(spec, long_target="truncate")  # references keep their full text
  for start in range(0, n, spec.batch_size):
    items = [source[i] for i in range(start, min(n, start + spec.batch_size))]
    enc = [encode_pair(tok, d, s, quiet, stats) for d, s in items]
    batch = collate(enc + [enc[-1]] * (spec.batch_size - len(enc)), spec, tok.pad_id)
    yield batch, [s for _, s in items], len(items)
