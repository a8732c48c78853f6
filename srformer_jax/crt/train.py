"""Language-model training and evaluation for CRT and its baselines (config -> model, data, task).

Training runs the loop the summarisation model runs (`loop.train_loop`): orbax checkpoints of the
train state and the data position, metrics.jsonl (strict JSON) and TensorBoard trimmed to the
restored step, run files from process 0, prefetched batches, the divergence flag, tqdm and a
loss.png, and automatic resumption from the latest checkpoint in the workdir. The train state also
holds the memory carried from one window of the streams to the next, so a resumed run continues
exactly where it stopped.

Model selection: every `eval_every` steps the validation perplexity is measured; the state with the
best one so far is kept in `<workdir>/best/` (with `best.json`), and with `train.patience = P > 0`
training stops once P evaluations in a row have not improved on it (`stopped.json`; a rerun of a
stopped run trains no further). `evaluate` scores the best-validation checkpoint when there is one.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from srformer_jax import checkpoint, loop, processes, run_setup, runfiles, sharding
from srformer_jax.crt import data as lm_data
from srformer_jax.crt import stream
from srformer_jax.crt.config import CRTConfig
from srformer_jax.crt.model import CRTLM, init_carry, init_params
from srformer_jax.errors import ConfigError, DataError
# make_optimizer: the LM runs' optimizer, as `crt.train.make_optimizer` for the benchmarks
from srformer_jax.trainer import ShardedTrainer, flag_nonfinite, make_optimizer  # noqa: F401

log = logging.getLogger(__name__)


@struct.dataclass
class LMTrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  carry: Any  # memory after the last window, per stream


def model_config(cfg, vocab_size: int) -> CRTConfig:
  fields = dict(cfg.model)
  fields["vocab_size"] = vocab_size
  return CRTConfig(**fields)


LM_POSITIVE_INTS = ("train.batch_size", "train.segments_per_step", "train.log_every", "train.save_every",
                    "train.keep_checkpoints", "data.eval_batch_size")


def validate_config(cfg):
  """Rejects, before any work and naming the `config.` field, values that cannot work: the loop's
  and the data's, then the model's as CRTConfig checks them, then the mesh's."""
  run_setup.check_positive_ints(cfg, LM_POSITIVE_INTS)
  fields = dict(cfg.model)
  try:
    CRTConfig(**dict(fields, vocab_size=8))
  except (TypeError, ValueError) as e:
    named = next((k for k in fields if str(e).startswith(k) or f" {k}" in str(e) or f"({k})" in str(e)), None)
    raise ConfigError(f"config.model{'.' + named if named else ''}: {e}") from None


def corpus_paths(cfg) -> dict[str, str]:
  d = cfg.data
  paths = lm_data.split_paths(d.data_dir) if d.data_dir else {}
  for split in lm_data.SPLITS:
    if d[f"{split}_path"]:
      paths[split] = d[f"{split}_path"]
  if "train" not in paths:
    raise DataError("set config.data.data_dir or config.data.train_path")
  return paths


def make_train_step(model: CRTLM, tx, schedule, truncate_every: int, guard: bool = True):
  """Pure `(state, batch, rng, first_bad) -> (state, metrics)` on one window: batch["inputs"],
  batch["targets"] [b, T] and batch["reset"] (a scalar: the memory starts afresh). The divergence
  flag as in `trainer.flag_nonfinite`."""
  c = model.config

  def train_step(state: LMTrainState, batch, rng, first_bad=-1):
    inputs, targets, reset = batch["inputs"], batch["targets"], batch["reset"]
    rng = jax.random.fold_in(rng, state.step)
    fresh = init_carry(c, inputs.shape[0], jnp.float32)
    carry = jax.tree.map(lambda a, z: jnp.where(reset, z, a), state.carry, fresh)

    def loss_fn(params):
      ce, new_carry = stream.scan_segments(model, params, inputs, carry, targets,
                                           truncate_every=truncate_every, deterministic=False, rng=rng)
      return jnp.mean(ce), new_carry

    (loss, new_carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_carry = jax.tree.map(lambda a, old: jax.lax.stop_gradient(a).astype(old.dtype), new_carry, carry)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "learning_rate": schedule(state.step)}
    metrics = flag_nonfinite(metrics, params, state.step, first_bad, guard)
    return LMTrainState(step=state.step + 1, params=params, opt_state=opt_state, carry=new_carry), metrics

  return train_step


