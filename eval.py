"""Evaluate an SRformer (ROUGE): python eval.py --config=configs/default.py --workdir=runs/default

Uses the latest checkpoint in --workdir, or config.model.init_from when there is none.
Writes predictions.jsonl and rouge.json into --workdir.
"""

import logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from srformer_jax import eval_lib

config_flags.DEFINE_config_file("config", "configs/default.py", "run configuration file")
flags.DEFINE_string("workdir", None, "directory with checkpoints; results are written here", required=True)


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/absl chatter
  logging.getLogger("srformer_jax").setLevel(logging.INFO)
  scores = eval_lib.evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  print({k: round(v, 2) if isinstance(v, float) else v for k, v in scores.items()})


if __name__ == "__main__":
  app.run(main)
