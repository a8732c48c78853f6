"""Training: the optimizer, a jit-sharded train step, the loop (run setup: `run_setup`).

`train_step(state, batch, rng) -> (state, metrics)` is a pure function; `Trainer` jits it with
explicit in/out shardings on a (data, fsdp, tensor) mesh and donates the state. A step whose loss,
gradient norm or new parameters are not finite is flagged on the device; the loop stops with
`TrainingDiverged` at the next point where it reads the metrics anyway (logging, saving), and never
saves a flagged state.
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

from srformer_jax import checkpoint, data, prefetch, run_setup, sharding
from srformer_jax.layers import shift_right
# run setup lives in run_setup; these names stay importable from here
from srformer_jax.run_setup import (batch_spec, build_model_config, build_tokenizer, load_source,  # noqa: F401
                                    model_fields)

log = logging.getLogger(__name__)
# a diverged step's NaN reaches tensorboardX, which warns before our one-line divergence error
logging.getLogger("tensorboardX.x2num").addFilter(
    lambda record: "NaN or Inf found" not in record.getMessage())
RUN_CONFIG_FILE = "run_config.json"  # the run's full config, written at train start (`api.load_run`)


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


class TrainingDiverged(RuntimeError):
  """A non-finite loss, gradient norm or parameters (a flagged state is never saved)."""


# ------------------------------------------------------------------------------------------------
# the optimizer


def make_optimizer(cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
  t = cfg.train
  warmup = min(t.warmup_steps, t.num_steps)
  schedule = optax.join_schedules([
      optax.linear_schedule(0.0, t.learning_rate, max(warmup, 1)),
      optax.linear_schedule(t.learning_rate, 0.0, max(t.num_steps - warmup, 1)),
  ], [warmup]) if warmup else optax.linear_schedule(t.learning_rate, 0.0, t.num_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(t.grad_clip) if t.grad_clip else optax.identity(),
      optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=t.weight_decay,
                  mask=None if t.get("decay_all_params", False) else decay_mask),
  )
  return tx, schedule


def decay_mask(params):
  """Weight decay only on matrices (kernels, embeddings): not on biases, norm scales or RAF's
  threshold and leak scalars. Decaying those pulls them towards 0 (a norm scale of 0 silences a
  layer; a threshold towards 0 makes RAF fire on everything), the usual exclusion in AdamW
  fine-tuning recipes (HF's `no_decay = ["bias", "LayerNorm.weight"]`)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


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


def loss_and_metrics(model, params, batch, rng, deterministic):
  """Token-summed cross-entropy and counts for one (micro-)batch."""
  c = model.config
  dec_in = shift_right(batch["labels"], c.decoder_start_token_id, c.pad_token_id)
  rngs = None if deterministic else {"dropout": rng}
  logits = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"], dec_in,
                       deterministic=deterministic, rngs=rngs)
  w = batch["label_mask"].astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["labels"])
  correct = is_argmax(logits, batch["labels"]).astype(jnp.float32)
  return jnp.sum(ce * w), {"loss_sum": jnp.sum(ce * w), "tokens": jnp.sum(w),
                           "correct": jnp.sum(correct * w)}


