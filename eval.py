"""Evaluate an SRformer (ROUGE): python eval.py --config=configs/default.py --workdir=runs/default

Uses the latest checkpoint in --workdir, or config.model.init_from when there is none.
Writes predictions.jsonl and rouge.json into --workdir. A --config.model.* override that differs
from the saved run is refused (the saved model is evaluated). User errors: one line, exit 1
(--verbose: the traceback).
"""

import logging
import sys

from absl import flags
from absl import logging as absl_logging

from srformer_jax import entry, eval_lib

entry.define_config("configs/default.py", "run configuration file")
flags.DEFINE_bool("verbose", False, entry.VERBOSE_HELP)
flags.DEFINE_string("workdir", None, "directory with checkpoints; results are written here", required=True)


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/absl chatter
  logging.getLogger("srformer_jax").setLevel(logging.INFO)
  cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  entry.check_workdir(workdir, existing=True)
  entry.check_overrides_match_run(cfg, workdir, sys.argv)
  scores = eval_lib.evaluate(cfg, workdir)
  print({k: round(v, 2) if isinstance(v, float) else v for k, v in scores.items()})


if __name__ == "__main__":
  entry.run(main)
