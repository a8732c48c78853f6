"""Decoding's n-gram block on DialogSum summaries: finished sweep cells decoded again with each size.

DialogSum's summaries name the speakers `#Person1#` / `#Person2#`, three SentencePiece pieces each
with the reader's tokenizer (`▁#`, `Person`, `1#`), so `no_repeat_ngram_size = 3` (the sweep's
decoding, after HF's summarization default) lets a summary name each speaker only once. This measures
what that costs: trained cells of `segment_sweep.py` (their last checkpoint, untouched) decode the
dev split again with each block size, everything else as the cell decoded; ROUGE against `summary`.
It decides the decoding of the 4-dialogue inputs (`long_dialogsum.py`), whose joined summaries name
the speakers many times.

  python benchmarks/ngram_block.py --runs /path/to/sweep_runs --cells full,srformer_s8_padded
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = (0, 3, 4, 6)


def main():
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--runs", required=True, help="the sweep's run folder (one sub-folder per cell)")
  p.add_argument("--cells", default="full,srformer_s8_padded,segmented_s8_padded")
  p.add_argument("--dev", default=os.path.join(REPO, "..", "shared", "data", "dialogsum", "dialogsum.dev.jsonl"))
  p.add_argument("--sizes", default=",".join(map(str, SIZES)))
  args = p.parse_args()
  jax = common.setup_platform(args.platform)
  import ml_collections
  from srformer_jax import eval_lib
  from srformer_jax.defaults import with_defaults
  records = []
  for cell in args.cells.split(","):
    workdir = os.path.join(args.runs, cell)
    with open(os.path.join(workdir, "run_config.json")) as f:
      cfg = with_defaults(ml_collections.ConfigDict(json.load(f)))  # fields added since it ran: defaults
    cfg.data.update(eval_split=os.path.abspath(args.dev), eval_summary_key="summary",
                    max_eval_examples=2 if args.quick else 0)
    for n in map(int, args.sizes.split(",")):
      cfg.decode.no_repeat_ngram_size = n
      with tempfile.TemporaryDirectory() as tmp:
        scores = eval_lib.evaluate(cfg, workdir, out_dir=tmp)
        with open(os.path.join(tmp, "predictions.jsonl")) as f:
          preds = [json.loads(line)["prediction"] for line in f]
      persons = sum(p.count("#Person") for p in preds) / max(len(preds), 1)
      records.append(dict(cell=cell, no_repeat_ngram_size=n, rouge1=scores["rouge1"], rouge2=scores["rouge2"],
                          rougeL=scores["rougeL"], examples=scores["num_examples"],
                          speaker_mentions_per_summary=persons,
                          mean_words=sum(len(p.split()) for p in preds) / max(len(preds), 1)))
      print(json.dumps(records[-1]), flush=True)
  refs = [json.loads(line)["summary"] for line in open(args.dev)]
  payload = {"machine": common.machine(jax), "split": os.path.basename(args.dev),
             "reference_speaker_mentions_per_summary": sum(r.count("#Person") for r in refs) / len(refs),
             "records": records,
             "note": "each cell's last checkpoint decoded again (beam and length penalty as it was trained "
                     "with); only no_repeat_ngram_size differs"}
  common.write(args.out, f"ngram_block_{'quick' if args.quick else args.platform}", payload)


if __name__ == "__main__":
  main()
