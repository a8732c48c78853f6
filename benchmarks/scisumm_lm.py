"""Long documents as a language-modelling stream: the ScisummNet / CL-SciSumm ACL papers, word level.

WordPTB's sentences carry little context past ~128 words, so a memory has little to carry there.
These are ~1,000 whole ACL papers (median ~3,800 words), so context from thousands of words back
is there to use. The corpus is written in WordPTB's layout (one line a unit, the reader appends
`<eos>` to each line), with one *document* a line: `<eos>` is the end-of-document token, and a
document is read whole and in order.

Tokenisation (documented, deterministic): the article text, lower-cased; words are maximal runs of
letters with an optional apostrophe part (`don't`, `model's`); a run of digits (with inner `.` or
`,`) becomes `N`, as in WordPTB; other characters (punctuation, brackets, math) are dropped, as
WordPTB has none. Vocabulary: the `vocab_size` most frequent words of the train split (ties by
first appearance), every other word `<unk>`. Split by document, seeded: `valid_docs` and `test_docs`
documents (~5% each) for valid and test, the rest (~90%) for train; documents under `min_words`
words (a few articles are empty in the source) are left out.

  python benchmarks/scisumm_lm.py --out DIR     # DIR/scisumm.{train,valid,test}.txt + scisumm_stats.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(REPO, "..", "shared", "data", "scisummnet", "scisummnet_clscisumm_fulltext.jsonl")
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
PATTERN = "scisumm.{split}.txt"
STATS = "scisumm_stats.json"
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+(?:[.,][0-9]+)*")


def tokenize(text: str) -> list[str]:
  """Lower-cased words; numbers as `N`; everything else dropped (see the module docstring)."""
  return ["N" if w[0].isdigit() else w for w in _WORD.findall(text.lower())]


def split_documents(ids: list[str], seed: int, valid_docs: int, test_docs: int) -> dict[str, list[str]]:
  """Document ids per split: a seeded permutation, the first `valid_docs` valid, the next test."""
  order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
  return {"valid": sorted(order[:valid_docs]), "test": sorted(order[valid_docs:valid_docs + test_docs]),
          "train": sorted(order[valid_docs + test_docs:])}


def vocabulary(train_docs: list[list[str]], size: int) -> list[str]:
  counts = collections.Counter(w for d in train_docs for w in d)
  first = {}
  for d in train_docs:
    for w in d:
      first.setdefault(w, len(first))
  return sorted(counts, key=lambda w: (-counts[w], first[w]))[:size]


def build(out_dir: str, source: str = SOURCE, seed: int = 0, valid_docs: int = 50, test_docs: int = 50,
          vocab_size: int = 10000, min_words: int = 500) -> dict:
  """Writes the three split files and their statistics; returns the statistics."""
  with open(source, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f if line.strip()]
  docs = {r["id"]: tokenize(r.get("article") or "") for r in rows}
  kept = [i for i in sorted(docs) if len(docs[i]) >= min_words]
  splits = split_documents(kept, seed, valid_docs, test_docs)
  vocab = set(vocabulary([docs[i] for i in splits["train"]], vocab_size))
  os.makedirs(out_dir, exist_ok=True)
  stats = {"source": os.path.relpath(source, REPO), "seed": seed, "vocab_size": vocab_size + 1,  # + <unk>
           "min_words": min_words, "documents_left_out": len(docs) - len(kept), "tokenisation": tokenize.__doc__,
           "splits": {}, "documents": splits}
  for split in SPLITS:
    lengths, unk = [], 0
    with open(os.path.join(out_dir, PATTERN.format(split=split)), "w", encoding="utf-8") as f:
      for i in splits[split]:  # sorted ids: an order that does not depend on the permutation
        words = [w if w in vocab else UNK for w in docs[i]]
        unk += sum(w == UNK for w in words)
        lengths.append(len(words) + 1)  # + the end-of-document token
        f.write(" ".join(words) + "\n")
    lengths = np.asarray(lengths)
    stats["splits"][split] = {
        "documents": len(lengths), "tokens": int(lengths.sum()), "unk_rate": unk / max(int(lengths.sum()), 1),
        "doc_tokens": {"mean": float(lengths.mean()), **{f"p{q}": float(np.percentile(lengths, q))
                                                         for q in (5, 50, 95)}, "max": int(lengths.max())},
        "tokens_past_512_in_doc": float(np.maximum(lengths - 512, 0).sum() / lengths.sum())}
  with open(os.path.join(out_dir, STATS), "w") as f:
    json.dump(stats, f, indent=2)
  return stats


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--source", default=SOURCE)
  p.add_argument("--out", required=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--vocab_size", type=int, default=10000)
  args = p.parse_args()
  stats = build(args.out, args.source, args.seed, vocab_size=args.vocab_size)
  print(json.dumps({k: v for k, v in stats.items() if k != "documents"}, indent=1))


if __name__ == "__main__":
  sys.exit(main())
