"""Baseline: the same Transformer on independent segments of L/2 (`:quarter` for L/4), no memory."""

from configs import lm_ptb


def get_config(fraction: str = "half"):
  return lm_ptb.lm_config("none", fraction or "half")
