"""bart_base SRformer on arxiv with the paper's settings (s=64, source 1024, AdamW 5e-5, linear decay)."""

from configs import base


def get_config():
  return base.paper_config("bart_base", "arxiv")