def make_train_step(model, tx, schedule, grad_accum: int = 1, deterministic: bool = False,
                    guard: bool = True):
  """Pure `train_step(state, batch, rng, first_bad=-1) -> (state, metrics)`; the loss is the mean
  over tokens of the whole (accumulated) batch, so accumulation gives the same update as one big
  batch.

  Divergence guard: when the loss, the gradient norm or the norm of the new parameters
  (metrics["param_norm"]) is not finite, metrics["first_bad_step"] is that step (1-based; -1: none),
  and it stays the first such step when fed back as `first_bad`. The state returned by such a step
  and by every step after it is not to be used (it may be non-finite): the loop reads the flag before
  every save and stops. Flagging instead of returning the input state costs one reduction over the
  new parameters and no second pass over the state (keeping it meant a select per state element and
  the update's norm, which made XLA write the update out: 6% of T5-small's step); no host sync
  either (`guard=False` leaves the parameter norm out, for measuring its cost).
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
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    # Finite gradients and parameters make a finite optimizer state for make_optimizer's chain
    # (clipping, AdamW's moments: convex combinations of finite values); another `tx` may need more.
    if guard:
      metrics["param_norm"] = optax.global_norm(params)
      finite &= jnp.isfinite(metrics["param_norm"])
    first_bad = jnp.where((first_bad < 0) & ~finite, state.step + 1, first_bad).astype(jnp.int32)
    new = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
    metrics["first_bad_step"] = first_bad
    return new, metrics

  return train_step


# ------------------------------------------------------------------------------------------------
# sharded trainer


class Trainer:
  """Holds the mesh, the state shardings and the jitted step for one model/optimizer."""

  def __init__(self, model, tx, schedule, mesh, rules=sharding.DEFAULT_RULES, grad_accum: int = 1,
               deterministic: bool = False, guard: bool = True):
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
    step = make_train_step(model, tx, schedule, grad_accum, deterministic, guard)
    with self.context():
      self._step = jax.jit(step, in_shardings=(self.state_sharding, self.batch_sharding, self.replicated,
                                               self.replicated),
                           out_shardings=(self.state_sharding, self.replicated), donate_argnums=(0,))

  def context(self):
    """Mesh + logical axis rules, needed while tracing (activation sharding constraints)."""
    return sharding.mesh_context(self.mesh, self.rules)

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

  def local_rows(self, global_batch: int) -> tuple[int, int]:
    """The rows of each global batch this process provides."""
    return run_setup.local_rows(self.batch_sharding, global_batch)

  def shard_batch(self, batch: dict[str, np.ndarray], global_batch: int | None = None):
    """Global arrays from this process's rows (`global_batch`: default, as many as given)."""
    def put(v):
      if isinstance(v, jax.Array):
        return v
      shape = None if global_batch is None else (global_batch,) + v.shape[1:]
      return jax.make_array_from_process_local_data(self.batch_sharding, v, shape)
    return {k: put(v) for k, v in batch.items()}

  def lower(self, state, batch, rng):
    """The step lowered for these arguments (arrays or jax.ShapeDtypeStruct; `batch` global, e.g.
    from shard_batch): `.compile()`, then `.cost_analysis()` / `.memory_analysis()`. The compiled
    step takes (state, batch, rng, first_bad) and returns (state, metrics), as `step` does."""
    first_bad = jax.ShapeDtypeStruct((), jnp.int32, sharding=self.replicated)
    with self.context():
      return self._step.lower(state, batch, rng, first_bad)

  def compile(self, state, batch, rng):
    """Compiles the step ahead of its first call (for these argument shapes/shardings only);
    `step` then runs the compiled executable."""
    self._compiled = self.lower(state, self.shard_batch(batch), rng).compile()
    return self._compiled

  def step(self, state, batch, rng, first_bad=None):
    """(state, metrics); `batch`: numpy (this process's rows) or global arrays; `first_bad`: the
    previous step's metrics["first_bad_step"] (default: none)."""
    if first_bad is None:
      first_bad = np.int32(-1)
    if not isinstance(first_bad, jax.Array):  # the step's own output sharding: no recompilation
      first_bad = jax.device_put(np.int32(first_bad), self.replicated)
    with self.context():
      return (getattr(self, "_compiled", None) or self._step)(state, self.shard_batch(batch), rng, first_bad)


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
      if r.get("loss") is not None:
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


def _json_safe(m: dict) -> dict:
  """metrics.jsonl stays strict JSON: a non-finite value is written as null."""
  return {k: v if not isinstance(v, float) or np.isfinite(v) else None for k, v in m.items()}


def _trim_metrics(metrics_file: str, last_step: int):
  """Drops the lines logged after `last_step` (a resumed run logs those steps again)."""
  if not os.path.exists(metrics_file):
    return
  with open(metrics_file) as f:
    keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= last_step]
  with open(metrics_file + ".tmp", "w") as f:
    f.writelines(keep)
  os.replace(metrics_file + ".tmp", metrics_file)


def _diverged(step: int, m: dict, ckpt: checkpoint.Checkpointer) -> TrainingDiverged:
  last = ckpt.latest_step()
  where = f"step {last} in {ckpt.directory}" if last is not None else "none (no checkpoint was saved)"
  return TrainingDiverged(
      f"training diverged: non-finite loss, gradient norm or parameters at step {step} (loss="
      f"{m.get('loss')}, grad_norm={m.get('grad_norm')}, param_norm={m.get('param_norm')}); last good checkpoint: {where}; no non-finite state was saved. "
      f"Lower train.learning_rate or check the data, then rerun to resume from that checkpoint.")


