"""Train a word-level LM (CRT or a baseline): python train_lm.py --config=configs/crt_ptb.py:half --workdir=runs/crt

Resumes from the latest checkpoint in --workdir; then reports valid/test perplexity (eval_results.json).
Config fields can be overridden: --config.data.data_dir=/path/to/ptb --config.train.num_steps=100.
"""

import logging

from absl import flags
from absl import logging as absl_logging

from srformer_jax import entry
from srformer_jax.crt import train as lm_train

entry.define_config("configs/crt_ptb.py", "run configuration file")
flags.DEFINE_bool("verbose", False, entry.VERBOSE_HELP)
flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and results", required=True)
flags.DEFINE_bool("eval", True, "valid/test perplexity after training")
flags.DEFINE_bool("train", True, "train (resuming) before evaluating")


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("srformer_jax").setLevel(logging.INFO)
  cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  entry.check_workdir(workdir, existing=not flags.FLAGS.train)
  if flags.FLAGS.train:
    lm_train.train(cfg, workdir)
  if flags.FLAGS.eval:
    print(lm_train.evaluate(cfg, workdir))


if __name__ == "__main__":
  entry.run(main)
