"""Shared pieces of the run configs (each configs/<name>.py has a `get_config()`)."""

import ml_collections

# every field and its default is declared once, in the package (a run config read back from a
# run_config.json is completed from the same declarations)
from srformer_jax.defaults import base_config, train_section  # noqa: F401

# Paper settings (Long et al. 2023, Sec. 4): source 1024, target 128, AdamW lr 5e-5, linear decay, s=64.
PAPER_DATASETS = {
    # name: (tfds name, train split, eval split)
    "cnn_dailymail": ("cnn_dailymail", "train", "test"),
    "xsum": ("xsum", "train", "test"),
    "arxiv": ("scientific_papers/arxiv", "train", "test"),
    "media_sum": ("media_sum", "train", "test"),
}
PAPER_MODELS = {
    # name: (HF checkpoint, T5 task prefix, RAF leak init as in the authors' code)
    "t5_small": ("t5-small", "summarize: ", 0.1),
    "bart_base": ("facebook/bart-base", "", 0.5),
}


def paper_config(model: str, dataset: str) -> ml_collections.ConfigDict:
  c = base_config()
  ckpt, prefix, leak = PAPER_MODELS[model]
  name, train_split, eval_split = PAPER_DATASETS[dataset]
  c.model.init_from = ckpt
  c.model.raf_leak_init = leak
  c.data.update(source="tfds", name=name, train_split=train_split, eval_split=eval_split,
                tokenizer="init_from", prefix=prefix)
  if dataset == "xsum":
    c.data.max_target_len = 64
  return c
