"""Model configuration: one frozen dataclass for T5 and BART, built from a HF `config.json`."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Mapping

log = logging.getLogger(__name__)

# Cross-attention kinds of the decoder (see `srformer_jax.attention.segmented`).
#   full            ordinary softmax attention over the whole encoder output
#   segmented       softmax over the query's own segment only (the paper's baseline)
#   srformer        segmented softmax + RAF-gated recurrent summary of the other segments
#   xl              softmax over the current and previous segment (Transformer-XL-style baseline)
#   recurrent_only  ablation I:   only the recurrent part (no segmented softmax)
#   no_norm         ablation II:  srformer without the 1/||K|| normalisation
#   no_raf          ablation III: srformer with the complement K^T V - K_i^T V_i used directly (no RAF)
#   kv_segment      ablation IV:  RAF fed K_i^T V_i instead of the complement
#   srformer_gated  not the paper's: srformer with the recurrent term times tanh(g), g a learnable
#                   scalar per head starting at `raf_gate_init` (0: the swapped-in model starts as
#                   segmented attention and fine-tuning learns how much of the summary to add; see
#                   docs/segment_sweep.md for why the paper's term swamps a pretrained model's reading)
# Not the paper's either: the cheap cross-attentions a practitioner would try instead (docs/srformer.md)
#   pooled          softmax over the own segment plus one mean key/value per other segment (m extra keys)
#   linear          kernelised linear attention over the whole input, feature map elu(x) + 1
#                   (Katharopoulos et al. 2020), no segments
#   local_window    softmax over a window of s keys centred on the position's aligned place in the input
#                   (Longformer-style local attention, no memory)
#   gru_memory      srformer with RAF replaced by a GRU cell over the same per-segment summaries (the
#                   paper's open question 3)
ALTERNATIVE_KINDS = ("pooled", "linear", "local_window", "gru_memory")
CROSS_ATTENTION_KINDS = (
    "full", "segmented", "srformer", "xl", "recurrent_only", "no_norm", "no_raf", "kv_segment",
    "srformer_gated") + ALTERNATIVE_KINDS
SEGMENT_SCHEDULES = ("padded", "length")
# Kinds that carry RAF parameters (linear d_kv -> d_kv, leak, threshold).
RAF_KINDS = ("srformer", "recurrent_only", "no_norm", "kv_segment", "srformer_gated")
# Kinds whose recurrent term is scaled by a learnable per-head gate tanh(g).
GATED_KINDS = ("srformer_gated",)
# Kinds that add the recurrent (linear-attention) term Q @ f(K^T V - K_i^T V_i).
RECURRENT_KINDS = RAF_KINDS + ("no_raf", "gru_memory")
# Self-attention implementations (see `srformer_jax.attention.self_attention.resolve_impl`).
#   auto       the fastest exact choice for the backend and length
#   dense      [b, h, t, t] scores (the reference)
#   blockwise  online softmax over key blocks, O(t) memory (`srformer_jax.attention.blockwise`)
#   cudnn      jax.nn.dot_product_attention(implementation="cudnn"), GPU only
ATTENTION_IMPLS = ("auto", "dense", "blockwise", "cudnn")
REMAT_POLICY_NAMES = ("none", "full", "dots", "dots_no_batch")
# Forms of a few ops (`cpu_kernels`): the hashed dropout mask, dense layers with a CPU-laid-out weight
# gradient and float32-accumulated low-precision products, add_bias's matmul-reduced gradient, the
# reduction-only token accuracy, greedy decoding's beam-free cross-attention step.
KERNELS = ("auto", "xla", "cpu")


def cpu_kernels(kernels: str) -> bool:
  """Whether a `kernels` choice takes the forms written for XLA:CPU: "auto" on the CPU backend only,
  "cpu" everywhere, "xla" (the plain JAX forms) nowhere. Each such form computes the values of the
  plain one (tests/test_house.py); they were chosen by timing XLA:CPU (docs/benchmarks.md), and
  benchmarks/gpu_checks.sh times both forms on a GPU."""
  if kernels not in KERNELS:
    raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
  import jax  # the backend is known once jax is configured, not when this module is imported
  return kernels == "cpu" or (kernels == "auto" and jax.default_backend() == "cpu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and SRformer settings of an encoder-decoder (T5 or BART).

  Variants are made with `dataclasses.replace(cfg, cross_attention="srformer", segment_size=8)`.
  """

  arch: str  # "t5" | "bart"
  vocab_size: int
  d_model: int
  num_heads: int
  d_kv: int  # per-head dimension
  d_ff: int
  num_encoder_layers: int
  num_decoder_layers: int
  # T5
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  feed_forward_proj: str = "relu"  # "relu" | "gated-gelu" | "gated-silu" | "gelu"
  tie_word_embeddings: bool = True  # lm_head shares the input embedding
  scale_decoder_outputs: bool = True  # T5 v1.0: decoder output * d_model**-0.5 before the lm_head
  layer_norm_epsilon: float = 1e-6
  # BART
  max_position_embeddings: int = 1024
  scale_embedding: bool = False
  activation_function: str = "gelu"
  # Tokens
  pad_token_id: int = 0
  eos_token_id: int = 1
  bos_token_id: int | None = None
  decoder_start_token_id: int = 0
  forced_bos_token_id: int | None = None  # token forced at the first decoding step (BART-large-cnn)
  forced_eos_token_id: int | None = None  # token forced at the last step of max_len (BART)
  # Regularisation (dropout is active only when `deterministic=False` and a 'dropout' rng is given)
  dropout_rate: float = 0.1
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  # Decoder cross-attention (SRformer)
  cross_attention: str = "full"
  segment_size: int = 64
  gen_len: int = 128  # decoder length q used for the segment rule when decoding
  # Which segment decoder position t reads (see attention.segmented.SEGMENT_SCHEDULES):
  #   padded  the paper's: m = ceil(k / s) over the padded input, i(t) = min(m-1, floor(t m / q))
  #   length  per example: m_b = ceil(len_b / s) over its own tokens, i_b(t) = min(m_b-1, floor(t m_b / q))
  segment_schedule: str = "padded"
  raf_threshold_init: float = 0.1
  raf_leak_init: float = 0.1
  raf_weight_init_std: float | None = None  # None: identity + N(0, 0.02) (see attention.segmented)
  raf_gate_init: float = 0.0  # srformer_gated: initial g of the per-head gate tanh(g)
  faithful: bool = False  # reproduce the authors' code exactly (see README, "faithful mode")
  # Numerics
  dtype: str = "float32"  # compute dtype ("bfloat16" for mixed precision); params stay float32
  # Long inputs (see README, "Long inputs"): self-attention implementation and rematerialisation
  attention_impl: str = "auto"  # one of ATTENTION_IMPLS
  attention_block_size: int = 512  # query/key block of the blockwise implementation
  remat_policy: str = "none"  # encoder/decoder layers: one of REMAT_POLICY_NAMES
  raf_remat: bool = False  # recompute SRformer's K_i^T V_i, RAF linear and RAF scan in the backward
  # Which forms of a few ops: "auto" takes the ones written for XLA:CPU on the CPU backend only,
  # "xla" the plain JAX forms everywhere, "cpu" the CPU forms everywhere (`layers.cpu_kernels`)
  kernels: str = "auto"

  def __post_init__(self):
    if self.arch not in ("t5", "bart"):
      raise ValueError(f"arch must be 't5' or 'bart', got {self.arch!r}")
    if self.cross_attention not in CROSS_ATTENTION_KINDS:
      raise ValueError(
          f"unknown cross_attention {self.cross_attention!r}; choose one of {CROSS_ATTENTION_KINDS}")
    if self.segment_size <= 0:
      raise ValueError(f"segment_size must be a positive integer, got {self.segment_size}")
    if self.segment_schedule not in SEGMENT_SCHEDULES:
      raise ValueError(f"unknown segment_schedule {self.segment_schedule!r}; choose one of {SEGMENT_SCHEDULES}")
    if self.faithful and self.cross_attention in ALTERNATIVE_KINDS:
      raise ValueError(f"cross_attention={self.cross_attention!r} is not part of the authors' code: use it "
                       "with faithful=False (faithful mode reproduces their SRformer and its ablations)")
    if self.segment_schedule == "length" and self.faithful:
      raise ValueError("segment_schedule='length' is not part of the authors' code: use it with "
                       "faithful=False (faithful mode attends to padding, so lengths are not defined)")
    if self.gen_len <= 0:
      raise ValueError(f"gen_len must be positive, got {self.gen_len}")
    if self.raf_threshold_init <= 0:
      raise ValueError(f"raf_threshold_init must be > 0 (RAF divides by it), got {self.raf_threshold_init}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")
    if self.attention_block_size <= 0:
      raise ValueError(f"attention_block_size must be positive, got {self.attention_block_size}")
    if self.remat_policy not in REMAT_POLICY_NAMES:
      raise ValueError(f"remat_policy must be one of {REMAT_POLICY_NAMES}, got {self.remat_policy!r}")
    if self.kernels not in KERNELS:
      raise ValueError(f"kernels must be one of {KERNELS}, got {self.kernels!r}")
    if self.dtype not in ("float32", "bfloat16", "float16", "float64"):
      raise ValueError(f"dtype must be float32, bfloat16, float16 (or float64 with jax_enable_x64, for "
                       f"numerical checks), got {self.dtype!r}")

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.d_kv

  @property
  def logits_dtype(self) -> str:
    return "float64" if self.dtype == "float64" else "float32"

  @property
  def cpu_kernels(self) -> bool:
    """Whether this model takes the forms written for XLA:CPU (see `kernels`)."""
    return cpu_kernels(self.kernels)

  @property
  def uses_raf(self) -> bool:
    return self.cross_attention in RAF_KINDS

  @property
  def is_gated_ffn(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @classmethod
  def from_hf(cls, hf_config: Mapping[str, Any] | str | os.PathLike, **overrides) -> "ModelConfig":
    """Builds a config from a HF config dict, a `config.json` path or a checkpoint directory."""
    if not isinstance(hf_config, Mapping):
      path = os.fspath(hf_config)
      if os.path.isdir(path):
        path = os.path.join(path, "config.json")
      if not os.path.exists(path):
        raise FileNotFoundError(f"no config.json at {path}")
      with open(path) as f:
        hf_config = json.load(f)
    c = dict(hf_config)
    model_type = c.get("model_type")
    if model_type in ("t5", "mt5"):
      kw = dict(
          arch="t5",
          vocab_size=c["vocab_size"],
          d_model=c["d_model"],
          num_heads=c["num_heads"],
          d_kv=c["d_kv"],
          d_ff=c["d_ff"],
          num_encoder_layers=c["num_layers"],
          num_decoder_layers=c.get("num_decoder_layers") or c["num_layers"],
          relative_attention_num_buckets=c.get("relative_attention_num_buckets", 32),
          relative_attention_max_distance=c.get("relative_attention_max_distance", 128),
          feed_forward_proj=c.get("feed_forward_proj", "relu"),
          tie_word_embeddings=c.get("tie_word_embeddings", True),
          # transformers >= 5 always ties and records the v1.0/v1.1 difference here; older
          # configs (and the published v1.1/flan checkpoints) say tie_word_embeddings=false.
          scale_decoder_outputs=c.get("scale_decoder_outputs", c.get("tie_word_embeddings", True)),
          layer_norm_epsilon=c.get("layer_norm_epsilon", 1e-6),
          pad_token_id=c.get("pad_token_id", 0),
          eos_token_id=c.get("eos_token_id", 1),
          decoder_start_token_id=c.get("decoder_start_token_id", 0),
          dropout_rate=c.get("dropout_rate", 0.1),
          raf_threshold_init=0.1,
          raf_leak_init=0.1,
      )
    elif model_type == "bart":
      heads = c["decoder_attention_heads"]
      if c["encoder_attention_heads"] != heads or c["encoder_ffn_dim"] != c["decoder_ffn_dim"]:
        raise ValueError("BART with different encoder/decoder heads or ffn sizes is not supported")
      kw = dict(
          arch="bart",
          vocab_size=c["vocab_size"],
          d_model=c["d_model"],
          num_heads=heads,
          d_kv=c["d_model"] // heads,
          d_ff=c["decoder_ffn_dim"],
          num_encoder_layers=c["encoder_layers"],
          num_decoder_layers=c["decoder_layers"],
          max_position_embeddings=c.get("max_position_embeddings", 1024),
          scale_embedding=c.get("scale_embedding", False),
          activation_function=c.get("activation_function", "gelu"),
          tie_word_embeddings=c.get("tie_word_embeddings", True),
          layer_norm_epsilon=1e-5,
          pad_token_id=c.get("pad_token_id", 1),
          eos_token_id=c.get("eos_token_id", 2),
          bos_token_id=c.get("bos_token_id", 0),
          decoder_start_token_id=c.get("decoder_start_token_id", 2),
          forced_bos_token_id=c.get("forced_bos_token_id"),
          forced_eos_token_id=c.get("forced_eos_token_id"),
          dropout_rate=c.get("dropout", 0.1),
          attention_dropout=c.get("attention_dropout", 0.0),
          activation_dropout=c.get("activation_dropout", 0.0),
          raf_threshold_init=0.1,
          raf_leak_init=0.5,
      )
    else:
      raise ValueError(f"unsupported model_type {model_type!r}: srformer_jax supports t5 and bart")
    if "gen_len" in c:  # the authors' fixtures record gen_len (and srformer_segment_size)
      kw["gen_len"] = c["gen_len"]
    names = {f.name for f in dataclasses.fields(cls)} - {"arch"}
    for key, value in c.items():
      if key.startswith(SRFORMER_PREFIX):
        name = key[len(SRFORMER_PREFIX):]
        if name in names:
          kw[name] = _from_json(value)
        else:
          log.warning("ignoring %r in the HF config: ModelConfig has no field %r", key, name)
    kw.update(overrides)
    return cls(**kw)

  def to_hf(self) -> dict[str, Any]:
    """The HF `config.json` dict of this architecture.

    The fields HF's config holds go under HF's names (`HF_FIELDS`); every other field (the SRformer
    settings, numerics, and whatever is added to this class later) under `srformer_<field>`, which
    `from_hf` reads back, so `from_hf(to_hf(c)) == c`. HF itself ignores the `srformer_*` keys.
    """
    d: dict[str, Any] = dict(model_type=self.arch, is_encoder_decoder=True, architectures=[
        "T5ForConditionalGeneration" if self.arch == "t5" else "BartForConditionalGeneration"])
    mapped = HF_FIELDS[self.arch]
    for name, keys in mapped.items():
      for key in (keys if isinstance(keys, tuple) else (keys,)):
        d[key] = getattr(self, name)
    for f in dataclasses.fields(self):
      if f.name != "arch" and f.name not in mapped:
        d[SRFORMER_PREFIX + f.name] = getattr(self, f.name)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    """A config from `dataclasses.asdict(config)` read back from JSON (lists become tuples)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown ModelConfig fields {unknown}: the file was written by another "
                       f"version of srformer_jax (known fields: {sorted(names)})")
    return cls(**{k: _from_json(v) for k, v in d.items()})


# Prefix of the ModelConfig fields a HF config.json has no key for (see `ModelConfig.to_hf`).
SRFORMER_PREFIX = "srformer_"
# ModelConfig field -> its key(s) in the HF config of each architecture (`to_hf`; `from_hf` reads
# them with HF's defaults). Fields not listed are exported as `srformer_<field>`.
HF_FIELDS: dict[str, dict[str, str | tuple[str, ...]]] = {
    "t5": dict(
        vocab_size="vocab_size", d_model="d_model", num_heads="num_heads", d_kv="d_kv", d_ff="d_ff",
        num_encoder_layers="num_layers", num_decoder_layers="num_decoder_layers",
        relative_attention_num_buckets="relative_attention_num_buckets",
        relative_attention_max_distance="relative_attention_max_distance",
        feed_forward_proj="feed_forward_proj", tie_word_embeddings="tie_word_embeddings",
        scale_decoder_outputs="scale_decoder_outputs", layer_norm_epsilon="layer_norm_epsilon",
        pad_token_id="pad_token_id", eos_token_id="eos_token_id",
        decoder_start_token_id="decoder_start_token_id", dropout_rate="dropout_rate"),
    "bart": dict(
        vocab_size="vocab_size", d_model="d_model",
        num_heads=("encoder_attention_heads", "decoder_attention_heads"),
        d_ff=("encoder_ffn_dim", "decoder_ffn_dim"), num_encoder_layers="encoder_layers",
        num_decoder_layers="decoder_layers", max_position_embeddings="max_position_embeddings",
        scale_embedding="scale_embedding", activation_function="activation_function",
        pad_token_id="pad_token_id", eos_token_id="eos_token_id", bos_token_id="bos_token_id",
        decoder_start_token_id="decoder_start_token_id", forced_bos_token_id="forced_bos_token_id",
        forced_eos_token_id="forced_eos_token_id", dropout_rate="dropout",
        attention_dropout="attention_dropout", activation_dropout="activation_dropout",
        tie_word_embeddings="tie_word_embeddings"),
}


def _from_json(value):
  """JSON arrays back to tuples, so configs stay hashable (they key jit and lru caches)."""
  if isinstance(value, list):
    return tuple(_from_json(v) for v in value)
  return value
