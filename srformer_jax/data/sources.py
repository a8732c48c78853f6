"""Text sources: (document, summary) pairs from tfds (streamed), JSONL files or lists, with the
statistics of what was read, kept and skipped."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Iterator, Protocol, Sequence

import numpy as np

from srformer_jax.errors import DataError

log = logging.getLogger(__name__)


# tfds name -> (document feature, summary feature)
TFDS_FIELDS = {
    "cnn_dailymail": ("article", "highlights"),
    "xsum": ("document", "summary"),
    "scientific_papers": ("article", "abstract"),
    "media_sum": ("utt", "summary"),
}




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

  def __str__(self) -> str:
    """'read 12, kept 0; skipped: 12 empty' (the counts that are not zero)."""
    skipped = [f"{getattr(self, f.name)} {f.name[len('skipped_'):].replace('_', ' ')}"
               for f in dataclasses.fields(self) if f.name.startswith("skipped_") and getattr(self, f.name)]
    truncated = [f"{getattr(self, f.name)} {f.name[len('truncated_'):]}s"
                 for f in dataclasses.fields(self) if f.name.startswith("truncated_") and getattr(self, f.name)]
    return (f"read {self.read}, kept {self.kept}" + (f"; skipped: {', '.join(skipped)}" if skipped else "")
            + (f"; truncated: {', '.join(truncated)}" if truncated else ""))

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
