"""Word-level language-modelling data (WordPTB layout): vocabulary, ids, parallel streams.

A corpus is a directory (or three paths) of whitespace-tokenised text, one sentence a line; each line
end becomes `<eos>`. The vocabulary is built from the train split in order of first appearance (as in
the usual PyTorch word_language_model reader); the PTB files already contain `<unk>`, and a word of
valid/test missing from the vocabulary maps to `<unk>` (an error if the vocabulary has none).

Batching is the usual batchify: the id stream is cut into `batch` contiguous streams [batch, N]
(the tail that does not fill a row is dropped); every step advances all streams by the same window.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from srformer_jax.errors import DataError

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")




def split_paths(data_dir: str, pattern: str = "ptb.{split}.txt") -> dict[str, str]:
  return {s: os.path.join(data_dir, pattern.format(split=s)) for s in SPLITS}


def read_words(path: str) -> list[str]:
  if not os.path.exists(path):
    raise DataError(f"no corpus file at {path} (set config.data.data_dir / the split paths)")
  words = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      words.extend(line.split())
      words.append(EOS)
  return words


@dataclasses.dataclass
class Vocab:
  words: list[str]

  def __post_init__(self):
    self.index = {w: i for i, w in enumerate(self.words)}

  @classmethod
  def build(cls, train_words: list[str]) -> "Vocab":
    return cls(list(dict.fromkeys([EOS] + train_words)))

  def __len__(self):
    return len(self.words)

  def encode(self, words: list[str]) -> np.ndarray:
    unk = self.index.get(UNK)
    if unk is None:
      missing = [w for w in words if w not in self.index]
      if missing:
        raise DataError(f"{len(missing)} words are not in the vocabulary and it has no {UNK}: "
                        f"{missing[:5]}")
    return np.asarray([self.index.get(w, unk) for w in words], np.int32)

  def decode(self, ids) -> list[str]:
    return [self.words[int(i)] for i in ids]


def load_corpus(paths: dict[str, str]) -> tuple[Vocab, dict[str, np.ndarray]]:
  """(vocabulary from train, {split: int32 ids}) for the splits in `paths`."""
  train = read_words(paths["train"])
  vocab = Vocab.build(train)
  ids = {"train": vocab.encode(train)}
  for split in SPLITS[1:]:
    if paths.get(split):
      ids[split] = vocab.encode(read_words(paths[split]))
  return vocab, ids


def batchify(ids: np.ndarray, batch: int) -> np.ndarray:
  """[T] -> [batch, T // batch] contiguous streams."""
  n = len(ids) // batch
  if n < 2:
    raise DataError(f"{len(ids)} tokens are too few for {batch} streams")
  return np.asarray(ids[:n * batch]).reshape(batch, n)


class StreamIterator:
  """Windows of `window` tokens from parallel streams: yields (inputs, targets, reset) with inputs,
  targets [batch, window] (targets shifted by one) and reset=True on the first window of an epoch
  (the memory carried between windows must then start afresh).

  `state()` / `restore()` give the exact position (epoch, offset) for resuming.
  """

  def __init__(self, ids: np.ndarray, batch: int, window: int):
    self.streams = batchify(ids, batch)
    self.window = window
    if self.streams.shape[1] - 1 < window:
      raise DataError(f"streams of {self.streams.shape[1]} tokens are shorter than one window of "
                      f"{window} (+1 target)")
    self.epoch, self.offset = 0, 0

  @property
  def windows_per_epoch(self) -> int:
    return (self.streams.shape[1] - 1) // self.window

  def __iter__(self):
    return self

  def __next__(self):
    if self.offset + self.window + 1 > self.streams.shape[1]:
      self.epoch, self.offset = self.epoch + 1, 0
    o, w = self.offset, self.window
    reset = o == 0
    self.offset += w
    return self.streams[:, o:o + w], self.streams[:, o + 1:o + w + 1], reset

  def state(self) -> dict:
    return {"epoch": self.epoch, "offset": self.offset}

  def restore(self, state: dict):
    self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


def eval_streams(ids: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, targets) [batch, N - 1] covering each stream entirely."""
  s = batchify(ids, batch)
  return s[:, :-1], s[:, 1:]
