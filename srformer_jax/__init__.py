"""srformer_jax: Segmented Recurrent Transformer (SRformer) T5/BART in JAX/Flax.

Public API:
  ModelConfig, CROSS_ATTENTION_KINDS        model configuration (frozen dataclass)
  build_model, init_params, abstract_params model construction
  load_hf_checkpoint, save_hf_checkpoint    Hugging Face checkpoint conversion
  DecodeConfig, generate, generate_jit      greedy / beam-search generation
  stepwise_logits                           teacher forcing through the decoding cache
  load_run, summarize, Run                  a trained run: load it, summarize texts with it
                                            (CLI: python -m srformer_jax.cli --workdir ...)
  CRTConfig, CRTLM, crt_generate, ...       CRT language model (srformer_jax.crt)
"""

from srformer_jax.api import Run, load_run, summarize
from srformer_jax.config import CROSS_ATTENTION_KINDS, ModelConfig
from srformer_jax.convert import (ConversionError, load_hf_checkpoint, params_to_state_dict,
                                  save_hf_checkpoint, state_dict_to_params)
from srformer_jax.crt import (CRTLM, CRTConfig, evaluate_stream, scan_segments)
from srformer_jax.crt import generate as crt_generate
from srformer_jax.decoding import (DecodeConfig, generate, generate_from_encoded, generate_jit,
                                   stepwise_logits)
from srformer_jax.model import abstract_params, build_model, count_params, init_params

__version__ = "0.1.0"

__all__ = [
    "CROSS_ATTENTION_KINDS", "ModelConfig", "ConversionError", "load_hf_checkpoint",
    "params_to_state_dict", "save_hf_checkpoint", "state_dict_to_params", "DecodeConfig", "generate",
    "generate_from_encoded", "generate_jit", "stepwise_logits", "abstract_params", "build_model",
    "count_params", "init_params", "Run", "load_run", "summarize", "CRTConfig", "CRTLM",
    "crt_generate", "evaluate_stream", "scan_segments",
]
