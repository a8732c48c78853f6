"""Diagnostics of a trained SRformer: what its RAF gates pass on."""

from __future__ import annotations

import jax
import numpy as np
from flax import traverse_util


def raf_statistics(model, params, input_ids, attention_mask, decoder_input_ids) -> dict:
  """Per decoder layer, on one teacher-forced batch: RAF's threshold and leak, the fraction of
  RAF output entries that fired (> 0) and their mean |value|, over the segments RAF stepped
  through. A gate that never fires passes nothing of the other segments on (SRformer then
  degenerates to segmented attention); {} for kinds without RAF."""
  _, state = model.apply({"params": params}, input_ids, attention_mask, decoder_input_ids,
                         mutable=["intermediates"])
  flat = traverse_util.flatten_dict(state.get("intermediates", {}), sep="/")
  flat_params = traverse_util.flatten_dict(params, sep="/")
  out: dict = {}
  for key, value in flat.items():
    layer, name = key.rsplit("/", 1)
    out.setdefault(layer, {})[name] = float(np.mean(jax.device_get(value)))
  for layer, stats in out.items():
    for scalar in ("threshold", "leak"):
      stats[scalar] = float(np.asarray(flat_params[f"{layer}/{scalar}"]).reshape(()))
  return out
