"""Input checks of the public API: errors that name the argument and say what to do.

Shape and dtype checks run at trace time (they cost nothing under jit). Value checks (token ids in
the vocabulary) need concrete arrays: they run when the caller passes real arrays (eager
`model.apply`, `generate_jit`, `summarize`) and are skipped for tracers inside a caller's jit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def integer(value, name: str, minimum: int | None = None, what: str = "") -> int:
  """`value` as a Python int (numpy ints accepted, bools and floats refused), at least `minimum`."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an int{what}, got {value!r} ({type(value).__name__})")
  if minimum is not None and value < minimum:
    raise ValueError(f"{name} must be >= {minimum}{what}, got {value}")
  return int(value)


def is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def token_ids(ids, name: str = "input_ids", ndim: int = 2):
  """`ids` as an integer array of rank `ndim` ([batch, length] or [batch]) with no empty axis."""
  if ids is None:
    raise ValueError(f"{name} is None: pass integer token ids of shape "
                     f"{'[batch, length]' if ndim == 2 else '[batch]'}")
  ids = ids if isinstance(ids, (jax.Array, np.ndarray)) else jnp.asarray(ids)
  layout = "[batch, length]" if ndim == 2 else "[batch]"
  if ids.ndim != ndim:
    hint = " (add a batch axis: ids[None])" if ndim == 2 and ids.ndim == 1 else ""
    raise ValueError(f"{name} must be token ids of shape {layout}, got shape {tuple(ids.shape)}{hint}")
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise TypeError(f"{name} must be integer token ids, got dtype {ids.dtype}; "
                    f"cast with .astype(jnp.int32) (or tokenize the text first)")
  if ids.shape[0] == 0:
    raise ValueError(f"{name} has batch size 0 (shape {tuple(ids.shape)}): pass at least one sequence")
  if ndim == 2 and ids.shape[1] == 0:
    raise ValueError(f"{name} has length 0 (shape {tuple(ids.shape)}): every sequence needs at least "
                     f"one token (an empty text tokenizes to the EOS id)")
  return ids


def attention_mask(mask, shape: tuple[int, ...], name: str = "attention_mask",
                   of: str = "input_ids"):
  """The [batch, length] mask; None means every position is real (all ones, as in HF)."""
  if mask is None:
    return jnp.ones(shape, bool)
  mask = mask if isinstance(mask, (jax.Array, np.ndarray)) else jnp.asarray(mask)
  if tuple(mask.shape) != tuple(shape):
    raise ValueError(f"{name} has shape {tuple(mask.shape)} but {of} has {tuple(shape)}: they must "
                     f"match (1 = real token, 0 = padding), or pass None for all ones")
  if not (jnp.issubdtype(mask.dtype, jnp.integer) or jnp.issubdtype(mask.dtype, jnp.floating)
          or mask.dtype == jnp.bool_):
    raise TypeError(f"{name} must be a boolean or 0/1 integer array, got dtype {mask.dtype}")
  return mask


def encoder_states(enc, name: str = "encoder_out"):
  if enc.ndim != 3 or enc.shape[0] == 0 or enc.shape[1] == 0:
    raise ValueError(f"{name} must be encoder states of shape [batch, length, d_model] with no empty "
                     f"axis, got shape {tuple(enc.shape)} (use model.encode)")
  return enc


def same_batch(a, b, name_a: str, name_b: str):
  if a.shape[0] != b.shape[0]:
    raise ValueError(f"{name_a} has batch size {a.shape[0]} but {name_b} has {b.shape[0]}: they must match")


def id_range(ids, vocab_size: int, name: str = "input_ids"):
  """Raises if a concrete `ids` holds an id outside [0, vocab_size) (the embedding lookup would
  give NaN for it, or wrap a negative id around). Tracers are not checked. Costs one reduction and
  a host transfer of two scalars for device arrays."""
  if not is_concrete(ids) or (isinstance(ids, jax.Array) and not ids.is_fully_addressable):
    return  # traced, or a multi-process global array (its other processes check their parts)
  if isinstance(ids, np.ndarray):
    lo, hi = (int(ids.min()), int(ids.max())) if ids.size else (0, 0)
  else:
    lo, hi = (int(v) for v in jax.device_get((jnp.min(ids), jnp.max(ids))))
  if hi >= vocab_size:
    raise ValueError(f"{name} holds token id {hi}, but the model's vocabulary has {vocab_size} ids "
                     f"(0..{vocab_size - 1}): the tokenizer does not match the model (an out-of-range "
                     f"id would give NaN logits)")
  if lo < 0:
    raise ValueError(f"{name} holds the negative token id {lo}; ids must be in [0, {vocab_size}): pad "
                     f"with the pad token id and mark padding in attention_mask (not -1 or -100)")
