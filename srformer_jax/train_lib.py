"""Training: model/data setup from an ml_collections config, a jit-sharded train step, the loop.

`train_step(state, batch, rng) -> (state, metrics)` is a pure function; `Trainer` jits it with
explicit in/out shardings on a (data, fsdp, tensor) mesh and donates the state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import struct

from srformer_jax import checkpoint, data, sharding
from srformer_jax.config import ModelConfig
from srformer_jax.layers import shift_right
from srformer_jax.model import build_model

log = logging.getLogger(__name__)


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


# ------------------------------------------------------------------------------------------------
# setup from the config


def model_fields(cfg) -> dict:
  """SRformer / numerics fields of config.model that override the checkpoint's architecture."""
  m = cfg.model
  fields = dict(cross_attention=m.cross_attention, segment_size=m.segment_size,
                gen_len=m.get("gen_len") or cfg.data.max_target_len, faithful=m.get("faithful", False),
                dtype=m.get("dtype", "float32"))
  for key in ("raf_threshold_init", "raf_leak_init", "dropout_rate", "attention_impl",
              "attention_block_size", "remat_policy", "raf_remat"):
    if m.get(key) is not None:
      fields[key] = m[key]
  return fields


def build_tokenizer(cfg, workdir: str, train_texts=None) -> data.Tokenizer:
  spec = cfg.data.tokenizer
  if spec == "train_spm":
    path = os.path.join(workdir, "spm", "spm.model")
    if not os.path.exists(path):
      if train_texts is None:
        raise data.DataError(f"no trained tokenizer at {path}: run train.py first")
      data.train_sentencepiece(train_texts, path[:-len(".model")], cfg.data.spm_vocab_size,
                               seed=cfg.train.seed)
    return data.SentencePieceTokenizer(path)
  if spec == "init_from":
    return data.HFTokenizer(cfg.model.init_from)
  return data.load_tokenizer(spec)


def load_source(cfg, split_key: str, workdir: str) -> data.ListSource:
  d = cfg.data
  split = d[split_key]
  max_examples = d.get("max_train_examples") if split_key == "train_split" else d.get("max_eval_examples")
  if d.source == "tfds":
    return data.read_tfds(d.name, split, d.get("data_dir"), max_examples)
  if d.source == "jsonl":
    return data.read_jsonl(split, d.get("document_key", "document"), d.get("summary_key", "summary"),
                           max_examples)
  if d.source == "docstrings":
    from srformer_jax import corpus
    paths = corpus.write_corpus(os.path.join(workdir, "corpus"))
    return data.read_jsonl(paths[split], max_examples=max_examples)
  raise data.DataError(f"config.data.source must be tfds, jsonl or docstrings, got {d.source!r}")


def build_model_config(cfg, tok: data.Tokenizer) -> tuple[ModelConfig, dict | None, list[str]]:
  """(model config, converted params or None for a random init, newly initialised names)."""
  from srformer_jax import convert
  m = cfg.model
  if m.get("init_from"):
    mc, params, new = convert.load_hf_checkpoint(m.init_from, **model_fields(cfg))
    if tok.vocab_size > mc.vocab_size:
      raise ValueError(f"tokenizer has {tok.vocab_size} tokens, model only {mc.vocab_size}")
    return mc, params, new
  arch = dict(m.scratch)
  arch.setdefault("vocab_size", tok.vocab_size)
  arch.update(pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, decoder_start_token_id=tok.pad_id)
  return ModelConfig(**arch, **model_fields(cfg)), None, []


def make_optimizer(cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
  t = cfg.train
  warmup = min(t.warmup_steps, t.num_steps)
  schedule = optax.join_schedules([
      optax.linear_schedule(0.0, t.learning_rate, max(warmup, 1)),
      optax.linear_schedule(t.learning_rate, 0.0, max(t.num_steps - warmup, 1)),
  ], [warmup]) if warmup else optax.linear_schedule(t.learning_rate, 0.0, t.num_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(t.grad_clip) if t.grad_clip else optax.identity(),
      optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=t.weight_decay),
  )
  return tx, schedule


# ------------------------------------------------------------------------------------------------
# the step


