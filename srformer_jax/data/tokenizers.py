"""Tokenizers (SentencePiece, Hugging Face) behind one small protocol, and training a SentencePiece
model on a corpus."""

from __future__ import annotations

import hashlib
import os
from typing import Protocol, Sequence

from srformer_jax.data.sources import DataError


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
    try:
      self.sp = spm.SentencePieceProcessor(model_file=model_file)
    except (RuntimeError, OSError, ValueError) as e:  # a damaged or foreign file
      first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
      raise DataError(f"SentencePiece model {model_file!r} cannot be read ({first}): it is damaged or not "
                      f"a SentencePiece model; rebuild it (delete it and rerun train.py) or set "
                      f"config.data.tokenizer to a good one") from None
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
                        seed: int = 0, user_defined_symbols: Sequence[str] = ()) -> str:
  """Trains a unigram SentencePiece model (pad=0, eos=1, unk=2) on texts; returns the .model path.
  `user_defined_symbols` are always one piece each (e.g. span-corruption sentinels)."""
  import sentencepiece as spm
  os.makedirs(os.path.dirname(out_prefix) or ".", exist_ok=True)
  corpus = out_prefix + ".corpus.txt"
  with open(corpus, "w", encoding="utf-8") as f:
    for t in texts:
      f.write(t.replace("\n", " ") + "\n")
  spm.set_random_generator_seed(seed)
  extra = {"user_defined_symbols": list(user_defined_symbols)} if user_defined_symbols else {}
  try:
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=out_prefix, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=2,
        input_sentence_size=200000, shuffle_input_sentence=True, minloglevel=2, **extra)
  except RuntimeError as e:  # a vocabulary the text cannot give: too large, or below its characters
    if "Vocabulary size" not in str(e):
      raise
    why = str(e).split("] ", 1)[-1].splitlines()[0].split(" Increase")[0]
    raise DataError(f"config.data.spm_vocab_size {vocab_size} does not fit the training text (SentencePiece: "
                    f"{why}); change it or train on more text") from None
  finally:
    if os.path.exists(corpus):
      os.remove(corpus)
  return out_prefix + ".model"
