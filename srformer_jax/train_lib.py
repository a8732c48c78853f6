"""Training the summarisation model: its loss, its train step, its `Trainer`, and `train()`.

`train_step(state, batch, rng, first_bad) -> (state, metrics)` is a pure function; `Trainer` jits it
with explicit in/out shardings on a (data, fsdp, tensor) mesh and donates the state
(`trainer.ShardedTrainer`). `train()` sets the run up (`run_setup`) and runs the shared loop
(`loop.train_loop`), which the language models run too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from srformer_jax import data, eval_lib, loop, processes, run_setup, runfiles, sharding
from srformer_jax.layers import shift_right
from srformer_jax.model import init_boxed_params
from srformer_jax.trainer import ShardedTrainer, flag_nonfinite, make_optimizer

log = logging.getLogger(__name__)


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


# ------------------------------------------------------------------------------------------------
# the step


def is_argmax(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """`jnp.argmax(logits, -1) == labels` (ties go to the first index), as plain max reductions: the
  label's logit is the maximum and no earlier index reaches it. XLA:CPU's argmax (a reduction over
  value-index pairs) is not vectorised: ~2.5x slower than this at [1024, 4000] and ~2x at T5-small's
  [512, 32128], where the maximum is shared with the loss's log-sum-exp."""
  logits = logits.astype(jnp.float32)
  top = jnp.max(logits, -1)                                                          # [b, q]
  own = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]              # [b, q]
  earlier = jnp.arange(logits.shape[-1]) < labels[..., None]                         # [b, q, V]
  top_before = jnp.max(jnp.where(earlier, logits, -jnp.inf), -1)                     # [b, q]
  return (own == top) & (top_before < top)


def token_cross_entropy(model, params, batch, rng=None, deterministic=True):
  """Teacher-forced cross-entropy of every target token [batch, target] (padding not masked) and
  the logits [batch, target, vocab]: the terms the training loss sums."""
  c = model.config
  dec_in = shift_right(batch["labels"], c.decoder_start_token_id, c.pad_token_id)
  rngs = None if deterministic else {"dropout": rng}
  logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], dec_in,
                       deterministic=deterministic, rngs=rngs)
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["labels"]), logits


def loss_and_metrics(model, params, batch, rng, deterministic):
  """Token-summed cross-entropy and counts for one (micro-)batch."""
  c = model.config
  ce, logits = token_cross_entropy(model, params, batch, rng, deterministic)
  w = batch["label_mask"].astype(jnp.float32)
  correct = (is_argmax(logits, batch["labels"]) if c.cpu_kernels
             else jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
  return jnp.sum(ce * w), {"loss_sum": jnp.sum(ce * w), "tokens": jnp.sum(w),
                           "correct": jnp.sum(correct * w)}


def make_train_step(model, tx, schedule, grad_accum: int = 1, deterministic: bool = False,
                    guard: bool = True):
  """Pure `train_step(state, batch, rng, first_bad=-1) -> (state, metrics)`; the loss is the mean
  over tokens of the whole (accumulated) batch, so accumulation gives the same update as one big
  batch.

  Divergence guard (`trainer.flag_nonfinite`): metrics["first_bad_step"] is the first step whose
  loss, gradient norm or new parameters were not finite (1-based; -1: none). The state returned by
  such a step and by every step after it is not to be used (it may be non-finite): the loop reads
  the flag before every save and stops. `guard=False` leaves the parameter norm out.
  """

  def grads_of(params, batch, rng):
    (_, m), g = jax.value_and_grad(
        lambda p: loss_and_metrics(model, p, batch, rng, deterministic), has_aux=True)(params)
    return g, m

  def train_step(state: TrainState, batch, rng, first_bad=-1):
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
    metrics = flag_nonfinite(metrics, params, state.step, first_bad, guard)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


# ------------------------------------------------------------------------------------------------
# sharded trainer


class Trainer(ShardedTrainer):
  """The summarisation model's `ShardedTrainer`: its state (parameters and optimizer state) and
  `make_train_step`'s step; `init_state(rng, params)` starts from converted parameters (e.g. HF)."""

  def __init__(self, model, tx, schedule, mesh, rules=sharding.DEFAULT_RULES, grad_accum: int = 1,
               deterministic: bool = False, guard: bool = True):
    self.model, self.tx = model, tx
    config = model.config

    def boxed_state(rng):
      params = init_boxed_params(config, rng)
      return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    super().__init__(make_train_step(model, tx, schedule, grad_accum, deterministic, guard), boxed_state,
                     mesh, rules)

  def init_state(self, rng, params=None) -> TrainState:
    """A sharded fresh state; with `params` (e.g. converted from HF) those replace the random init."""
    if params is None:
      return super().init_state(rng)
    with self.context():
      params = jax.device_put(params, self.state_sharding.params)
      opt_state = jax.jit(self.tx.init, out_shardings=self.state_sharding.opt_state)(params)
      step = jax.device_put(jnp.zeros((), jnp.int32), self.state_sharding.step)
      return TrainState(step=step, params=params, opt_state=opt_state)


# ------------------------------------------------------------------------------------------------
# the run


def train(cfg, workdir: str, stop_after: int | None = None, check_eval_split: bool = False) -> dict:
  """Trains (resuming from the newest good checkpoint in workdir) and returns the last metrics.

  `stop_after` ends the run after that many steps of this invocation (used to test resumption).
  `check_eval_split`: refuse an evaluation split with no example before training (train.py, which
  evaluates afterwards). Raises `TrainingDiverged` on a non-finite loss, gradient norm or parameters.
  """
  run_setup.validate_config(cfg)  # before any work: one line naming the config field
  processes.init_distributed(cfg)
  mesh = run_setup.make_mesh(cfg)
  run_setup.check_train_batch(cfg, mesh)  # before any data is read
  run = run_setup.setup_training(cfg, workdir)
  if check_eval_split:  # an empty evaluation split is found now, not after training
    eval_lib.check_split(cfg, workdir)
  model, tok = run.model, run.tokenizer
  if run.initialised:
    log.info("initialised new SRformer parameters: %s", run.initialised)
  t = cfg.train
  tx, schedule = make_optimizer(cfg)
  trainer = Trainer(model, tx, schedule, mesh, grad_accum=t.grad_accum)
  it = data.BatchIterator(run.train_data, tok, run_setup.batch_spec(cfg), seed=t.seed,
                          rows=trainer.local_rows(t.batch_size))

  def describe(record, data_state, steps, seconds):  # label tokens per second over the interval
    return dict(record, tokens_per_s=record["tokens"] * steps / seconds)

  def on_end(data_state):
    runfiles.write_json(os.path.join(workdir, runfiles.DATA_STATS), {
        "source": dataclasses.asdict(run.train_data.source_stats),
        "batching": data_state.get("stats", {})}, indent=2)

  task = loop.Task(trainer=trainer, batches=it, put=lambda b: trainer.shard_batch(b, t.batch_size),
                   init_state=lambda rng: trainer.init_state(rng, run.hf_params), model_config=model.config,
                   describe=describe, on_end=on_end,
                   position=lambda s: f"data epoch {s['epoch']}, index {s['index']}")
  last, _ = loop.train_loop(cfg, workdir, task, stop_after)
  return last
