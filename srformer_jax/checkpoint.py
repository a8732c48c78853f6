"""Orbax checkpoints of the train state and the data position, verified on restore.

Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-save
leaves the previous checkpoint intact; `latest_step` only sees finished ones. Orbax 0.12.8 keeps no
checksums of the array files (tensorstore's OCDBT format does not either: flipped bytes inside a
compressed chunk can load silently), so after each save has finished, process 0 writes
`<step>/checksums.json` (size and SHA-256 of every file). Restore checks it first: a checkpoint
with a missing, changed or truncated file is reported in one log line and the next older one is
used.

The manifest of step N is written when the next save starts (or at close), so that saving never
waits for the asynchronous write; a process killed in between leaves a step that orbax finished
but without a manifest (as do runs saved before manifests existed). Such a step is not damage: if
orbax's own commit metadata says it finished and its metadata files parse, it is restored (a failed
restore is damage) with one log line saying its bytes were not verified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from srformer_jax.errors import CheckpointError
from srformer_jax.processes import barrier

log = logging.getLogger(__name__)
MANIFEST = "checksums.json"


class _NoItemMetadataWarning(logging.Filter):
  """Drops orbax's "Metadata file does not exist: .../state/_CHECKPOINT_METADATA" warning: reading
  an item's metadata looks for a step-level file inside the item, on every load (harmless)."""

  def filter(self, record: logging.LogRecord) -> bool:
    msg = record.getMessage()
    return not (msg.startswith("Metadata file does not exist") and "_CHECKPOINT_METADATA" in msg)


logging.getLogger("absl").addFilter(_NoItemMetadataWarning())




def sha256_file(path: str) -> str:
  """Hex SHA-256 of a file's bytes."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def _files(step_dir: str) -> list[str]:
  out = []
  for root, _, names in os.walk(step_dir):
    out += [os.path.relpath(os.path.join(root, n), step_dir) for n in names]
  return sorted(f for f in out if f != MANIFEST)


def write_manifest(step_dir: str):
  files = {f: {"size": os.path.getsize(os.path.join(step_dir, f)), "sha256": sha256_file(os.path.join(step_dir, f))}
           for f in _files(step_dir)}
  tmp = os.path.join(step_dir, MANIFEST + ".tmp")
  with open(tmp, "w") as fh:
    json.dump({"files": files}, fh, indent=1)
  os.replace(tmp, os.path.join(step_dir, MANIFEST))


UNVERIFIED = "unverified"  # verify(): no manifest, but orbax finished the step


def _json_file(path: str) -> dict:
  with open(path) as fh:
    out = json.load(fh)
  if not isinstance(out, dict):
    raise ValueError(f"{os.path.basename(path)} is not a JSON object")
  return out


def orbax_finished(step_dir: str) -> str | None:
  """None if orbax committed the step (its _CHECKPOINT_METADATA has a commit time, written just
  before the atomic rename) and the items' metadata files parse; else what is wrong (one line)."""
  try:
    meta = _json_file(os.path.join(step_dir, "_CHECKPOINT_METADATA"))
    if not meta.get("commit_timestamp_nsecs"):
      return "orbax did not record a commit of this step"
    _json_file(os.path.join(step_dir, "state", "_METADATA"))
    if os.path.isdir(os.path.join(step_dir, "data")):
      _json_file(os.path.join(step_dir, "data", "metadata"))
  except (OSError, ValueError) as e:
    return f"no {MANIFEST} and unreadable orbax metadata ({_one_line(e)})"
  return None


def verify(step_dir: str) -> str | None:
  """None if every file listed in the step's checksum manifest is there, whole and unchanged;
  UNVERIFIED if there is no manifest but orbax finished the step; else what is wrong (one line)."""
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(path):
    return orbax_finished(step_dir) or UNVERIFIED
  try:
    with open(path) as fh:
      files = json.load(fh)["files"]
  except (ValueError, KeyError) as e:
    return f"unreadable {MANIFEST}: {e}"
  for name, want in files.items():
    p = os.path.join(step_dir, name)
    if not os.path.exists(p):
      return f"{name} is missing"
    size = os.path.getsize(p)
    if size != want["size"]:
      return f"{name} has {size} bytes, {want['size']} when saved"
    if sha256_file(p) != want["sha256"]:
      return f"{name} has changed since it was saved (checksum mismatch)"
  return None


def _one_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def _flat(tree, prefix="") -> dict[str, object]:
  """{'a/b/c': leaf} of nested dicts (a parameter tree)."""
  if not isinstance(tree, dict):
    return {prefix.rstrip("/"): tree}
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f"{prefix}{k}/"))
  return out


def barrier_prefix(directory: str) -> str:
  """The prefix of this manager's cross-process barrier keys. Orbax's keys are otherwise the same
  for every manager ("ThreadSaveMultiHostValueHolder:set_value_start", ...): one manager's
  finalize thread and another's save then wait at one key at once, and the coordination service
  fails the second with "Barrier ... is already ongoing". The directory's own name (not its full
  path, which hosts may mount differently) keeps the keys of one run's managers apart."""
  return f"ckpt_{os.path.basename(os.path.normpath(directory))}"


