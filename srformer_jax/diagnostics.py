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


def source_reliance(model, params, batches, part_ids: tuple[int, ...] = ()) -> dict:
  """How much a trained model reads its input: mean teacher-forced cross-entropy per summary token
  with each example's own document, and with the documents rotated by one inside each batch (every
  summary then sees another example's document). `batches`: (batch, n_real) pairs with
  input_ids / attention_mask / labels / label_mask, as `data.eval_batches` yields them (padded rows
  past n_real are ignored). A gap near 0 means the decoder has not learnt to use the source yet, so
  no cross-attention variant can differ from another; the gap bounds what cross-attention buys.

  `part_ids`: the token ids that join several summaries in one target (benchmarks/long_dialogsum.py);
  with them, `by_part` gives the same three numbers for the tokens of each part (a separator's own
  tokens count to the part it ends), so a model that reads only where its first summary's document
  lies shows it."""
  from srformer_jax.train_lib import token_cross_entropy  # the training loss's terms

  @jax.jit
  def weighted(params, input_ids, attention_mask, labels, weights):
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return token_cross_entropy(model, params, batch)[0] * weights  # [b, target]

  totals: dict = {}  # (source, part) -> [loss sum, tokens]; part -1: every token
  for batch, n_real in batches:
    if n_real < 2:
      continue  # a lone example has no other document to swap in
    rows = slice(0, n_real)
    ids, mask = batch["input_ids"][rows], batch["attention_mask"][rows]
    labels, weights = batch["labels"][rows], batch["label_mask"][rows].astype(np.float32)
    parts = parts_of(np.asarray(labels), part_ids) if part_ids else None
    for name, (i, m) in (("own", (ids, mask)),
                         ("rotated", (np.roll(ids, 1, 0), np.roll(mask, 1, 0)))):
      ce = np.asarray(weighted(params, i, m, labels, weights), np.float64)
      for part in [-1] + (sorted(set(parts[weights > 0].tolist())) if parts is not None else []):
        sel = np.ones_like(ce, bool) if part < 0 else parts == part
        t = totals.setdefault((name, part), [0.0, 0.0])
        t[0] += float(ce[sel].sum())
        t[1] += float(weights[sel].sum())

  def summary(part):
    own, rotated = (totals.get((n, part), [0.0, 0.0]) for n in ("own", "rotated"))
    own_loss, rotated_loss = own[0] / max(own[1], 1.0), rotated[0] / max(rotated[1], 1.0)
    return {"test_loss": own_loss, "test_loss_rotated_source": rotated_loss,
            "source_gain": rotated_loss - own_loss, "tokens": own[1]}

  out = summary(-1)
  if part_ids:
    out["by_part"] = [dict(part=p, **summary(p)) for p in sorted({p for _, p in totals if p >= 0})]
  return out


def parts_of(labels: np.ndarray, part_ids: tuple[int, ...]) -> np.ndarray:
  """[b, t] labels -> [b, t] index of the part each token belongs to: how many complete occurrences
  of `part_ids` end before it (so a separator's own tokens belong to the part it closes)."""
  k = len(part_ids)
  b, t = labels.shape
  ends = np.zeros((b, t + 1), np.int32)  # ends[:, j + k] = 1 where part_ids occupy labels[:, j:j + k]
  if t >= k:
    hit = np.all(np.stack([labels[:, i:t - k + 1 + i] for i in range(k)], -1) == np.asarray(part_ids), -1)
    ends[:, k:] = hit
  return np.cumsum(ends, axis=1)[:, :t]
