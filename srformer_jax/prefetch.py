"""Batches prepared and put on the devices ahead of the step, in a background thread."""

from __future__ import annotations

import queue
import threading


class Prefetcher:
  """Iterates `(put(next(it)), it.state())` for `count` batches, `depth` ahead of the consumer.

  The data position travels with each batch, so a checkpoint saved after a step records the
  position after *that* batch, not after the ones already prefetched (exact resume).
  """

  _END = object()

  def __init__(self, it, put, count: int, depth: int = 2):
    self._q: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(it, put, count), daemon=True,
                                    name="batch-prefetch")
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self, it, put, count):
    try:
      for _ in range(count):
        if not self._put((put(next(it)), it.state())):
          return
      self._put(self._END)
    except BaseException as e:  # handed to the consumer, raised there
      self._put(e)

  def __iter__(self):
    return self

  def __next__(self):
    item = self._q.get()
    if item is self._END:
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self):
    self._stop.set()
    while True:  # unblock a producer waiting on a full queue
      try:
        self._q.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout=10)