class Checkpointer:
  """Saves and restores one directory of steps. Every process constructs it with the same
  directory; two Checkpointers saving in one run (the language model's run checkpoints and its
  best-validation one) must have different directory names (see `barrier_prefix`)."""

  def __init__(self, directory: str, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=barrier_prefix(self.directory))),
        item_names=("state", "data"),
    )
    self._pending: int | None = None  # a step saved asynchronously, its manifest not yet written

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def save(self, step: int, state, data_state: dict, wait: bool = False):
    self._finish_pending()
    self.manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
    self._pending = int(step)
    if wait:
      self._finish_pending()

  def _finish_pending(self):
    """Waits for the asynchronous save, then process 0 writes its checksum manifest."""
    self.manager.wait_until_finished()
    if self._pending is None:
      return
    barrier(f"ckpt_saved_{self._pending}")
    if jax.process_index() == 0 and os.path.isdir(self.step_dir(self._pending)):
      write_manifest(self.step_dir(self._pending))
    barrier(f"ckpt_manifest_{self._pending}")
    self._pending = None

  # --------------------------------------------------------------------------------------------
  # restore

  def _candidates(self, step: int | None) -> list[int]:
    steps = sorted(self.manager.all_steps(), reverse=True)
    return steps if step is None else [s for s in steps if s <= step][:1]

  def _check_shapes(self, step: int, params_target):
    """One-line error naming the first tensor whose shape differs between checkpoint and model."""
    try:
      meta = ocp.PyTreeCheckpointer().metadata(os.path.join(self.step_dir(step), "state")).item_metadata
      tree = getattr(meta, "tree", meta)
      saved = _flat(tree["params"], "params/")
    except Exception:  # no metadata to compare: the restore itself will complain
      return
    want = _flat(params_target, "params/")
    for name, leaf in want.items():
      if name not in saved:
        raise CheckpointError(f"checkpoint step {step} in {self.directory} does not fit the model: "
                              f"{name} (shape {tuple(leaf.shape)}) is not in the checkpoint (another "
                              f"config.model?)")
      got = tuple(getattr(saved[name], "shape", ()) or ())
      if got != tuple(leaf.shape):
        raise CheckpointError(f"checkpoint step {step} in {self.directory} does not fit the model: "
                              f"{name} has shape {got} in the checkpoint and {tuple(leaf.shape)} in the "
                              f"model (another config.model?)")

  def _restore_verified(self, step: int | None, params_target, restore_fn, quarantine: bool):
    """restore_fn(step) on the newest verified checkpoint at or before `step`; damaged newer ones
    are reported (one line each) and, with `quarantine`, moved to <dir>_damaged/."""
    problems = []
    candidates = self._candidates(step)
    if not candidates:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    for s in candidates:
      problem = verify(self.step_dir(s)) if jax.process_index() == 0 else None
      problem = _broadcast_problem(problem)
      unverified = problem == UNVERIFIED
      if unverified:
        problem = None
      if problem is None:
        self._check_shapes(s, params_target)
        try:
          out = restore_fn(s)
        except CheckpointError:
          raise
        except Exception as e:  # a damage the checksums could not see (e.g. written by hand)
          problem = f"restore failed: {_one_line(e)}"
      if problem is None:
        if unverified:  # logged once the restore worked (a failed one is reported as damage)
          log.warning("checkpoint step %d in %s has no %s (the process stopped before writing it, "
                      "or an older run): restored, but its bytes were not verified", s,
                      self.directory, MANIFEST)
        if problems:
          self._set_aside([p for p, _ in problems] if quarantine else [])
        return out, s
      problems.append((s, problem))
      older = [c for c in candidates if c < s]
      if older:  # else the CheckpointError below says it (one line, not two)
        log.warning("checkpoint step %d in %s is damaged (%s); falling back to step %d", s,
                    self.directory, problem, older[0])
    raise CheckpointError(f"no usable checkpoint in {self.directory}: "
                          + "; ".join(f"step {s}: {p}" for s, p in problems))

  def _set_aside(self, steps: list[int]):
    """Moves damaged steps out of the way (a resumed run saves those steps again)."""
    if not steps:
      return
    if jax.process_index() == 0:
      dest = self.directory + "_damaged"
      os.makedirs(dest, exist_ok=True)
      for s in steps:
        shutil.move(self.step_dir(s), os.path.join(dest, f"{s}.{int(time.time())}"))
    barrier("ckpt_set_aside")
    self.manager.reload()

  def restore(self, abstract_state, step: int | None = None, quarantine: bool = True):
    """Restores (state, data_state) into the shapes/shardings of `abstract_state` from the newest
    verified checkpoint (at or before `step`)."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)

    def restore_fn(s):
      out = self.manager.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
      return out["state"], out["data"]

    (state, data_state), _ = self._restore_verified(step, target.params, restore_fn, quarantine)
    return state, data_state

  def restore_params(self, abstract_params, step: int | None = None):
    """Only the parameters of a saved train state (whatever optimizer wrote it): (params, step)."""
    target = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params)}
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target)

    def restore_fn(s):
      out = self.manager.restore(s, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=target, restore_args=restore_args, partial_restore=True)))
      return out["state"]["params"]

    return self._restore_verified(step, target["params"], restore_fn, quarantine=False)

  def wait(self):
    self._finish_pending()

  def close(self):
    self._finish_pending()
    self.manager.close()


def _broadcast_problem(problem: str | None) -> str | None:
  """Process 0's verdict on a checkpoint, for every process (they must pick the same step)."""
  if jax.process_count() == 1:
    return problem
  from jax.experimental import multihost_utils
  code = 0 if problem is None else 1 if problem == UNVERIFIED else 2
  code = int(multihost_utils.broadcast_one_to_all(np.int32(code)))
  return [None, UNVERIFIED, problem or "damaged (reported by process 0)"][code]
