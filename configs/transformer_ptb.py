"""Baseline: the same shallow Transformer with the full context length L, no memory."""

from configs import lm_ptb


def get_config():
  return lm_ptb.lm_config("none", "full")