def loss_and_metrics(model, params, batch, rng, deterministic):
  """Token-summed cross-entropy and counts for one (micro-)batch."""
  c = model.config
  dec_in = shift_right(batch["labels"], c.decoder_start_token_id, c.pad_token_id)
  rngs = None if deterministic else {"dropout": rng}
  logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], dec_in,
                       deterministic=deterministic, rngs=rngs)
  w = batch["label_mask"].astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["labels"])
  correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
  return jnp.sum(ce * w), {"loss_sum": jnp.sum(ce * w), "tokens": jnp.sum(w),
                           "correct": jnp.sum(correct * w)}


def make_train_step(model, tx, schedule, grad_accum: int = 1, deterministic: bool = False):
  """Pure `train_step(state, batch, rng) -> (state, metrics)`; the loss is the mean over tokens of
  the whole (accumulated) batch, so accumulation gives the same update as one big batch."""

  def grads_of(params, batch, rng):
    (_, m), g = jax.value_and_grad(
        lambda p: loss_and_metrics(model, p, batch, rng, deterministic), has_aux=True)(params)
    return g, m

  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    if grad_accum == 1:
      grads, m = grads_of(state.params, batch, rng)
    else:
      micro = jax.tree.map(lambda x: x.reshape((grad_accum, -1) + x.shape[1:]), batch)

      def body(carry, inp):
        i, mb = inp
        g, m = grads_of(state.params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (g, m)), None

      zeros = jax.tree.map(jnp.zeros_like, (state.params, {"loss_sum": 0.0, "tokens": 0.0, "correct": 0.0}))
      (grads, m), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum), micro))
    n = jnp.maximum(m["tokens"], 1.0)
    grads = jax.tree.map(lambda g: g / n, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": m["loss_sum"] / n, "accuracy": m["correct"] / n, "tokens": m["tokens"],
               "grad_norm": optax.global_norm(grads), "learning_rate": schedule(state.step)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


# ------------------------------------------------------------------------------------------------
# sharded trainer


class Trainer:
  """Holds the mesh, the state shardings and the jitted step for one model/optimizer."""

  def __init__(self, model, tx, schedule, mesh, rules=sharding.DEFAULT_RULES, grad_accum: int = 1,
               deterministic: bool = False):
    self.model, self.tx, self.mesh, self.rules = model, tx, mesh, rules
    config = model.config
    from srformer_jax.model import init_boxed_params

    def boxed_state(rng):
      params = init_boxed_params(config, rng)
      return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    self._boxed_state = boxed_state
    abstract = jax.eval_shape(boxed_state, jax.random.key(0))
    self.logical_specs = nn.get_partition_spec(abstract)
    self.state_sharding = sharding.logical_to_sharding(self.logical_specs, mesh, rules)
    self.batch_sharding = sharding.batch_sharding(mesh, rules)
    self.replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    step = make_train_step(model, tx, schedule, grad_accum, deterministic)
    with self.context():
      self._step = jax.jit(step, in_shardings=(self.state_sharding, self.batch_sharding, self.replicated),
                           out_shardings=(self.state_sharding, self.replicated), donate_argnums=(0,))

  def context(self):
    """Mesh + logical axis rules, needed while tracing (activation sharding constraints)."""
    import contextlib
    stack = contextlib.ExitStack()
    stack.enter_context(jax.sharding.use_mesh(self.mesh) if hasattr(jax.sharding, "use_mesh")
                        else self.mesh)
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def init_state(self, rng, params=None) -> TrainState:
    """A sharded fresh state; with `params` (e.g. converted from HF) those replace the random init."""
    with self.context():
      if params is None:
        return jax.jit(lambda r: nn.unbox(self._boxed_state(r)), out_shardings=self.state_sharding)(rng)
      params = jax.device_put(params, self.state_sharding.params)
      opt_state = jax.jit(self.tx.init, out_shardings=self.state_sharding.opt_state)(params)
      step = jax.device_put(jnp.zeros((), jnp.int32), self.state_sharding.step)
      return TrainState(step=step, params=params, opt_state=opt_state)

  def abstract_state(self):
    shapes = jax.eval_shape(lambda r: nn.unbox(self._boxed_state(r)), jax.random.key(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, self.state_sharding)

  def shard_batch(self, batch: dict[str, np.ndarray]):
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, v) for k, v in batch.items()}

  def step(self, state, batch, rng):
    with self.context():
      return self._step(state, self.shard_batch(batch), rng)


# ------------------------------------------------------------------------------------------------
# the loop


