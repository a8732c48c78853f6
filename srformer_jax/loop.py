"""The training loop both model families run (`train.py` and `train_lm.py`).

A `Task` supplies what differs: the trainer (a `trainer.ShardedTrainer`), the host batches (an
iterator with `state()` / `restore()`), how a fresh state is made, what a logged record adds, and
optionally a validation at fixed steps that may stop training early. The loop does the rest, once
for both: resumption from the newest good checkpoint (with its data position), metrics.jsonl and
TensorBoard trimmed to the restored step, run files written by process 0, batches prefetched to the
devices, the divergence flag read where the metrics are read anyway (a flagged state is never
saved: `TrainingDiverged`), checkpoints, the progress bar and the loss plot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from srformer_jax import checkpoint, prefetch, processes, runfiles
from srformer_jax.errors import TrainingDiverged

log = logging.getLogger(__name__)
# a diverged step's NaN reaches tensorboardX, which warns before our one-line divergence error
logging.getLogger("tensorboardX.x2num").addFilter(
    lambda record: "NaN or Inf found" not in record.getMessage())


@dataclasses.dataclass
class Validation:
  """What a validation at a step returns: fields for that step's record, and whether to stop."""
  record: dict
  stop: bool = False


@dataclasses.dataclass
class Task:
  """What one model family gives the loop.

  trainer: a `trainer.ShardedTrainer` (step, shardings, checkpoint target).
  batches: host batches: `next()`, `state()` (the position after the last batch, for checkpoints)
    and `restore(state)`.
  put: a host batch -> the step's input (global arrays; called in the prefetch thread).
  init_state: rng -> a fresh sharded train state (when there is no checkpoint).
  model_config: the model's config dataclass (written to model_config.json).
  describe: (record, data_state, steps, seconds) -> record with the task's own fields
    (throughput, epochs, perplexity); `steps` were run in `seconds` since the last record.
  validate: optional (state, step, data_state) -> `Validation`, called every `validate_every` steps
    and at the end.
  position: data_state -> how a resumed run describes where its data resumes.
  on_end: optional (data_state) -> None, called once the loop ends (also on an error).
  """

  trainer: Any
  batches: Any
  put: Callable[[Any], Any]
  init_state: Callable[[jax.Array], Any]
  model_config: Any
  describe: Callable[[dict, dict, int, float], dict]
  validate: Callable[[Any, int, dict], Validation] | None = None
  validate_every: int = 0
  position: Callable[[dict], str] = lambda s: str(s)
  on_end: Callable[[dict], None] | None = None


def _json_safe(m: dict) -> dict:
  """metrics.jsonl stays strict JSON: a non-finite value is written as null."""
  return {k: v if not isinstance(v, float) or np.isfinite(v) else None for k, v in m.items()}


def trim_metrics(metrics_file: str, last_step: int):
  """Drops the lines logged after `last_step` (a resumed run logs those steps again)."""
  if not os.path.exists(metrics_file):
    return
  with open(metrics_file) as f:
    keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= last_step]
  with open(metrics_file + ".tmp", "w") as f:
    f.writelines(keep)
  os.replace(metrics_file + ".tmp", metrics_file)