class LMTrainer(ShardedTrainer):
  """A language model's `ShardedTrainer`: parameters, optimizer state and the memory carried per
  stream (split along the batch axis, like the streams)."""

  def __init__(self, model: CRTLM, tx, schedule, mesh, batch: int, truncate_every: int,
               rules=sharding.DEFAULT_RULES, guard: bool = True):
    self.model, self.tx, self.batch = model, tx, batch
    config = model.config

    def boxed_state(rng):
      params = init_params(config, rng, boxed=True)
      return LMTrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          carry=init_carry(config, batch))

    def state_specs(abstract, specs):
      from flax import linen as nn
      batch_spec = nn.logical_to_mesh_axes((sharding.BATCH,), rules)
      return specs.replace(carry=jax.tree.map(lambda _: batch_spec, abstract.carry))

    super().__init__(make_train_step(model, tx, schedule, truncate_every, guard), boxed_state, mesh, rules,
                     batch_leaves={"inputs": "batch", "targets": "batch", "reset": "replicated"},
                     state_specs=state_specs)

  def window(self, inputs, targets, reset) -> dict:
    """A host window of the global streams as the step's batch: this process's rows of inputs and
    targets [batch, T] and the reset flag."""
    lo, hi = self.local_rows(self.batch)
    return {"inputs": np.asarray(inputs)[lo:hi], "targets": np.asarray(targets)[lo:hi], "reset": np.bool_(reset)}

  def put(self, batch: dict) -> dict:
    """The step's input from `window`'s batch (global arrays)."""
    return self.shard_batch(batch, self.batch)


class _Windows:
  """A `StreamIterator` as the loop's batches: `LMTrainer.window` dicts, with its position."""

  def __init__(self, it: lm_data.StreamIterator, trainer: LMTrainer):
    self.it, self.trainer = it, trainer

  def __next__(self):
    return self.trainer.window(*next(self.it))

  def state(self) -> dict:
    return self.it.state()

  def restore(self, state: dict):
    self.it.restore(state)


def perplexity(model: CRTLM, params, ids: np.ndarray, batch: int) -> dict:
  """Perplexity over a whole split, each of `batch` parallel streams carrying its memory throughout."""
  inputs, targets = lm_data.eval_streams(ids, batch)
  params = jax.device_get(params)
  total, n, _ = stream.evaluate_stream(model, params, jnp.asarray(inputs), jnp.asarray(targets))
  nll = float(total) / n
  return {"nll": nll, "ppl": math.exp(min(nll, 50.0)), "tokens": int(n)}


def positions_in_document(ids: np.ndarray, eos_id: int) -> np.ndarray:
  """Each token's index within its document, a document ending at (and including) `eos_id`."""
  idx = np.arange(len(ids))
  starts = np.r_[True, np.asarray(ids)[:-1] == eos_id]
  return idx - np.maximum.accumulate(np.where(starts, idx, 0))


