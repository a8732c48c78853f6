"""Hugging Face PyTorch checkpoints <-> srformer_jax Flax parameter trees.

The Flax tree mirrors the HF state dict, so conversion is one renaming rule (`hf_name`):
`block_3` <-> `block.3`, `kernel` <-> `weight` (transposed), `embedding` <-> `weight`. Tied tensors
(encoder/decoder `embed_tokens`, a tied `lm_head`) are aliases of `shared`. Every expected tensor
must be found with the right shape and every tensor in the checkpoint must be used; otherwise the
error names the tensor. The only tensors allowed to be missing are the SRformer additions
(RAF's `SNN_kv`, `threshold`, `leak`; srformer_gated's `gate`), which are freshly initialised and
reported.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Mapping

import jax
import numpy as np
from flax import linen as nn
from flax import traverse_util

from srformer_jax.config import ModelConfig
from srformer_jax.errors import ConversionError

log = logging.getLogger(__name__)

_INDEXED = re.compile(r"^(block|layer|layers)_(\d+)$")
SRFORMER_PARAM = re.compile(r"\.(SNN_kv\.weight|threshold|leak|gate|gru_wx|gru_bx|gru_wh)$")
# Tensors some published checkpoints carry that the model does not use (HF ignores them too).
IGNORED = (
    re.compile(r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$"),
    re.compile(r"(^|\.)version$"),
)
# Tensors HF itself allows to be missing (zeros when absent).
OPTIONAL_ZEROS = ("final_logits_bias",)
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"




def hf_name(path: tuple[str, ...]) -> tuple[str, bool]:
  """Flax param path -> (HF state-dict key, whether the array is transposed)."""
  parts = []
  for p in path[:-1]:
    m = _INDEXED.match(p)
    parts.extend([m.group(1), m.group(2)] if m else [p])
  leaf = path[-1]
  transpose = leaf == "kernel"
  parts.append("weight" if leaf in ("kernel", "embedding") else leaf)
  return ".".join(parts), transpose


def tied_aliases(config: ModelConfig) -> dict[str, str]:
  """HF keys that hold the same tensor as another key (alias -> canonical)."""
  if config.arch == "t5":
    shared = "shared.weight"
    aliases = {"encoder.embed_tokens.weight": shared, "decoder.embed_tokens.weight": shared}
  else:
    shared = "model.shared.weight"
    aliases = {"model.encoder.embed_tokens.weight": shared,
               "model.decoder.embed_tokens.weight": shared}
  if config.tie_word_embeddings:
    aliases["lm_head.weight"] = shared
  return aliases


# ------------------------------------------------------------------------------------------------
# reading checkpoints


def resolve_checkpoint_dir(name_or_path: str | os.PathLike) -> str:
  """A local directory as is; otherwise a hub name downloaded with `huggingface_hub` (needs network)."""
  path = os.fspath(name_or_path)
  if os.path.isdir(path):
    return path
  if os.path.exists(path) or path.startswith((".", "/")) or path.count("/") > 1:
    raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
  try:
    from huggingface_hub import snapshot_download
    return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model",
                                                   "*.txt"])
  except Exception as e:  # offline, unknown repo, ...
    raise FileNotFoundError(
        f"{path!r} is not a local directory and could not be downloaded from the HF hub ({e}). "
        "Pass a directory containing config.json and model.safetensors or pytorch_model.bin.") from e


def load_state_dict(ckpt_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of a HF checkpoint directory as float32 numpy arrays (safetensors preferred)."""
  d = os.fspath(ckpt_dir)
  files: list[str]
  if os.path.exists(os.path.join(d, SAFETENSORS)):
    files = [SAFETENSORS]
  elif os.path.exists(os.path.join(d, SAFETENSORS_INDEX)):
    files = _index_files(os.path.join(d, SAFETENSORS_INDEX))
  elif os.path.exists(os.path.join(d, TORCH_BIN)):
    files = [TORCH_BIN]
  elif os.path.exists(os.path.join(d, TORCH_BIN_INDEX)):
    files = _index_files(os.path.join(d, TORCH_BIN_INDEX))
  else:
    raise FileNotFoundError(
        f"no weights in {d}: expected {SAFETENSORS}, {TORCH_BIN} or a sharded index of either")
  out: dict[str, np.ndarray] = {}
  for f in files:
    full = os.path.join(d, f)
    if f.endswith(".safetensors"):
      from safetensors.numpy import load_file
      tensors = load_file(full)
    else:
      import torch  # only needed for legacy .bin checkpoints
      sd = torch.load(full, map_location="cpu", weights_only=True)
      tensors = {k: v.float().numpy() for k, v in sd.items()}
    out.update({k: np.asarray(v, np.float32) for k, v in tensors.items()})
  return out


def _index_files(index_path: str) -> list[str]:
  with open(index_path) as f:
    return sorted(set(json.load(f)["weight_map"].values()))


