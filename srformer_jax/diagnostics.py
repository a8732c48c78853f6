"""Diagnostics of a trained SRformer: what its RAF gates pass on."""

from __future__ import annotations

import jax
import numpy as np
from flax import traverse_util


def raf_statistics(model, params, input_ids, attention_mask, decoder_input_ids) -> dict:
  """Per decoder layer, on one teacher-forced batch: RAF's threshold and leak, the fraction of
  RAF output entries that fired (> 0) and their mean |value|, over the segments RAF stepped
  through, and `recurrent_share`, the recurrent term's share of the attention output's magnitude
  (srformer_gated: also `gate`, tanh(g) of each head).
  A gate that never fires passes nothing of the other segments on (SRformer then degenerates to
  segmented attention); {} for kinds without RAF."""
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
    if f"{layer}/gate" in flat_params:  # srformer_gated: tanh(g) per head
      stats["gate"] = [float(g) for g in np.tanh(np.asarray(flat_params[f"{layer}/gate"]))]
  return out


def source_reliance(model, params, batches) -> dict:
  """How much a trained model reads its input: mean teacher-forced cross-entropy per summary token
  with each example's own document, and with the documents rotated by one inside each batch (every
  summary then sees another example's document). `batches`: (batch, n_real) pairs with
  input_ids / attention_mask / labels / label_mask, as `data.eval_batches` yields them (padded rows
  past n_real are ignored). A gap near 0 means the decoder has not learnt to use the source yet, so
  no cross-attention variant can differ from another; the gap bounds what cross-attention buys."""
  from srformer_jax.train_lib import loss_and_metrics  # the training loss, summed over tokens

  @jax.jit
  def summed(params, input_ids, attention_mask, labels, weights):
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
             "label_mask": weights}
    _, m = loss_and_metrics(model, params, batch, None, deterministic=True)
    return m["loss_sum"], m["tokens"]

  totals = {"own": [0.0, 0.0], "rotated": [0.0, 0.0]}
  for batch, n_real in batches:
    if n_real < 2:
      continue  # a lone example has no other document to swap in
    rows = slice(0, n_real)
    ids, mask = batch["input_ids"][rows], batch["attention_mask"][rows]
    labels, weights = batch["labels"][rows], batch["label_mask"][rows].astype(np.float32)
    for name, (i, m) in (("own", (ids, mask)),
                         ("rotated", (np.roll(ids, 1, 0), np.roll(mask, 1, 0)))):
      s, n = summed(params, i, m, labels, weights)
      totals[name][0] += float(s)
      totals[name][1] += float(n)
  own = totals["own"][0] / max(totals["own"][1], 1.0)
  rotated = totals["rotated"][0] / max(totals["rotated"][1], 1.0)
  return {"test_loss": own, "test_loss_rotated_source": rotated, "source_gain": rotated - own,
          "tokens": totals["own"][1]}
