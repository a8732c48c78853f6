"""Train an SRformer: python train.py --config=configs/default.py --workdir=runs/default

Resumes automatically from the newest good checkpoint in --workdir. Config fields can be overridden:
--config.model.segment_size=8 --config.train.num_steps=1000. Multi-process: run it once per process
with --config.train.coordinator_address=host:port --config.train.num_processes=N
--config.train.process_id=i (or leave them unset under a launcher jax.distributed detects).
Exits 1 with a one-line error on stderr for user errors (training diverged, no usable checkpoint,
missing data, an unknown config field); --verbose shows the traceback instead.
"""

import logging

from absl import flags
from absl import logging as absl_logging

from srformer_jax import entry, eval_lib, train_lib

entry.define_config("configs/default.py", "run configuration file")
flags.DEFINE_bool("verbose", False, entry.VERBOSE_HELP)
flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and results", required=True)
flags.DEFINE_bool("eval", True, "evaluate (ROUGE) after training")


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/absl chatter
  logging.getLogger("srformer_jax").setLevel(logging.INFO)
  cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  entry.check_workdir(workdir, existing=False)
  train_lib.train(cfg, workdir, check_eval_split=flags.FLAGS.eval)  # user errors (divergence, no usable checkpoint): entry.run
  if flags.FLAGS.eval:
    eval_lib.evaluate(cfg, workdir)


if __name__ == "__main__":
  entry.run(main)