def perplexity_and_positions(model: CRTLM, params, ids: np.ndarray, batch: int, edges=(0, 512, 2048),
                             eos_id: int = 0) -> tuple[dict, list[dict]]:
  """`perplexity`'s record of the split and, from the same pass, the perplexity of the predicted
  words bucketed by their position within their document (the buckets [edges[i], edges[i+1]), the
  last open-ended). The split is read as `perplexity` reads it: `batch` parallel streams, each
  carrying its memory throughout (a stream that starts inside a document has not seen its
  beginning, whatever the model)."""
  inputs, targets = lm_data.eval_streams(ids, batch)
  where = lm_data.batchify(positions_in_document(ids, eos_id), batch)[:, 1:]  # [batch, N - 1]
  ce, _, _ = stream.evaluate_stream(model, jax.device_get(params), jnp.asarray(inputs), jnp.asarray(targets),
                                    per_token=True)
  ce = np.asarray(ce, np.float64)

  def record(sel):
    n = int(sel.sum())
    nll = float(ce[sel].sum() / n) if n else float("nan")
    return {"tokens": n, "nll": nll, "ppl": math.exp(min(nll, 50.0)) if n else float("nan")}

  out = []
  for lo, hi in zip(edges, tuple(edges[1:]) + (None,)):
    sel = (where >= lo) & (where < hi) if hi is not None else where >= lo
    out.append({"from": int(lo), "to": None if hi is None else int(hi), **record(sel)})
  whole = record(np.ones_like(where, bool))
  return {"nll": whole["nll"], "ppl": whole["ppl"], "tokens": whole["tokens"]}, out


def setup(cfg, workdir: str):
  """(model, vocab, {split: ids}); the vocabulary is also written to workdir/vocab.txt."""
  os.makedirs(workdir, exist_ok=True)
  vocab, ids = lm_data.load_corpus(corpus_paths(cfg))
  if processes.is_main():
    with open(os.path.join(workdir, runfiles.VOCAB), "w") as f:
      f.write("\n".join(vocab.words) + "\n")
  return stream.build_model(model_config(cfg, len(vocab))), vocab, ids


class _BestKeeper:
  """The validation of a language-model run: perplexity on the valid split, the best state so far
  in <workdir>/best (with best.json, written after it), and the patience rule."""

  def __init__(self, cfg, workdir: str, model, valid_ids, keep_best: bool, epoch):
    self.cfg, self.model, self.valid_ids, self.epoch = cfg, model, valid_ids, epoch
    self.patience, self.eval_every = cfg.train.patience, cfg.train.eval_every
    self.best_file = os.path.join(workdir, runfiles.BEST)
    self.best = runfiles.read_json(self.best_file)
    best_dir = os.path.join(workdir, runfiles.BEST_DIR)
    # best.json is written after its checkpoint: a best/ without it is a save that a kill cut short.
    # (A best.json from further on than the checkpoint we resume from is kept: resumption is exact,
    # so this run reaches that same state again.)
    if self.best is None and os.path.isdir(best_dir) and processes.is_main():
      shutil.rmtree(best_dir)
    processes.barrier("lm_best_dir_checked")
    self.ckpt = checkpoint.Checkpointer(best_dir, 1) if keep_best else None

  def __call__(self, state, step: int, data_state: dict) -> loop.Validation:
    v = perplexity(self.model, state.params, self.valid_ids, self.cfg.data.eval_batch_size)
    record = {"valid_nll": v["nll"], "valid_ppl": v["ppl"]}
    if self.ckpt is not None and (self.best is None or v["nll"] < self.best["valid_nll"]):
      self.best = {"step": step, "valid_nll": v["nll"], "valid_ppl": v["ppl"], "epoch": self.epoch(data_state)}
      if self.ckpt.latest_step() != step:  # else a kill came between this save and best.json
        self.ckpt.save(step, state, data_state, wait=True)
      runfiles.write_json(self.best_file, self.best, indent=2)
    record["best_valid_ppl"] = self.best["valid_ppl"] if self.best else v["ppl"]
    # patience counts evaluations since the best one (the best step is itself an evaluation)
    stop = (bool(self.patience) and self.best is not None
            and (step - self.best["step"]) >= self.patience * self.eval_every)
    if stop:
      log.info("no validation gain for %d evaluations since step %d (valid ppl %.2f): stopping at step %d",
               self.patience, self.best["step"], self.best["valid_ppl"], step)
    return loop.Validation(record, stop)

  def close(self):
    if self.ckpt is not None:
      self.ckpt.close()


