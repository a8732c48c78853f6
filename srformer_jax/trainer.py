"""What both model families train with: the optimizer, the divergence flag and a sharded, jitted step.

`ShardedTrainer` holds a mesh, the train state's shardings and one jitted pure step
`step(state, batch, rng, first_bad) -> (state, metrics)` with explicit in/out shardings and the
state donated. The summarisation model (`train_lib.Trainer`) and the language models
(`crt.train.LMTrainer`) each give it their state and step; the loop (`loop.train_loop`) runs either.

Divergence: a step whose loss, gradient norm or new parameters are not finite is flagged on the
device (`flag_nonfinite`); the loop reads the flag where it reads the metrics anyway and never saves
a flagged state.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from srformer_jax import processes, sharding


def make_optimizer(cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warmup and linear decay to 0 over `train.num_steps`, global-norm clipping."""
  t = cfg.train
  warmup = min(t.warmup_steps, t.num_steps)
  schedule = optax.join_schedules([
      optax.linear_schedule(0.0, t.learning_rate, max(warmup, 1)),
      optax.linear_schedule(t.learning_rate, 0.0, max(t.num_steps - warmup, 1)),
  ], [warmup]) if warmup else optax.linear_schedule(t.learning_rate, 0.0, t.num_steps)
  tx = optax.chain(
      optax.clip_by_global_norm(t.grad_clip) if t.grad_clip else optax.identity(),
      optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=t.weight_decay,
                  mask=None if t.decay_all_params else decay_mask),
  )
  return tx, schedule