def train(cfg, workdir: str, stop_after: int | None = None) -> dict:
  """Trains (resuming from the newest good checkpoint in workdir) and returns the last metrics.

  `stop_after` ends the run after that many steps of this invocation (used to test resumption).
  Raises `TrainingDiverged` on a non-finite loss, gradient norm or parameters.
  """
  run_setup.init_distributed(cfg)
  mesh = run_setup.make_mesh(cfg)
  run_setup.check_train_batch(cfg, mesh)  # before any data is read
  run = run_setup.setup_training(cfg, workdir)
  model, tok = run.model, run.tokenizer
  if run.initialised:
    log.info("initialised new SRformer parameters: %s", run.initialised)
  t = cfg.train
  main = run_setup.is_main()
  tx, schedule = make_optimizer(cfg)
  trainer = Trainer(model, tx, schedule, mesh, grad_accum=t.grad_accum)
  it = data.BatchIterator(run.train_data, tok, batch_spec(cfg), seed=t.seed,
                          rows=trainer.local_rows(t.batch_size))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), t.keep_checkpoints)
  # replicated over the mesh (also across processes, where device_put of a local key cannot)
  rng = jax.jit(lambda: jax.random.key(t.seed), out_shardings=trainer.replicated)()
  if ckpt.latest_step() is not None:
    state, data_state = ckpt.restore(trainer.abstract_state())
    it.restore(data_state)
    log.info("resumed from step %d (data epoch %d, index %d)", int(state.step), it.epoch, it.index)
  else:
    state = trainer.init_state(jax.random.fold_in(rng, 1), run.hf_params)
  start = int(state.step)
  run_setup.write_json(os.path.join(workdir, "model_config.json"), dataclasses.asdict(model.config),
                       indent=2)
  if run_setup.is_main():
    with open(os.path.join(workdir, RUN_CONFIG_FILE), "w") as f:
      f.write(cfg.to_json_best_effort(indent=2))

  from tensorboardX import SummaryWriter
  from tqdm.auto import tqdm
  metrics_file = os.path.join(workdir, "metrics.jsonl")
  writer = None
  if main:
    _trim_metrics(metrics_file, start)
    # purge_step hides the events a crashed run logged after the checkpoint it resumes from
    writer = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start + 1 if start else None)
  end = t.num_steps if stop_after is None else min(t.num_steps, start + stop_after)
  bar = tqdm(total=t.num_steps, initial=start, desc="train", dynamic_ncols=True, disable=not main)
  batches = prefetch.Prefetcher(it, lambda b: trainer.shard_batch(b, t.batch_size), end - start)
  last: dict = {}
  data_state = it.state()  # the position after the last batch a step consumed (not prefetched)
  first_bad = np.int32(-1)
  t0, logged_at = time.perf_counter(), start
  try:
    first = next(batches) if end > start else None
    if first is not None and jax.process_count() > 1:
      # every process compiles, then all start together: gloo gives up on a peer >30 s late
      trainer.compile(state, first[0], rng)
      run_setup.barrier("train_step_compiled")
    for step in range(start, end):
      batch, data_state = first if step == start else next(batches)
      state, metrics = trainer.step(state, batch, rng, first_bad)
      first_bad = metrics["first_bad_step"]
      log_now = (step + 1) % t.log_every == 0 or step + 1 == end
      save_now = (step + 1) % t.save_every == 0 or step + 1 == end
      if save_now and not log_now:
        log_now = int(first_bad) >= 0  # the save reads the state anyway: no extra wait
      if log_now:  # stops here after a non-finite step, with its metrics logged
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = int(m.pop("first_bad_step"))
        dt = time.perf_counter() - t0  # the first interval includes compilation
        m.update(step=step + 1, tokens_per_s=m["tokens"] * (step + 1 - logged_at) / max(dt, 1e-9),
                 steps_per_s=(step + 1 - logged_at) / max(dt, 1e-9))
        t0, logged_at = time.perf_counter(), step + 1
        last = m
        if main:
          for k, v in m.items():
            if k != "step":
              writer.add_scalar(f"train/{k}", v, step + 1)
          with open(metrics_file, "a") as f:
            f.write(json.dumps(_json_safe(m), allow_nan=False) + "\n")
        if bad >= 0:
          raise _diverged(bad, m, ckpt)
        bar.set_postfix(loss=f"{m['loss']:.3f}", lr=f"{m['learning_rate']:.2e}")
      if save_now:  # never a non-finite state: the flag was read above
        ckpt.save(step + 1, state, data_state)
      bar.update(1)
  finally:
    batches.close()
    bar.close()
    ckpt.close()
    if writer is not None:
      writer.close()
    run_setup.write_json(os.path.join(workdir, "data_stats.json"), {
        "source": dataclasses.asdict(run.train_data.source_stats),
        "batching": data_state.get("stats", {})}, indent=2)
  if main and os.path.exists(metrics_file):
    _plot_loss(metrics_file, os.path.join(workdir, "loss.png"))
  return last
