"""CRT: the Compact Recurrent Transformer with persistent memory, a decoder-only LM over segments.

  CRTConfig                         model configuration (frozen dataclass; also the baselines)
  CRTLM, init_params, init_carry    the Flax model (one segment) and its memory state
  scan_segments, evaluate_stream    scanned forward over a stream (training / evaluation)
  stepwise_logits, generate         token-by-token decoding with an explicit state pytree
"""

from srformer_jax.crt.config import CELL_KINDS, MEMORY_KINDS, CRTConfig
from srformer_jax.crt.model import CRTLM, init_carry, init_params
from srformer_jax.crt.stream import (decode_step, decode_state_for, evaluate_stream, generate,
                                     scan_segments, stepwise_logits)

__all__ = ["CELL_KINDS", "MEMORY_KINDS", "CRTConfig", "CRTLM", "init_carry", "init_params",
           "decode_step", "decode_state_for", "evaluate_stream", "generate", "scan_segments",
           "stepwise_logits"]
