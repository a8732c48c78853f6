"""CRT on WordPTB: shallow Transformer on L/2 segments (`:quarter` for L/4) + GRU persistent memory.

python train_lm.py --config=configs/crt_ptb.py:half --workdir=runs/crt_half
"""

from configs import lm_ptb


def get_config(fraction: str = "half"):
  return lm_ptb.lm_config("crt", fraction or "half")
