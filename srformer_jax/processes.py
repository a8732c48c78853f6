"""Processes of a multi-host run: jax.distributed start-up, which process leads, barriers on the
coordination service, and the batch rows each process holds.

Kept below everything that needs them (checkpoints, run setup, the trainers), so none of those
import each other for a barrier.
"""

from __future__ import annotations

import logging

import jax

log = logging.getLogger(__name__)


def init_distributed(cfg):
  """jax.distributed.initialize() from config.train (coordinator_address / num_processes /
  process_id; unset ones are autodetected from the environment, e.g. SLURM or TPU pods)."""
  t = cfg.train
  explicit = t.get("coordinator_address") or t.get("num_processes")
  if not (t.get("distributed") or explicit) or jax.distributed.is_initialized():
    return
  jax.distributed.initialize(coordinator_address=t.get("coordinator_address") or None,
                             num_processes=t.get("num_processes") or None,
                             process_id=t.get("process_id"))
  log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
           jax.local_device_count(), jax.device_count())


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