def _plot_loss(metrics_file: str, out_png: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  steps, losses = [], []
  with open(metrics_file) as f:
    for line in f:
      r = json.loads(line)
      if "loss" in r:
        steps.append(r["step"])
        losses.append(r["loss"])
  if not steps:
    return
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(steps, losses)
  ax.set_xlabel("step")
  ax.set_ylabel("train loss (token cross-entropy)")
  ax.set_title(os.path.basename(os.path.dirname(os.path.abspath(out_png))) or "training")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  plt.close(fig)


def setup(cfg, workdir: str):
  """Everything a run needs: (model, tokenizer, train source, converted params, initialised names)."""
  os.makedirs(workdir, exist_ok=True)
  train_src = load_source(cfg, "train_split", workdir)
  texts = None
  if cfg.data.tokenizer == "train_spm":
    texts = [t for pair in train_src.pairs[:20000] for t in pair]
  tok = build_tokenizer(cfg, workdir, texts)
  model_config, params, new = build_model_config(cfg, tok)
  return build_model(model_config), tok, train_src, params, new


def batch_spec(cfg, batch_size=None) -> data.BatchSpec:
  d = cfg.data
  return data.BatchSpec(batch_size or cfg.train.batch_size, d.max_source_len, d.max_target_len,
                        d.get("prefix", ""), d.get("long_target", "truncate"))


def train(cfg, workdir: str, stop_after: int | None = None) -> dict:
  """Trains (resuming from the latest checkpoint in workdir) and returns the last metrics.

  `stop_after` ends the run after that many steps of this invocation (used to test resumption).
  """
  if cfg.train.get("distributed"):
    jax.distributed.initialize()
  model, tok, train_src, hf_params, initialised = setup(cfg, workdir)
  if initialised:
    log.info("initialised new SRformer parameters: %s", initialised)
  t = cfg.train
  tx, schedule = make_optimizer(cfg)
  mesh = sharding.make_mesh(tuple(t.mesh_shape))
  trainer = Trainer(model, tx, schedule, mesh, grad_accum=t.grad_accum)
  it = data.BatchIterator(train_src, tok, batch_spec(cfg), seed=t.seed)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), t.keep_checkpoints)
  rng = jax.random.key(t.seed)
  if ckpt.latest_step() is not None:
    state, data_state = ckpt.restore(trainer.abstract_state())
    it.restore(data_state)
    log.info("resumed from step %d (data epoch %d, index %d)", int(state.step), it.epoch, it.index)
  else:
    state = trainer.init_state(jax.random.fold_in(rng, 1), hf_params)
  with open(os.path.join(workdir, "model_config.json"), "w") as f:
    json.dump(dataclasses.asdict(model.config), f, indent=2)

  from tensorboardX import SummaryWriter
  from tqdm.auto import tqdm
  writer = SummaryWriter(os.path.join(workdir, "tb")) if jax.process_index() == 0 else None
  metrics_file = os.path.join(workdir, "metrics.jsonl")
  start = int(state.step)
  end = t.num_steps if stop_after is None else min(t.num_steps, start + stop_after)
  bar = tqdm(total=t.num_steps, initial=start, desc="train", dynamic_ncols=True,
             disable=jax.process_index() != 0)
  last: dict = {}
  t0, logged_at = time.perf_counter(), start
  for step in range(start, end):
    batch = next(it)
    state, metrics = trainer.step(state, batch, rng)
    if (step + 1) % t.log_every == 0 or step + 1 == end:
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      dt = time.perf_counter() - t0  # the first interval includes compilation
      m.update(step=step + 1, tokens_per_s=m["tokens"] * (step + 1 - logged_at) / max(dt, 1e-9))
      t0, logged_at = time.perf_counter(), step + 1
      last = m
      if writer is not None:
        for k, v in m.items():
          if k != "step":
            writer.add_scalar(f"train/{k}", v, step + 1)
        with open(metrics_file, "a") as f:
          f.write(json.dumps(m) + "\n")
      bar.set_postfix(loss=f"{m['loss']:.3f}", lr=f"{m['learning_rate']:.2e}")
    if (step + 1) % t.save_every == 0 or step + 1 == end:
      ckpt.save(step + 1, state, it.state())
    bar.update(1)
  bar.close()
  ckpt.close()
  if writer is not None:
    writer.close()
    with open(os.path.join(workdir, "data_stats.json"), "w") as f:
      json.dump({"source": dataclasses.asdict(train_src.stats), "batching": dataclasses.asdict(it.stats)},
                f, indent=2)
    if os.path.exists(metrics_file):
      _plot_loss(metrics_file, os.path.join(workdir, "loss.png"))
  return last
