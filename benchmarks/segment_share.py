"""How much of its input one segment holds, on each task against the paper's: s alone does not say.

SRformer's decoder position t reads segment i = min(m - 1, floor(t m / q)) of the encoder output with
softmax (the `padded` schedule: m = k / s segments of the padded source length k, q the padded
target length). What a segment size means depends on the input's length: s = 64 is 6% of a
1024-token news article but a third of a 200-token dialogue. For each task this counts, per s and
over the test inputs (their real token lengths n <= k, under the task's tokenizer):
  - one segment's share of the input, min(s, n) / n (mean);
  - the share of the input the reference summary's positions read with softmax, over all of them
    (the segments its positions t < its length visit; mean): what a segmented model sees locally.
Tasks: the paper's (CNN/DailyMail articles, T5's SentencePiece with the `summarize: ` prefix,
k = 1024, q = 128, its s = 8, 16, 64; the 250 test articles of the FRANK subset), the grid's
(DialogSum, the reader's tokenizer, k = 256, q = 64), and the long-input grid's (four DialogSum
dialogues, k = 1024, q = 256). Writes `<out>/segment_share.json`. Needs no jax.

  python benchmarks/segment_share.py --shared ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import common  # noqa: E402

READER_SPM = os.path.join(REPO, "benchmarks", "reader", "cpu_infill", "spm.model")


def shares(src_lens: np.ndarray, ref_lens: np.ndarray, k: int, q: int, s: int) -> dict:
  """One segment's share of each input and the share its reference's positions read locally
  (padded schedule), as means over the inputs. Lengths are in tokens, EOS included, cut at k / q."""
  n = np.minimum(src_lens, k)
  t = np.minimum(ref_lens, q)
  m = k // s
  last = np.minimum(m - 1, ((t - 1) * m) // q)  # the last segment the reference's positions visit
  return {"s": s, "m": m, "segment_share": float(np.mean(np.minimum(s, n) / n)),
          "reference_reads_share": float(np.mean(np.minimum(n, (last + 1) * s) / n))}


def lengths(rows: list[dict], doc_key: str, ref_key: str, sp, prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
  src = np.array([len(sp.encode(prefix + r[doc_key])) + 1 for r in rows])  # + EOS
  ref = np.array([len(sp.encode(r[ref_key])) + 1 for r in rows])
  return src, ref


def read(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shared", default=os.path.join(REPO, "..", "shared", "data"),
                 help="the reference data folder (dialogsum/, frank_cnndm_xsum/, t5_tokenizer/)")
  p.add_argument("--out", default=common.RESULTS)
  args = p.parse_args()
  import sentencepiece as spm
  from benchmarks import long_dialogsum
  need = {"cnndm": os.path.join(args.shared, "frank_cnndm_xsum", "frank_cnndm_test_subset.jsonl"),
          "t5": os.path.join(args.shared, "t5_tokenizer", "spiece.model"),
          "dialogsum": os.path.join(args.shared, "dialogsum", "dialogsum.test.jsonl")}
  missing = [path for path in need.values() if not os.path.exists(path)]
  if missing:
    sys.exit(f"missing {', '.join(missing)}: pass --shared, the reference data folder")
  t5 = spm.SentencePieceProcessor(model_file=need["t5"])
  reader = spm.SentencePieceProcessor(model_file=READER_SPM)
  tasks = []

  def add(name, rows, doc_key, ref_key, sp, k, q, sizes, prefix=""):
    src, ref = lengths(rows, doc_key, ref_key, sp, prefix)
    tasks.append({"task": name, "examples": len(rows), "k": k, "q": q,
                  "source_tokens_median": float(np.median(src)), "source_cut_at_k": float(np.mean(src > k)),
                  "reference_tokens_median": float(np.median(ref)),
                  "sizes": [shares(src, ref, k, q, s) for s in sizes]})
    print(json.dumps(tasks[-1]), flush=True)

  add("CNN/DailyMail (the paper's: T5, k 1024, q 128)", read(need["cnndm"]), "document", "summary", t5,
      1024, 128, (8, 16, 64), prefix="summarize: ")
  add("DialogSum (the 1500-step grid: k 256, q 64)", read(need["dialogsum"]), "dialogue", "summary1", reader,
      256, 64, (8, 16, 32, 64))
  with tempfile.TemporaryDirectory() as tmp:
    long_dialogsum.build(os.path.dirname(need["dialogsum"]), tmp, READER_SPM)
    add("four DialogSum dialogues (the long-input grid: k 1024, q 256)",
        read(os.path.join(tmp, long_dialogsum.OUT["test"])), "dialogue", "summary", reader, 1024, 256, (8, 64))
  common.write(args.out, "segment_share", {
      "tasks": tasks,
      "note": "means over each task's test inputs; lengths under the task's tokenizer with EOS, cut at k (source) "
              "and q (reference); padded schedule: position t reads segment min(m - 1, floor(t m / q))"})


if __name__ == "__main__":
  main()
