"""Processes of a multi-host run: jax.distributed start-up, which process leads, barriers on the
coordination service, and the batch rows each process holds.

Kept below everything that needs them (checkpoints, run setup, the trainers), so none of those
import each other for a barrier.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import time

import jax

log = logging.getLogger(__name__)


def init_distributed(cfg):
  """jax.distributed.initialize() from config.train (coordinator_address / num_processes /
  process_id; unset ones are autodetected from the environment, e.g. SLURM or TPU pods)."""
  t = cfg.train
  explicit = t.coordinator_address or t.num_processes
  if not (t.distributed or explicit) or jax.distributed.is_initialized():
    return
  jax.distributed.initialize(coordinator_address=t.coordinator_address or None,
                             num_processes=t.num_processes or None, process_id=t.process_id)
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())
  timeout = t.peer_timeout_s
  if timeout:
    start_peer_watch(timeout)


# -- Peers that die ------------------------------------------------------------------------------
# A killed or crashed process leaves the others blocked in a collective until the coordination
# service misses its heartbeats (100 s by default) and aborts them with a C++ stack trace. Each
# process therefore beats on the coordination service's key-value store from a daemon thread and
# watches the others' beats: a peer silent for `peer_timeout_s` (or a coordinator that no longer
# answers) ends this process with one line and exit status 1. Checkpoints are unaffected: orbax
# commits a step atomically, and an interrupted save is ignored on restore.
# Process 0 hosts the service: when it dies, jax's coordination client in every other process sees
# its connection close and aborts that process at once, with its own message (a C++ check failure).
# jax offers no hook for that (the client's error callback cannot be given a Python function: its
# status argument has no Python conversion), so that case stays prompt but not one line.
PEER_TIMEOUT_S = 30
_BEAT_PREFIX = "srformer/heartbeat/"
_DONE, _BUSY = "done", "busy"
_watch: dict = {}


def start_peer_watch(timeout_s: float = PEER_TIMEOUT_S, interval_s: float | None = None,
                     on_gone=None) -> bool:
  """Starts this process's heartbeat and its watch on the others (once; needs jax.distributed).

  `on_gone(message)` is called when a peer is gone (default: print the message, exit status 1).
  Returns whether a watch runs.
  """
  from jax._src import distributed
  client = distributed.global_state.client
  if client is None or jax.process_count() == 1 or _watch:
    return bool(_watch)
  me, n = jax.process_index(), jax.process_count()
  interval = interval_s or max(0.5, timeout_s / 10)
  stop = threading.Event()
  _watch.update(client=client, key=f"{_BEAT_PREFIX}{me}", stop=stop, state="alive")

  def gone(message: str):
    if stop.is_set():  # this process is exiting on its own
      return
    (on_gone or _exit_with)(f"srformer_jax: process {me} of {n} stops: {message}. Rerun the job to "
                            f"resume from its last checkpoint.")

  def run():
    beat, last_answer = 0, time.monotonic()
    seen = {p: (None, last_answer) for p in range(n) if p != me}  # peer -> (last value, when it changed)
    while not stop.wait(interval):
      beat += 1
      now = time.monotonic()
      try:
        value = _watch["state"] if _watch["state"] != "alive" else str(beat)
        client.key_value_set(_watch["key"], value, allow_overwrite=True)
        beats = dict(client.key_value_dir_get(_BEAT_PREFIX))
        last_answer = now
      except Exception:  # noqa: BLE001 - the service is in process 0: it is gone or unreachable
        if now - last_answer > timeout_s:
          gone(f"the coordinator (process 0) has not answered for {now - last_answer:.0f} s")
        continue
      for p in range(n):
        if p == me:
          continue
        value = beats.get(f"{_BEAT_PREFIX}{p}")
        if value in (_DONE, _BUSY) or value != seen[p][0]:
          seen[p] = (value, now)
        elif now - seen[p][1] > timeout_s:
          gone(f"process {p} has sent no heartbeat for {now - seen[p][1]:.0f} s (killed, crashed or "
               f"unreachable)")

  threading.Thread(target=run, name="srformer-peer-watch", daemon=True).start()
  atexit.register(stop_peer_watch)  # a normal exit: the peers read "done", not silence
  return True


def stop_peer_watch():
  """Tells the peers this process ends on purpose, and stops watching them."""
  if not _watch or _watch["stop"].is_set():
    return
  _watch["stop"].set()
  with contextlib.suppress(Exception):
    _watch["client"].key_value_set(_watch["key"], _DONE, allow_overwrite=True)


@contextlib.contextmanager
def busy():
  """Marks work that may hold the GIL for long (e.g. SentencePiece training in C++): the peers do not
  time this process out meanwhile (the coordination service's own, slower heartbeat still does)."""
  if not _watch:
    yield
    return
  _watch["state"] = _BUSY
  with contextlib.suppress(Exception):
    _watch["client"].key_value_set(_watch["key"], _BUSY, allow_overwrite=True)
  try:
    yield
  finally:
    _watch["state"] = "alive"


def _exit_with(message: str):
  # no logging.shutdown(): the main thread may hold a handler's lock while it waits on the dead peer
  with contextlib.suppress(Exception):
    sys.stdout.flush()
  print("\n" + message, file=sys.stderr, flush=True)  # a new line: a progress bar may own this one
  os._exit(1)


def is_main() -> bool:
  return jax.process_index() == 0


_BARRIERS: dict[str, int] = {}
BARRIER_TIMEOUT_S = 3600  # process 0 may tokenise a large split while the others wait


def barrier(name: str):
  """All processes wait here (no-op with one process).

  Uses the coordination service's barrier, not a device collective: gloo gives up on a peer more
  than 30 s late when it sets up a collective, while process 0 may prepare files for minutes.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed
  client = distributed.global_state.client
  if client is None:  # not started by jax.distributed: a device collective is all there is
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
    return
  _BARRIERS[name] = _BARRIERS.get(name, 0) + 1  # barrier ids are single-use
  client.wait_at_barrier(f"srformer_{name}_{_BARRIERS[name]}", timeout_in_ms=BARRIER_TIMEOUT_S * 1000)


def main_first(name: str, fn):
  """Runs fn() on process 0, then (after a barrier) on the others, which find its files ready."""
  out = fn() if is_main() else None
  barrier(name)
  return out if is_main() else fn()


def local_rows(batch_sharding, global_batch: int) -> tuple[int, int]:
  """The rows [start, stop) of a [global_batch, ...] array this process holds under the sharding."""
  idx = batch_sharding.addressable_devices_indices_map((global_batch, 1))
  starts = sorted({s[0].indices(global_batch)[:2] for s in idx.values()})
  start, stop = starts[0][0], max(b for _, b in starts)
  covered = sum(b - a for a, b in starts)
  if covered != stop - start:
    raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows {starts}: "
                     f"order the mesh devices by process")
  return start, stop
