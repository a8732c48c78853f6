"""What swapping the cross-attention does to the reader before any fine-tuning.

The segment sweep fine-tunes every kind from one reader (`benchmarks/reader.py`). This measures each
kind at step 0: the reader's parameters with its cross-attention swapped, the new RAF parameters
initialised as `load_hf_checkpoint` initialises them (the sweep's seed 0). Per kind, on the test
dialogues: teacher-forced test loss, source gain (`diagnostics.source_reliance`), and for the
recurrent kinds RAF's firing and the recurrent term's share of the cross-attention output
(`diagnostics.raf_statistics`, first 64 test examples). A kind whose step-0 loss is far above
segmented attention's starts its fine-tuning from a damaged reader.

  python benchmarks/swap_at_init.py --reader benchmarks/reader/cpu_infill --data_dir ../shared/data/dialogsum

Writes benchmarks/results/swap_at_init_cpu.json (rendered in docs/segment_sweep.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks import common  # noqa: E402
from benchmarks import segment_sweep as sweep  # noqa: E402

KINDS = [("full", None), ("segmented", 8), ("xl", 8), ("srformer", 8), ("srformer_gated", 8),
         ("recurrent_only", 8), ("no_norm", 8), ("no_raf", 8), ("kv_segment", 8), ("segmented", 64),
         ("srformer", 64)]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--reader", default=os.path.join(REPO, "benchmarks", "reader", "cpu_infill"))
  p.add_argument("--data_dir", default=os.path.join(REPO, "..", "shared", "data", "dialogsum"))
  p.add_argument("--preset", default="cpu", choices=sorted(sweep.PRESETS))
  p.add_argument("--out", default=common.RESULTS)
  args = p.parse_args()
  reader = os.path.abspath(args.reader)
  test_path = os.path.abspath(os.path.join(args.data_dir, "dialogsum.test.jsonl"))
  for path in (os.path.join(reader, "config.json"), test_path):
    if not os.path.exists(path):
      sys.exit(f"missing {path}: pass --reader (a benchmarks/reader.py export) and --data_dir")
  overrides = dict(sweep.PRESETS[args.preset]["overrides"])
  overrides.update({"data.train_split": test_path, "data.eval_split": test_path,
                    "data.document_key": "dialogue", "data.summary_key": "summary",
                    "data.eval_summary_key": "summary1",
                    "data.tokenizer": f"spm:{os.path.join(reader, 'spm.model')}",
                    "model.init_from": reader})
  rows = []
  for kind, s in KINDS:
    cell = dict(kind=kind, s=s, schedule="padded", seed=0)
    cfg = sweep.run_config(overrides, cell)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:  # no checkpoint: the reader with the swap
      stats = sweep.cell_stats(cfg, workdir, kind)
    rows.append(dict(cell, **stats, seconds=time.perf_counter() - t0))
    raf = stats.get("raf") or {}
    share = [round(v.get("recurrent_share", float("nan")), 3) for v in raf.values()]
    print(f"{kind:>15} s={s}: test loss {stats['test_loss']:.3f}, source gain "
          f"{stats['source_gain']:.3f}, recurrent share {share}", flush=True)
  payload = {"reader": sweep._relative(reader), "data": sweep._relative(test_path),
             "preset": args.preset, "git_commit": sweep._git_commit(), "machine": sweep._machine(),
             "rows": rows}
  common.write(args.out, f"swap_at_init_{args.preset}", payload)


if __name__ == "__main__":
  main()