def decay_mask(params):
  """Weight decay only on matrices (kernels, embeddings): not on biases, norm scales or RAF's
  threshold and leak scalars. Decaying those pulls them towards 0 (a norm scale of 0 silences a
  layer; a threshold towards 0 makes RAF fire on everything), the usual exclusion in AdamW
  fine-tuning recipes (HF's `no_decay = ["bias", "LayerNorm.weight"]`)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def flag_nonfinite(metrics: dict, params, step: jax.Array, first_bad: jax.Array, guard: bool = True) -> dict:
  """Adds metrics["first_bad_step"]: `step + 1` (1-based) when the loss, the gradient norm or (with
  `guard`) the norm of the new parameters (metrics["param_norm"]) is not finite, and the earlier
  flag when `first_bad` >= 0 already; -1 while every step was finite.

  Flagging instead of returning the input state costs one reduction over the new parameters and no
  second pass over the state (keeping it meant a select per state element and the update's norm,
  which made XLA write the update out: 6% of T5-small's step), and no host sync. `guard=False`
  leaves the parameter norm out (`benchmarks/input_pipeline.py` measures what it costs); a
  non-finite loss or gradient norm is still flagged. Finite gradients and parameters make a finite
  optimizer state for `make_optimizer`'s chain (clipping, AdamW's moments: convex combinations of
  finite values); another `tx` may need more."""
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
  if guard:
    metrics["param_norm"] = optax.global_norm(params)
    finite &= jnp.isfinite(metrics["param_norm"])
  metrics["first_bad_step"] = jnp.where((first_bad < 0) & ~finite, step + 1, first_bad).astype(jnp.int32)
  return metrics


class ShardedTrainer:
  """A mesh, the state's shardings and the jitted step of one model and optimizer.

  Args:
    step_fn: pure `(state, batch, rng, first_bad) -> (state, metrics)`.
    boxed_state: `rng -> state` with logically partitioned (boxed) parameters, for shapes and specs.
    mesh, rules: the device mesh and the logical-to-mesh axis rules.
    batch_leaves: {key: "batch" | "replicated"} for a batch dict whose leaves are not all split
      along their first (batch) axis (e.g. a scalar flag); default: every leaf split.
    state_specs: optional `(abstract_state, specs) -> specs` to adjust the state's partition specs
      (e.g. a recurrent memory split along the batch axis).
  """

  def __init__(self, step_fn: Callable, boxed_state: Callable, mesh, rules=sharding.DEFAULT_RULES,
               batch_leaves: dict[str, str] | None = None, state_specs: Callable | None = None):
    self.mesh, self.rules = mesh, rules
    self._boxed_state = boxed_state
    abstract = jax.eval_shape(boxed_state, jax.random.key(0))
    specs = nn.get_partition_spec(abstract)
    if state_specs is not None:
      specs = state_specs(abstract, specs)
    self.logical_specs = specs
    self.state_sharding = sharding.logical_to_sharding(specs, mesh, rules)
    self.batch_sharding = sharding.batch_sharding(mesh, rules)
    self.replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self._batch_leaves = batch_leaves
    batch_in = self.batch_sharding if batch_leaves is None else {
        k: self.batch_sharding if v == "batch" else self.replicated for k, v in batch_leaves.items()}
    with self.context():
      self._step = jax.jit(step_fn, in_shardings=(self.state_sharding, batch_in, self.replicated, self.replicated),
                           out_shardings=(self.state_sharding, self.replicated), donate_argnums=(0,))

  def context(self):
    """Mesh + logical axis rules, needed while tracing (activation sharding constraints)."""
    return sharding.mesh_context(self.mesh, self.rules)

  def init_state(self, rng):
    """A sharded fresh state."""
    with self.context():
      return jax.jit(lambda r: nn.unbox(self._boxed_state(r)), out_shardings=self.state_sharding)(rng)

  def abstract_state(self):
    """The state's shapes, dtypes and shardings (jax.ShapeDtypeStruct leaves), e.g. to restore into."""
    shapes = jax.eval_shape(lambda r: nn.unbox(self._boxed_state(r)), jax.random.key(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, self.state_sharding)

  def local_rows(self, global_batch: int) -> tuple[int, int]:
    """The rows [start, stop) of each global batch this process provides."""
    return processes.local_rows(self.batch_sharding, global_batch)

  def shard_batch(self, batch: dict, global_batch: int | None = None) -> dict:
    """Global arrays from this process's rows of each batch-split leaf (`global_batch`: the global
    row count, default as many as given); replicated leaves as given. Arrays already on the devices
    are used as they are."""
    def put(key, v):
      if isinstance(v, jax.Array):
        return v
      v = np.asarray(v)
      if self._batch_leaves is not None and self._batch_leaves.get(key) == "replicated":
        return jax.device_put(v, self.replicated)
      shape = None if global_batch is None else (global_batch,) + v.shape[1:]
      return jax.make_array_from_process_local_data(self.batch_sharding, v, shape)
    return {k: put(k, v) for k, v in batch.items()}

  def lower(self, state, batch, rng):
    """The step lowered for these arguments (arrays or jax.ShapeDtypeStruct; `batch` global, e.g.
    from shard_batch): `.compile()`, then `.cost_analysis()` / `.memory_analysis()` (as the
    benchmarks read them). The compiled step takes (state, batch, rng, first_bad) and returns
    (state, metrics), as `step` does."""
    first_bad = jax.ShapeDtypeStruct((), jnp.int32, sharding=self.replicated)
    with self.context():
      return self._step.lower(state, batch, rng, first_bad)

  def compile(self, state, batch, rng, global_batch: int | None = None):
    """Compiles the step ahead of its first call (for these argument shapes/shardings only);
    `step` then runs the compiled executable. `batch`: as for `step`."""
    self._compiled = self.lower(state, self.shard_batch(batch, global_batch), rng).compile()
    return self._compiled

  def step(self, state, batch, rng, first_bad=None, global_batch: int | None = None):
    """(state, metrics); `batch`: numpy (this process's rows) or global arrays; `first_bad`: the
    previous step's metrics["first_bad_step"] (default: none)."""
    if first_bad is None:
      first_bad = np.int32(-1)
    if not isinstance(first_bad, jax.Array):  # the step's own output sharding: no recompilation
      first_bad = jax.device_put(np.int32(first_bad), self.replicated)
    with self.context():
      return (getattr(self, "_compiled", None) or self._step)(state, self.shard_batch(batch, global_batch), rng,
                                                              first_bad)


Batch = dict[str, Any]
