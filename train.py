"""Train an SRformer: python train.py --config=configs/default.py --workdir=runs/default

Resumes automatically from the latest checkpoint in --workdir. Config fields can be overridden:
--config.model.segment_size=8 --config.train.num_steps=1000.
"""

import logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from srformer_jax import eval_lib, train_lib

config_flags.DEFINE_config_file("config", "configs/default.py", "run configuration file")
flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and results", required=True)
flags.DEFINE_bool("eval", True, "evaluate (ROUGE) after training")


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/absl chatter
  logging.getLogger("srformer_jax").setLevel(logging.INFO)
  cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  train_lib.train(cfg, workdir)
  if flags.FLAGS.eval:
    eval_lib.evaluate(cfg, workdir)


if __name__ == "__main__":
  app.run(main)
