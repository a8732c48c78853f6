"""Summarization data: tfds datasets and local JSONL, tokenised once into fixed-shape batches.

A `Source` is an iterable of (document, summary) text pairs (tfds splits are streamed, never held
as a list). `TokenizedSplit` tokenises a source once (documents cut by characters before
tokenising) into flat token arrays, cached as .npy files keyed by tokenizer and limits.
`BatchIterator` walks a deterministic per-epoch permutation of it; its position (`epoch`, `index`)
and statistics are saved with every checkpoint, so a resumed run reads exactly the batches the
uninterrupted run would have. With several processes each collates only its rows of every global
batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
from typing import Iterable, Iterator, Protocol, Sequence

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

  @classmethod
  def from_dict(cls, d: dict | None) -> "Stats":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: int(v) for k, v in (d or {}).items() if k in names})


class Source(Protocol):
  """(document, summary) pairs; `stats` is complete once the source has been iterated."""
  stats: Stats
  def __iter__(self) -> Iterator[tuple[str, str]]: ...


class ListSource:
  """(document, summary) pairs held in memory."""

  def __init__(self, pairs: Sequence[tuple[str, str]], stats: Stats | None = None):
    self.pairs = list(pairs)
    self.stats = stats or Stats(read=len(self.pairs), kept=len(self.pairs))

  def __len__(self):
    return len(self.pairs)

  def __getitem__(self, i):
    return self.pairs[i]

  def __iter__(self):
    return iter(self.pairs)


def read_jsonl(path: str, document_key: str = "document", summary_key: str = "summary",
               max_examples: int | None = None) -> ListSource:
  """Reads {document, summary} lines. Empty documents and undecodable / malformed lines are skipped
  and counted (with a warning naming the first few line numbers), never fatal."""
  if not os.path.exists(path):
    raise DataError(f"data file {path!r} does not exist (expected a JSONL file with "
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


class TfdsSource:
  """A tfds summarization split streamed example by example (never read whole into memory);
  media_sum: utterances joined with their speakers, one per line."""

  def __init__(self, ds, name: str, split: str, doc_key: str, sum_key: str):
    self.ds, self.name, self.split, self.doc_key, self.sum_key = ds, name, split, doc_key, sum_key
    self.base = name.split("/")[0].split(":")[0]
    self.stats = Stats()

  def __iter__(self):
    import tensorflow_datasets as tfds
    stats = self.stats = Stats()
    for ex in tfds.as_numpy(self.ds):
      stats.read += 1
      if self.base == "media_sum" and "speaker" in ex:
        doc = "\n".join(f"{_feature_text(s)}: {_feature_text(u)}"
                        for s, u in zip(ex["speaker"], ex[self.doc_key]))
      else:
        doc = _feature_text(ex[self.doc_key])
      summ = _feature_text(ex[self.sum_key])
      if not doc.strip() or not summ.strip():
        stats.skipped_empty += 1
        continue
      stats.kept += 1
      yield doc, summ
    if not stats.kept:
      raise DataError(f"tfds {self.name!r} split {self.split!r} holds no usable examples ({stats})")


def read_tfds(name: str, split: str, data_dir: str | None = None, max_examples: int | None = None,
              document_key: str | None = None, summary_key: str | None = None) -> TfdsSource:
  """Opens a tfds summarization split for streaming (see `TfdsSource`)."""
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
  return TfdsSource(ds, name, split, doc_key, sum_key)


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
    with open(model_file, "rb") as f:
      self.fingerprint = "spm-" + hashlib.sha256(f.read()).hexdigest()[:16]

  def encode(self, text):
    return self.sp.encode(text) + [self.eos_id]

  def encode_batch(self, texts):
    return [ids + [self.eos_id] for ids in self.sp.encode(list(texts))]

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
    backend = getattr(self.tok, "backend_tokenizer", None)
    ident = backend.to_str() if backend is not None else f"{name_or_path}|{sorted(self.tok.get_vocab().items())}"
    self.fingerprint = "hf-" + hashlib.sha256(ident.encode()).hexdigest()[:16]

  def encode(self, text):
    return self.tok(text, add_special_tokens=True)["input_ids"]

  def encode_batch(self, texts):
    return self.tok(list(texts), add_special_tokens=True)["input_ids"]

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


# ------------------------------------------------------------------------------------------------
# tokenised splits


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
        raise DataError(f"no usable examples under the current limits ({self.stats})")
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