def plot_loss(metrics_file: str, out_png: str):
  """Training loss (and validation loss where logged) against steps."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  train, valid = [], []
  with open(metrics_file) as f:
    for line in f:
      r = json.loads(line)
      if r.get("loss") is not None:
        train.append((r["step"], r["loss"]))
      if r.get("valid_nll") is not None:
        valid.append((r["step"], r["valid_nll"]))
  if not train:
    return
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(*zip(*train), label="train")
  if valid:
    ax.plot(*zip(*valid), "o-", label="valid")
    ax.legend()
  ax.set_xlabel("step")
  ax.set_ylabel("token cross-entropy (nats)")
  ax.set_title(os.path.basename(os.path.dirname(os.path.abspath(out_png))) or "training")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  plt.close(fig)


def diverged(step: int, m: dict, ckpt: checkpoint.Checkpointer) -> TrainingDiverged:
  last = ckpt.latest_step()
  where = f"step {last} in {ckpt.directory}" if last is not None else "none (no checkpoint was saved)"
  return TrainingDiverged(
      f"training diverged: non-finite loss, gradient norm or parameters at step {step} (loss="
      f"{m.get('loss')}, grad_norm={m.get('grad_norm')}, param_norm={m.get('param_norm')}); last good "
      f"checkpoint: {where}; no non-finite state was saved. "
      f"Lower train.learning_rate or check the data, then rerun to resume from that checkpoint.")


def train_loop(cfg, workdir: str, task: Task, stop_after: int | None = None) -> tuple[dict, bool]:
  """Trains `task` from the newest good checkpoint in workdir (or a fresh state) to
  `cfg.train.num_steps`, or `stop_after` steps of this invocation, or until its validation says
  stop. Returns (the last logged record, whether validation stopped it). Raises `TrainingDiverged`
  on a non-finite loss, gradient norm or parameters."""
  t = cfg.train
  main = processes.is_main()
  trainer = task.trainer
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, runfiles.CHECKPOINTS), t.keep_checkpoints)
  # replicated over the mesh (also across processes, where device_put of a local key cannot)
  rng = jax.jit(lambda: jax.random.key(t.seed), out_shardings=trainer.replicated)()
  if ckpt.latest_step() is not None:
    state, data_state = ckpt.restore(trainer.abstract_state())
    task.batches.restore(data_state)
    log.info("resumed from step %d (%s)", int(state.step), task.position(data_state))
  else:
    state = task.init_state(jax.random.fold_in(rng, 1))
  start = int(state.step)
  runfiles.write_json(os.path.join(workdir, runfiles.MODEL_CONFIG), dataclasses.asdict(task.model_config), indent=2)
  if main:
    with open(os.path.join(workdir, runfiles.RUN_CONFIG), "w") as f:
      f.write(cfg.to_json_best_effort(indent=2))

  from tensorboardX import SummaryWriter
  from tqdm.auto import tqdm
  metrics_file = os.path.join(workdir, runfiles.METRICS)
  writer = None
  if main:
    trim_metrics(metrics_file, start)
    # purge_step hides the events a crashed run logged after the checkpoint it resumes from
    writer = SummaryWriter(os.path.join(workdir, runfiles.TENSORBOARD), purge_step=start + 1 if start else None)
  end = t.num_steps if stop_after is None else min(t.num_steps, start + stop_after)
  bar = tqdm(total=t.num_steps, initial=start, desc="train", dynamic_ncols=True, disable=not main)
  batches = prefetch.Prefetcher(task.batches, task.put, end - start)
  last: dict = {}
  data_state = task.batches.state()  # the position after the last batch a step consumed (not prefetched)
  first_bad = np.int32(-1)
  t0, logged_at = time.perf_counter(), start
  stopped = False
  try:
    first = next(batches) if end > start else None
    if first is not None and jax.process_count() > 1:
      # every process compiles, then all start together: gloo gives up on a peer >30 s late
      trainer.compile(state, first[0], rng)
      processes.barrier("train_step_compiled")
    for step in range(start, end):
      batch, data_state = first if step == start else next(batches)
      state, metrics = trainer.step(state, batch, rng, first_bad)
      first_bad = metrics["first_bad_step"]
      done = step + 1
      log_now = done % t.log_every == 0 or done == end
      save_now = done % t.save_every == 0 or done == end
      validate_now = task.validate is not None and task.validate_every and (
          done % task.validate_every == 0 or done == end)
      if (save_now or validate_now) and not log_now:
        log_now = int(first_bad) >= 0  # the save or validation reads the state anyway: no extra wait
      record = None
      if log_now:  # stops here after a non-finite step, with its metrics logged
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = int(m.pop("first_bad_step"))
        dt = time.perf_counter() - t0  # the first interval includes compilation
        record = task.describe(dict(m, step=done), data_state, done - logged_at, max(dt, 1e-9))
        record["steps_per_s"] = (done - logged_at) / max(dt, 1e-9)
        t0, logged_at = time.perf_counter(), done
        if bad >= 0:
          _write_record(writer, metrics_file, record)
          raise diverged(bad, record, ckpt)
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['learning_rate']:.2e}")
      if validate_now:  # never on a non-finite state: the flag was read above
        v = task.validate(state, done, data_state)
        record = dict(record or {"step": done}, **v.record)
        stopped = v.stop
        t0 = time.perf_counter()  # the validation's time is not the steps'
      if record is not None:
        last = record
        _write_record(writer, metrics_file, record)
      if save_now or stopped:  # never a non-finite state: the flag was read above
        ckpt.save(done, state, data_state)
      bar.update(1)
      if stopped:
        ckpt.wait()
        break
  finally:
    batches.close()
    bar.close()
    ckpt.close()
    if writer is not None:
      writer.close()
    if task.on_end is not None:
      task.on_end(data_state)
  if main and os.path.exists(metrics_file):
    plot_loss(metrics_file, os.path.join(workdir, runfiles.LOSS_PLOT))
  return last, stopped


def _write_record(writer, metrics_file: str, record: dict):
  """One logged step: TensorBoard scalars and a strict-JSON line (process 0 only)."""
  if writer is None:
    return
  for k, v in record.items():
    if k != "step" and v is not None:
      writer.add_scalar(f"valid/{k[6:]}" if k.startswith("valid_") else f"train/{k}", v, record["step"])
  with open(metrics_file, "a") as f:
    f.write(json.dumps(_json_safe(record), allow_nan=False) + "\n")
