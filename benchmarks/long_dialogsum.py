"""Four dialogues in, four summaries out: DialogSum at the paper's input length (k ~ 1024).

SRformer's setting is k = 1024, q = 128 (m = 128 segments at s = 8), where full cross-attention costs
most and a segment holds the smallest share of the input; DialogSum's dialogues are ~150 tokens. This
builds a long-input task from them:

  input    four dialogues in order, joined by SEPARATOR, each cut to at most `cap` tokens of the
           reader's tokenizer (250: four of them and the separators fit max_source_len 1024, as one
           fits the single-dialogue sweep's 256), so every summary can be read from its input;
  target   their four summaries in the same order, joined by SEPARATOR.

  train  `regroupings` seeded regroupings of the training dialogues (regrouping r: a permutation
         of the 12,460 dialogues cut into groups of 4), one after the other in one JSONL, so each
         pass over the file sees every dialogue in `regroupings` different contexts;
  test   500 inputs in which every test dialogue appears 4 times, once at each position: with a
         seeded permutation p of the 500, input j holds p[j], p[j + 125], p[j + 250], p[j + 375]
         (positions 0..3; indices mod 500), references from `summary1`;
  dev    the same from the dev split, references from `summary`.

Written once (`build`) with its statistics (token lengths and percentiles under the reader's
SentencePiece model). `split_positions` cuts an output back into its four summaries, so ROUGE can
be scored per position (the i-th summary against the i-th reference): SRformer's fixed map from
decoder position to segment is what that shows.

  python benchmarks/long_dialogsum.py --data_dir ../shared/data/dialogsum --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PER_INPUT = 4
SEPARATOR = " ### "  # in no DialogSum dialogue or summary (checked by `build`)
FILES = {"train": "dialogsum.train.jsonl", "dev": "dialogsum.dev.jsonl", "test": "dialogsum.test.jsonl"}
REFERENCE = {"train": "summary", "dev": "summary", "test": "summary1"}
OUT = {split: f"long_dialogsum.{split}.jsonl" for split in FILES}
STATS = "long_dialogsum_stats.json"


def read(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def capped(rows: list[dict], sp, cap: int) -> int:
  """Cuts each row's dialogue to `cap` tokens (decoded back to text; rows within it stay as they
  are); returns how many were cut."""
  cut = 0
  for r in rows:
    ids = sp.encode(r["dialogue"])
    if len(ids) > cap:
      r["dialogue"] = sp.decode(ids[:cap])
      cut += 1
  return cut


def joined(rows: list[dict], groups: np.ndarray, summary_key: str) -> list[dict]:
  """groups [n, PER_INPUT] of row indices -> {"dialogue", "summary", "ids"} per group."""
  return [{"dialogue": SEPARATOR.join(rows[i]["dialogue"] for i in g),
           "summary": SEPARATOR.join(rows[i][summary_key] for i in g),
           "ids": [rows[i].get("fname", str(i)) for i in g]} for g in groups]


def train_groups(n: int, regroupings: int, seed: int) -> np.ndarray:
  """[regroupings * (n // 4), 4]: each regrouping a fresh permutation cut into groups of 4."""
  rng = np.random.default_rng(seed)
  usable = n - n % PER_INPUT
  return np.concatenate([rng.permutation(n)[:usable].reshape(-1, PER_INPUT) for _ in range(regroupings)])


def eval_groups(n: int, seed: int) -> np.ndarray:
  """[n, 4]: input j holds p[j + i * n / 4] at position i; every row appears once at each position."""
  if n % PER_INPUT:
    raise ValueError(f"an evaluation split of {n} rows does not split into {PER_INPUT} positions evenly")
  p = np.random.default_rng(seed).permutation(n)
  step = n // PER_INPUT
  return np.stack([p[(np.arange(n) + i * step) % n] for i in range(PER_INPUT)], axis=1)


def split_positions(text: str) -> list[str]:
  """An output or reference cut back into its summaries (PER_INPUT of them; missing ones empty)."""
  parts = [p.strip() for p in text.split(SEPARATOR.strip())]
  return (parts + [""] * PER_INPUT)[:PER_INPUT]


def _percentiles(xs) -> dict:
  xs = np.asarray(xs)
  return {"mean": float(xs.mean()), **{f"p{q}": float(np.percentile(xs, q)) for q in (5, 50, 95, 99)},
          "max": int(xs.max())}


def statistics(examples: dict[str, list[dict]], spm_path: str | None, max_source_len: int,
               max_target_len: int) -> dict:
  """Words and (with a SentencePiece model) tokens per input and target, and how many are cut."""
  out = {}
  sp = None
  if spm_path:
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=spm_path)
  for split, rows in examples.items():
    s = {"examples": len(rows),
         "source_words": _percentiles([len(r["dialogue"].split()) for r in rows]),
         "target_words": _percentiles([len(r["summary"].split()) for r in rows])}
    if sp is not None:
      src = [len(sp.encode(r["dialogue"])) + 1 for r in rows]  # + EOS
      tgt = [len(sp.encode(r["summary"])) + 1 for r in rows]
      s.update(source_tokens=_percentiles(src), target_tokens=_percentiles(tgt),
               source_truncated=float(np.mean(np.asarray(src) > max_source_len)),
               target_truncated=float(np.mean(np.asarray(tgt) > max_target_len)))
    out[split] = s
  return out


def build(data_dir: str, out_dir: str, spm_path: str, regroupings: int = 8, seed: int = 0, cap: int = 250,
          max_source_len: int = 1024, max_target_len: int = 256) -> dict:
  """Writes the three JSONL files and their statistics into out_dir; returns the statistics."""
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=spm_path)
  os.makedirs(out_dir, exist_ok=True)
  examples, cut = {}, {}
  for split, name in FILES.items():
    rows = read(os.path.join(data_dir, name))
    cut[split] = capped(rows, sp, cap)
    for r in rows:
      if SEPARATOR.strip() in r["dialogue"] or SEPARATOR.strip() in r[REFERENCE[split]]:
        raise ValueError(f"{name}: the separator {SEPARATOR.strip()!r} occurs in {r.get('fname')}")
    groups = (train_groups(len(rows), regroupings, seed) if split == "train"
              else eval_groups(len(rows), seed + 1))
    examples[split] = joined(rows, groups, REFERENCE[split])
    with open(os.path.join(out_dir, OUT[split]), "w", encoding="utf-8") as f:
      for e in examples[split]:
        f.write(json.dumps(e, ensure_ascii=False) + "\n")
  stats = {"per_input": PER_INPUT, "separator": SEPARATOR, "regroupings": regroupings, "seed": seed,
           "dialogue_cap_tokens": cap, "dialogues_cut": cut,
           "references": REFERENCE, "max_source_len": max_source_len, "max_target_len": max_target_len,
           "tokenizer": os.path.relpath(spm_path, REPO),
           "splits": statistics(examples, spm_path, max_source_len, max_target_len)}
  with open(os.path.join(out_dir, STATS), "w") as f:
    json.dump(stats, f, indent=2)
  return stats


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data_dir", default=os.path.join(REPO, "..", "shared", "data", "dialogsum"))
  p.add_argument("--out", required=True, help="folder for the JSONL files and their statistics")
  p.add_argument("--regroupings", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--cap", type=int, default=250, help="tokens kept of each dialogue")
  p.add_argument("--spm", default=os.path.join(REPO, "benchmarks", "reader", "cpu_infill", "spm.model"),
                 help="the SentencePiece model the cells use (the reader's): caps and token statistics")
  args = p.parse_args()
  stats = build(args.data_dir, args.out, args.spm, args.regroupings, args.seed, args.cap)
  print(json.dumps({k: v for k, v in stats["splits"].items()}, indent=1))


if __name__ == "__main__":
  main()
