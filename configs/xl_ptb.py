"""Baseline: Transformer-XL on L/2 segments (`:quarter` for L/4) attending to a stop-gradient cache
of the previous segment's hidden states (cache length = segment length)."""

from configs import lm_ptb


def get_config(fraction: str = "half"):
  return lm_ptb.lm_config("xl", fraction or "half")
