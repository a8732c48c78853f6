"""Language-model training and evaluation for CRT and its baselines (config -> model, data, loop).

The loop mirrors the summarisation path (`train_lib.train`): orbax checkpoints of the train state and
the data position (`checkpoint.Checkpointer`), metrics.jsonl (strict JSON), TensorBoard, tqdm and a
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
import json
import logging
import math
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import NamedSharding

from srformer_jax import checkpoint, run_setup, sharding
from srformer_jax.crt import data as lm_data
from srformer_jax.crt import stream
from srformer_jax.crt.config import CRTConfig
from srformer_jax.crt.model import CRTLM, init_carry, init_params
from srformer_jax.train_lib import make_optimizer

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


def corpus_paths(cfg) -> dict[str, str]:
  d = cfg.data
  paths = lm_data.split_paths(d.data_dir) if d.get("data_dir") else {}
  for split in lm_data.SPLITS:
    if d.get(f"{split}_path"):
      paths[split] = d[f"{split}_path"]
  if "train" not in paths:
    raise lm_data.DataError("set config.data.data_dir or config.data.train_path")
  return paths


def make_train_step(model: CRTLM, tx, schedule, truncate_every: int):
  """Pure `(state, inputs, targets, reset, rng) -> (state, metrics)` on one window [b, T]."""
  c = model.config

  def train_step(state: LMTrainState, inputs, targets, reset, rng):
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
    return LMTrainState(step=state.step + 1, params=params, opt_state=opt_state, carry=new_carry), metrics

  return train_step


class LMTrainer:
  """Mesh, state shardings and the jitted train step of one LM and optimizer."""

  def __init__(self, model: CRTLM, tx, schedule, mesh, batch: int, truncate_every: int,
               rules=sharding.DEFAULT_RULES):
    self.model, self.tx, self.mesh, self.rules, self.batch = model, tx, mesh, rules, batch
    config = model.config

    def boxed_state(rng):
      params = init_params(config, rng, boxed=True)
      return LMTrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          carry=init_carry(config, batch))

    self._boxed_state = boxed_state
    abstract = jax.eval_shape(boxed_state, jax.random.key(0))
    specs = nn.get_partition_spec(abstract)
    batch_spec = nn.logical_to_mesh_axes((sharding.BATCH,), rules)
    specs = specs.replace(carry=jax.tree.map(lambda _: batch_spec, abstract.carry))
    self.state_sharding = sharding.logical_to_sharding(specs, mesh, rules)
    self.batch_sharding = sharding.batch_sharding(mesh, rules)
    self.replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
    step = make_train_step(model, tx, schedule, truncate_every)
    with self.context():
      self._step = jax.jit(step, in_shardings=(self.state_sharding, self.batch_sharding,
                                               self.batch_sharding, self.replicated, self.replicated),
                           out_shardings=(self.state_sharding, self.replicated), donate_argnums=(0,))

  def context(self):
    return sharding.mesh_context(self.mesh, self.rules)

  def init_state(self, rng) -> LMTrainState:
    with self.context():
      return jax.jit(lambda r: nn.unbox(self._boxed_state(r)), out_shardings=self.state_sharding)(rng)

  def abstract_state(self):
    shapes = jax.eval_shape(lambda r: nn.unbox(self._boxed_state(r)), jax.random.key(0))
    return jax.tree.map(lambda s, shd: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=shd),
                        shapes, self.state_sharding)

  def step(self, state, inputs, targets, reset, rng):
    """One jitted step; inputs/targets [batch, tokens] as host arrays (this process's rows) or as
    arrays already on the devices (used as they are)."""
    put = lambda a: a if isinstance(a, jax.Array) else jax.make_array_from_process_local_data(
        self.batch_sharding, np.asarray(a))
    with self.context():
      return self._step(state, put(inputs), put(targets), jnp.asarray(reset), rng)


def perplexity(model: CRTLM, params, ids: np.ndarray, batch: int) -> dict:
  """Perplexity over a whole split, each of `batch` parallel streams carrying its memory throughout."""
  inputs, targets = lm_data.eval_streams(ids, batch)
  params = jax.device_get(params)
  total, n, _ = stream.evaluate_stream(model, params, jnp.asarray(inputs), jnp.asarray(targets))
  nll = float(total) / n
  return {"nll": nll, "ppl": math.exp(min(nll, 50.0)), "tokens": int(n)}


def _plot(metrics_file: str, out_png: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  train, valid = [], []
  with open(metrics_file) as f:
    for line in f:
      r = json.loads(line)
      if "loss" in r:
        train.append((r["step"], r["loss"]))
      if "valid_nll" in r:
        valid.append((r["step"], r["valid_nll"]))
  if not train:
    return
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(*zip(*train), label="train")
  if valid:
    ax.plot(*zip(*valid), "o-", label="valid")
  ax.set_xlabel("step")
  ax.set_ylabel("token cross-entropy (nats)")
  ax.set_title(os.path.basename(os.path.dirname(os.path.abspath(out_png))) or "training")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  plt.close(fig)


def setup(cfg, workdir: str):
  """(model, vocab, {split: ids}); the vocabulary is also written to workdir/vocab.txt."""
  os.makedirs(workdir, exist_ok=True)
  vocab, ids = lm_data.load_corpus(corpus_paths(cfg))
  with open(os.path.join(workdir, "vocab.txt"), "w") as f:
    f.write("\n".join(vocab.words) + "\n")
  return stream.build_model(model_config(cfg, len(vocab))), vocab, ids


BEST_DIR, BEST_FILE, STOPPED_FILE = "best", "best.json", "stopped.json"


def _read_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, payload: dict):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, allow_nan=False)
  os.replace(tmp, path)  # atomic: a kill leaves the old file or the new one


def train(cfg, workdir: str, stop_after: int | None = None) -> dict:
  """Trains (resuming from the latest checkpoint in workdir); returns the last logged metrics.

  `stop_after` ends this invocation after that many steps (used to test resumption).
  """
  t = cfg.train
  stopped = _read_json(os.path.join(workdir, STOPPED_FILE))
  if stopped is not None:
    log.info("%s: training stopped at step %d (no validation gain for %d evaluations); nothing to do",
             workdir, stopped["step"], stopped["patience"])
    return stopped.get("last", {})
  mesh = run_setup.make_mesh(cfg)
  run_setup.check_train_batch(cfg, mesh)  # before any data is read
  model, vocab, ids = setup(cfg, workdir)
  c = model.config
  tx, schedule = make_optimizer(cfg)
  trainer = LMTrainer(model, tx, schedule, mesh, t.batch_size, t.truncate_every)
  it = lm_data.StreamIterator(ids["train"], t.batch_size, t.segments_per_step * c.segment_len)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), t.keep_checkpoints)
  patience = t.get("patience", 0)
  keep_best = bool(t.eval_every) and "valid" in ids and t.get("keep_best", True)
  best_file = os.path.join(workdir, BEST_FILE)
  best = _read_json(best_file)
  # best.json is written after its checkpoint: a best/ without it is a save that a kill cut short.
  # (A best.json from further on than the checkpoint we resume from is kept: resumption is exact,
  # so this run reaches that same state again.)
  if best is None and os.path.isdir(os.path.join(workdir, BEST_DIR)) and jax.process_index() == 0:
    shutil.rmtree(os.path.join(workdir, BEST_DIR))
  best_ckpt = checkpoint.Checkpointer(os.path.join(workdir, BEST_DIR), 1) if keep_best else None
  rng = jax.random.key(t.seed)
  if ckpt.latest_step() is not None:
    state, data_state = ckpt.restore(trainer.abstract_state())
    it.restore(data_state)
    log.info("resumed from step %d (epoch %d, offset %d)", int(state.step), it.epoch, it.offset)
  else:
    state = trainer.init_state(jax.random.fold_in(rng, 1))
  with open(os.path.join(workdir, "model_config.json"), "w") as f:
    json.dump(dataclasses.asdict(c), f, indent=2)

  from tensorboardX import SummaryWriter
  from tqdm.auto import tqdm
  main = jax.process_index() == 0
  writer = SummaryWriter(os.path.join(workdir, "tb")) if main else None
  metrics_file = os.path.join(workdir, "metrics.jsonl")
  start = int(state.step)
  end = t.num_steps if stop_after is None else min(t.num_steps, start + stop_after)
  bar = tqdm(total=t.num_steps, initial=start, desc="train", dynamic_ncols=True, disable=not main)
  last: dict = {}
  tokens_per_step = t.batch_size * it.window
  t0, logged_at = time.perf_counter(), start
  stop = False
  for step in range(start, end):
    inputs, targets, reset = next(it)
    state, metrics = trainer.step(state, inputs, targets, reset, rng)
    record = None
    if (step + 1) % t.log_every == 0 or step + 1 == end:
      record = {k: float(v) for k, v in jax.device_get(metrics).items()}
      dt = time.perf_counter() - t0  # the first interval includes compilation
      record.update(step=step + 1, epoch=it.epoch + it.offset / (it.windows_per_epoch * it.window),
                    ppl=math.exp(min(record["loss"], 50.0)),
                    tokens_per_s=tokens_per_step * (step + 1 - logged_at) / max(dt, 1e-9))
      t0, logged_at = time.perf_counter(), step + 1
      bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['learning_rate']:.2e}")
    if t.eval_every and ((step + 1) % t.eval_every == 0 or step + 1 == end) and "valid" in ids:
      v = perplexity(model, state.params, ids["valid"], cfg.data.eval_batch_size)
      record = dict(record or {"step": step + 1}, valid_nll=v["nll"], valid_ppl=v["ppl"])
      if best_ckpt is not None and (best is None or v["nll"] < best["valid_nll"]):
        best = {"step": step + 1, "valid_nll": v["nll"], "valid_ppl": v["ppl"],
                "epoch": it.epoch + it.offset / (it.windows_per_epoch * it.window)}
        if best_ckpt.latest_step() != step + 1:  # else a kill came between this save and best.json
          best_ckpt.save(step + 1, state, it.state(), wait=True)
        if main:
          _write_json(best_file, best)
      record["best_valid_ppl"] = best["valid_ppl"] if best else v["ppl"]
      # patience counts evaluations since the best one (the best step is itself an evaluation)
      stop = bool(patience) and best is not None and (step + 1 - best["step"]) >= patience * t.eval_every
      t0 = time.perf_counter()
    if record is not None:
      last = record
      if writer is not None:
        for k, val in record.items():
          if k != "step":
            writer.add_scalar(f"train/{k}" if not k.startswith("valid") else f"valid/{k[6:]}", val, step + 1)
        with open(metrics_file, "a") as f:
          f.write(json.dumps(record, allow_nan=False) + "\n")
    if (step + 1) % t.save_every == 0 or step + 1 == end or stop:
      ckpt.save(step + 1, state, it.state())
    bar.update(1)
    if stop:
      log.info("%s: no validation gain for %d evaluations since step %d (valid ppl %.2f): stopping at "
               "step %d", workdir, patience, best["step"], best["valid_ppl"], step + 1)
      ckpt.wait()
      if main:
        _write_json(os.path.join(workdir, STOPPED_FILE),
                    {"step": step + 1, "patience": patience, "best": best, "last": last})
      break
  bar.close()
  ckpt.close()
  if best_ckpt is not None:
    best_ckpt.close()
  if writer is not None:
    writer.close()
    if os.path.exists(metrics_file):
      _plot(metrics_file, os.path.join(workdir, "loss.png"))
  return last


def evaluate(cfg, workdir: str, splits=("valid", "test"), which: str = "best") -> dict:
  """Perplexity on `splits` of the best-validation checkpoint (`which="best"`, when training kept
  one; else the latest) or of the latest (`which="latest"`); written to workdir/eval_results.json."""
  if which not in ("best", "latest"):
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
  model, vocab, ids = setup(cfg, workdir)
  best_dir = os.path.join(workdir, BEST_DIR)
  use_best = which == "best" and os.path.isdir(best_dir) and os.path.exists(os.path.join(workdir, BEST_FILE))
  ckpt = checkpoint.Checkpointer(best_dir if use_best else os.path.join(workdir, "checkpoints"))
  abstract = jax.eval_shape(lambda r: init_params(model.config, r), jax.random.key(0))
  replicated = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), abstract)
  params, step = ckpt.restore_params(abstract)
  ckpt.close()
  results = {"step": int(step), "checkpoint": "best" if use_best else "latest",
             "model": dataclasses.asdict(model.config)}
  for split in splits:
    if split in ids:
      results[split] = perplexity(model, params, ids[split], cfg.data.eval_batch_size)
  with open(os.path.join(workdir, "eval_results.json"), "w") as f:
    json.dump(results, f, indent=2, allow_nan=False)
  return results