# ------------------------------------------------------------------------------------------------
# HF -> Flax


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], config: ModelConfig,
                         init_params: Mapping[str, Any] | None = None,
                         rng: jax.Array | None = None) -> tuple[dict, list[str]]:
  """Converts a HF state dict into this package's param tree for `config`.

  SRformer parameters absent from the checkpoint come from `init_params` (or a fresh init with
  `rng`). Returns (params, names of the parameters that were initialised rather than loaded).
  """
  from srformer_jax.model import abstract_params, init_params as _init

  template = traverse_util.flatten_dict(abstract_params(config))
  aliases = tied_aliases(config)
  used: set[str] = set()
  flat: dict[tuple[str, ...], np.ndarray] = {}
  fresh: dict | None = None
  initialised: list[str] = []
  for path, spec in template.items():
    key, transpose = hf_name(path)
    if key not in state_dict and SRFORMER_PARAM.search(key):
      if fresh is None:
        fresh = traverse_util.flatten_dict(
            nn.unbox(init_params) if init_params is not None
            else _init(config, rng if rng is not None else jax.random.key(0)))
      flat[path] = np.asarray(fresh[path])
      initialised.append(key)
      continue
    if key not in state_dict and key in OPTIONAL_ZEROS:
      flat[path] = np.zeros(spec.shape, np.float32)
      continue
    if key not in state_dict:
      raise ConversionError(f"checkpoint has no tensor {key!r} (needed for param {'/'.join(path)})")
    arr = state_dict[key]
    arr = arr.T if transpose else arr
    if tuple(arr.shape) != tuple(spec.shape):
      raise ConversionError(
          f"tensor {key!r} has shape {tuple(state_dict[key].shape)}, model expects "
          f"{tuple(spec.shape[::-1]) if transpose else tuple(spec.shape)} (param {'/'.join(path)})")
    flat[path] = np.asarray(arr, np.float32)
    used.add(key)
  for key in state_dict:
    if key in used or any(p.search(key) for p in IGNORED):
      continue
    if key in aliases:
      canonical = aliases[key]
      if canonical in state_dict and not np.array_equal(state_dict[key], state_dict[canonical]):
        raise ConversionError(f"tensor {key!r} should be tied to {canonical!r} but differs from it")
      continue
    raise ConversionError(f"unexpected tensor {key!r} in checkpoint: the model has no such parameter "
                          f"(arch={config.arch}, cross_attention={config.cross_attention})")
  if initialised:
    log.info("initialised %d new SRformer parameters: %s", len(initialised), ", ".join(initialised))
  return traverse_util.unflatten_dict(flat), initialised


def load_hf_checkpoint(name_or_path: str | os.PathLike, rng: jax.Array | None = None,
                       **config_overrides) -> tuple[ModelConfig, dict, list[str]]:
  """Loads a HF T5/BART checkpoint (local dir or hub name) as (config, params, initialised names).

  `config_overrides` set SRformer fields, e.g. `cross_attention="srformer", segment_size=64`.
  """
  d = resolve_checkpoint_dir(name_or_path)
  config = ModelConfig.from_hf(d, **config_overrides)
  params, initialised = state_dict_to_params(load_state_dict(d), config, rng=rng)
  return config, params, initialised


# ------------------------------------------------------------------------------------------------
# Flax -> HF


def params_to_state_dict(params: Mapping[str, Any], config: ModelConfig) -> dict[str, np.ndarray]:
  """The inverse of `state_dict_to_params` (tied aliases written too, as HF does)."""
  out: dict[str, np.ndarray] = {}
  for path, arr in traverse_util.flatten_dict(nn.unbox(dict(params))).items():
    key, transpose = hf_name(path)
    a = np.asarray(jax.device_get(arr), np.float32)
    out[key] = np.ascontiguousarray(a.T if transpose else a)
  for alias, canonical in tied_aliases(config).items():
    out[alias] = out[canonical].copy()
  return out


def save_hf_checkpoint(params: Mapping[str, Any], config: ModelConfig, out_dir: str | os.PathLike,
                       include_srformer: bool = True) -> str:
  """Writes config.json + model.safetensors that `transformers` loads (SRformer tensors optional:
  plain HF models ignore them with a warning). Tied tensors are written once, under their canonical
  name (as `save_pretrained` writes safetensors); loading ties the aliases again."""
  from safetensors.numpy import save_file
  os.makedirs(out_dir, exist_ok=True)
  aliases = tied_aliases(config)
  sd = {k: v for k, v in params_to_state_dict(params, config).items() if k not in aliases}
  if not include_srformer:
    sd = {k: v for k, v in sd.items() if not SRFORMER_PARAM.search(k)}
  tmp = os.path.join(out_dir, SAFETENSORS + ".tmp")
  save_file(sd, tmp, metadata={"format": "pt"})
  os.replace(tmp, os.path.join(out_dir, SAFETENSORS))
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config.to_hf(), f, indent=2)
  return os.fspath(out_dir)