def train(cfg, workdir: str, stop_after: int | None = None) -> dict:
  """Trains (resuming from the latest checkpoint in workdir); returns the last logged metrics.

  `stop_after` ends this invocation after that many steps (used to test resumption). Raises
  `TrainingDiverged` on a non-finite loss, gradient norm or parameters.
  """
  t = cfg.train
  stopped = runfiles.read_json(os.path.join(workdir, runfiles.STOPPED))
  if stopped is not None:
    log.info("%s: training stopped at step %d (no validation gain for %d evaluations); nothing to do",
             workdir, stopped["step"], stopped["patience"])
    return stopped.get("last", {})
  validate_config(cfg)  # before any work: one line naming the config field
  processes.init_distributed(cfg)
  mesh = run_setup.make_mesh(cfg)
  run_setup.check_train_batch(cfg, mesh)  # before any data is read
  model, vocab, ids = setup(cfg, workdir)
  c = model.config
  tx, schedule = make_optimizer(cfg)
  trainer = LMTrainer(model, tx, schedule, mesh, t.batch_size, t.truncate_every)
  it = lm_data.StreamIterator(ids["train"], t.batch_size, t.segments_per_step * c.segment_len)
  tokens_per_step = t.batch_size * it.window
  epoch_tokens = it.windows_per_epoch * it.window
  epoch = lambda s: s["epoch"] + s["offset"] / epoch_tokens  # noqa: E731

  def describe(record, data_state, steps, seconds):
    return dict(record, epoch=epoch(data_state), ppl=math.exp(min(record["loss"], 50.0)),
                tokens_per_s=tokens_per_step * steps / seconds)

  keeper = None
  if t.eval_every and "valid" in ids:
    keeper = _BestKeeper(cfg, workdir, model, ids["valid"], bool(t.keep_best), epoch)
  task = loop.Task(trainer=trainer, batches=_Windows(it, trainer), put=trainer.put, init_state=trainer.init_state,
                   model_config=c, describe=describe, validate=keeper,
                   validate_every=t.eval_every if keeper else 0,
                   position=lambda s: f"epoch {s['epoch']}, offset {s['offset']}")
  try:
    last, stopped = loop.train_loop(cfg, workdir, task, stop_after)
  finally:
    if keeper is not None:
      keeper.close()
  if stopped:
    runfiles.write_json(os.path.join(workdir, runfiles.STOPPED),
                        {"step": last["step"], "patience": t.patience, "best": keeper.best, "last": last}, indent=2)
  return last


def evaluate(cfg, workdir: str, splits=("valid", "test"), which: str = "best", by_position=None) -> dict:
  """Perplexity on `splits` of the best-validation checkpoint (`which="best"`, when training kept
  one; else the latest) or of the latest (`which="latest"`); written to workdir/eval_results.json.
  `by_position` (bucket edges, e.g. (0, 512, 2048)): also `<split>_by_position`, the perplexity by
  position within the document (`perplexity_and_positions`)."""
  if which not in ("best", "latest"):
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
  validate_config(cfg)
  model, vocab, ids = setup(cfg, workdir)
  best_dir = os.path.join(workdir, runfiles.BEST_DIR)
  use_best = which == "best" and os.path.isdir(best_dir) and os.path.exists(os.path.join(workdir, runfiles.BEST))
  ckpt = checkpoint.Checkpointer(best_dir if use_best else os.path.join(workdir, runfiles.CHECKPOINTS))
  abstract = jax.eval_shape(lambda r: init_params(model.config, r), jax.random.key(0))
  replicated = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), abstract)
  params, step = ckpt.restore_params(abstract)
  ckpt.close()
  results = {"step": int(step), "checkpoint": "best" if use_best else "latest",
             "model": dataclasses.asdict(model.config)}
  for split in splits:
    if split in ids:
      if by_position:  # one pass gives both
        results[split], results[f"{split}_by_position"] = perplexity_and_positions(
            model, params, ids[split], cfg.data.eval_batch_size, by_position, vocab.index[lm_data.EOS])
      else:
        results[split] = perplexity(model, params, ids[split], cfg.data.eval_batch_size)
  runfiles.write_json(os.path.join(workdir, runfiles.EVAL_RESULTS), results, indent=2)
  return results
