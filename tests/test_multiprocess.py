"""Two real processes (jax.distributed on 127.0.0.1, CPU collectives over gloo, 2 devices each)
against one process with the same 4-device data mesh and the same global batch."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.test_training import _final_params, _losses, _workdir, corpus_dir, docstring_cfg  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 1200  # generous: a loaded 2-core machine compiles the step for minutes


def mp_cfg(num_steps=6, save_every=3):
  cfg = docstring_cfg(num_steps=num_steps, save_every=save_every)
  cfg.train.mesh_shape = (4, 1, 1)  # 4 devices: 2 processes x 2, or 4 of the 8 in one process
  return cfg


def lm_mp_cfg(corpus: str):
  """The language model of test_crt's lm_cfg on 2 devices (train_lm.py's loop), 6 steps."""
  from configs import lm_ptb
  cfg = lm_ptb.lm_config("crt", "half", context_len=8)
  cfg.model.update(d_model=16, num_heads=2, d_ff=32, relative_attention_num_buckets=8, dropout_rate=0.1)
  cfg.data.update(data_dir=corpus, eval_batch_size=2)
  cfg.train.update(batch_size=8, num_steps=6, warmup_steps=1, log_every=1, save_every=3, eval_every=3,
                   learning_rate=3e-3, mesh_shape=(2, 1, 1))
  return cfg


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


_CACHE = {}


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
  """A persistent compilation cache shared by the workers (later runs skip compiling the step)."""
  _CACHE["dir"] = str(tmp_path_factory.mktemp("jit_cache"))


def _start(workdir, num_processes=2, local_devices=2, **kw):
  port = _free_port()
  procs = []
  for pid in range(num_processes):
    args = dict(kw, workdir=workdir, port=port, num_processes=num_processes, process_id=pid,
                local_devices=local_devices, compilation_cache=_CACHE["dir"])
    log = open(os.path.join(workdir, f"worker{pid}.log"), "w")
    procs.append(subprocess.Popen([sys.executable, "-m", "tests.mp_worker", json.dumps(args)], cwd=REPO,
                                  stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, XLA_FLAGS="")))
  return procs


def _kill(procs):
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()


def _wait(procs, workdir, timeout=TIMEOUT):
  deadline = time.time() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(1, deadline - time.time()))
  finally:
    _kill(procs)
  for i, p in enumerate(procs):
    if p.returncode != 0:
      with open(os.path.join(workdir, f"worker{i}.log")) as f:
        tail = f.read()[-3000:]
      pytest.fail(f"worker {i} exited with {p.returncode}:\n{tail}")


def _run2(workdir, **kw):
  _wait(_start(workdir, **kw), workdir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_dir):  # noqa: F811
  """The 1-process run: 6 steps, checkpoints at 3 and 6."""
  w = _workdir(tmp_path_factory.mktemp("ref"), corpus_dir, "ref")
  from srformer_jax import train_lib
  train_lib.train(mp_cfg(), w)
  return w


def _assert_params_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=0), a, b)


@pytest.mark.slow  # ~2 min on 2 cores (two processes compile); run with pytest -m slow
def test_two_processes_match_one_and_checkpoints_cross_over(tmp_path, corpus_dir, reference):  # noqa: F811
  from srformer_jax import train_lib
  cfg = mp_cfg()
  ref_losses = dict(_losses(reference))
  ref_params = _final_params(cfg, reference)
  # 2 processes, steps 1-3; then 1 process resumes their checkpoint (2 -> 1)
  w = _workdir(tmp_path, corpus_dir, "two_then_one")
  _run2(w, stop_after=3)
  got = dict(_losses(w))
  assert sorted(got) == [1, 2, 3]
  np.testing.assert_allclose([got[s] for s in (1, 2, 3)], [ref_losses[s] for s in (1, 2, 3)], atol=1e-5, rtol=0)
  with open(os.path.join(w, "worker1.log")) as f:
    assert "process 1 done" in f.read()
  train_lib.train(cfg, w)
  got = dict(_losses(w))
  assert sorted(got) == list(range(1, 7))
  np.testing.assert_allclose([got[s] for s in range(1, 7)], [ref_losses[s] for s in range(1, 7)], atol=1e-5, rtol=0)
  _assert_params_close(_final_params(cfg, w), ref_params)
  # the 1-process checkpoint at step 3 resumed by 2 processes (1 -> 2)
  w2 = str(tmp_path / "one_then_two")
  shutil.copytree(reference, w2)
  shutil.rmtree(os.path.join(w2, "checkpoints", "6"))
  _run2(w2)
  got = dict(_losses(w2))
  assert sorted(got) == list(range(1, 7))  # metrics.jsonl trimmed back to step 3, then 4..6
  np.testing.assert_allclose([got[s] for s in range(4, 7)], [ref_losses[s] for s in range(4, 7)], atol=1e-5, rtol=0)
  _assert_params_close(_final_params(cfg, w2), ref_params)


def _kill_one_rank_then_rerun(w, reference, kill_when, timeout=TIMEOUT):
  """Kills process 1 once `kill_when()` is true (polled), then reruns both processes; the rerun
  must finish like the uninterrupted 1-process reference."""
  cfg = mp_cfg()
  procs = _start(w, save_every=2, step_delay=1.0)
  deadline = time.time() + timeout
  try:
    while not kill_when():
      assert time.time() < deadline and all(p.poll() is None for p in procs), "no checkpoint at step 2"
      time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    try:  # process 0 fails (its peer is gone) or hangs in a collective
      procs[0].wait(timeout=20)
    except subprocess.TimeoutExpired:
      pass
  finally:
    _kill(procs)
  steps = [s for s, _ in _losses(w)]
  assert steps and steps[-1] < 6, "the run was not interrupted"
  _wait(_start(w, save_every=2), w, timeout=timeout)
  assert [s for s, _ in _losses(w)] == list(range(1, 7))
  _assert_params_close(_final_params(cfg, w), _final_params(cfg, reference))
  ref = dict(_losses(reference))
  np.testing.assert_allclose([l for _, l in _losses(w)], [ref[s] for s in range(1, 7)], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_killed_process_then_rerun_finishes_like_uninterrupted(tmp_path, corpus_dir, reference):  # noqa: F811
  w = _workdir(tmp_path, corpus_dir, "killed")
  manifest = os.path.join(w, "checkpoints", "2", "checksums.json")
  _kill_one_rank_then_rerun(w, reference, lambda: os.path.exists(manifest))


@pytest.mark.slow
def test_rank_killed_before_first_manifest_then_rerun_resumes(tmp_path, corpus_dir, reference):  # noqa: F811
  """Process 1 killed right after orbax finished checkpoint 2, before its manifest (written when
  the save of step 4 starts): the rerun resumes from step 2 (unverified), bounded in time."""
  w = _workdir(tmp_path, corpus_dir, "killed_early")
  step_dir = os.path.join(w, "checkpoints", "2")
  _kill_one_rank_then_rerun(w, reference, lambda: os.path.isdir(step_dir), timeout=600)
  with open(os.path.join(w, "worker0.log")) as f:
    log = f.read()
  # logged only once step 2 was restored (the workers log warnings, not the INFO "resumed from")
  assert "checkpoint step 2 in" in log and "restored, but its bytes were not verified" in log, log[-3000:]
  assert not os.path.exists(os.path.join(w, "checkpoints_damaged"))


class _FakeKV:
  """The coordination service's key-value store as the peer watch uses it; `down` makes it fail."""

  def __init__(self):
    self.store, self.down = {}, False

  def key_value_set(self, key, value, allow_overwrite=False):
    if self.down:
      raise RuntimeError("UNAVAILABLE: connection refused")
    self.store[key] = value

  def key_value_dir_get(self, prefix):
    if self.down:
      raise RuntimeError("UNAVAILABLE: connection refused")
    return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]


@pytest.mark.parametrize("case", ["silent_peer", "done_peer", "busy_peer", "coordinator_down"])
def test_peer_watch_decides_from_heartbeats(monkeypatch, case):
  """The watch thread of processes.start_peer_watch, against a fake key-value store (process 0 of 2)."""
  from jax._src import distributed

  from srformer_jax import processes
  kv = _FakeKV()
  monkeypatch.setattr(distributed.global_state, "client", kv)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  monkeypatch.setattr(processes, "_watch", {})
  messages = []
  kv.store["srformer/heartbeat/1"] = {"silent_peer": "7", "done_peer": "done", "busy_peer": "busy",
                                      "coordinator_down": "7"}[case]
  kv.down = case == "coordinator_down"
  assert processes.start_peer_watch(timeout_s=0.3, interval_s=0.05, on_gone=messages.append)
  try:
    time.sleep(1.0)
  finally:
    processes.stop_peer_watch()
  if case in ("done_peer", "busy_peer"):
    assert messages == []
  else:
    assert messages, "a silent peer was not noticed"
    what = "process 1 has sent no heartbeat" if case == "silent_peer" else "the coordinator (process 0) has not"
    assert messages[0].startswith("srformer_jax: process 0 of 2 stops: " + what), messages[0]
  if case != "coordinator_down":
    assert kv.store["srformer/heartbeat/0"] == "done"  # stopping on purpose tells the peers


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1])
def test_survivor_of_a_killed_peer_exits_promptly_with_one_line(tmp_path, corpus_dir, victim):  # noqa: F811
  """A worker killed mid-run: the coordinator ends within the peer timeout plus a few heartbeats,
  exit status 1, with one line that says so (no C++ abort, no traceback). (A killed process 0 takes
  the coordination service with it; jax's client then aborts the others at once, with its own
  message: processes.py says why that case is not ours to word.)"""
  timeout_s = 10
  w = _workdir(tmp_path, corpus_dir, f"victim{victim}")
  procs = _start(w, num_steps=10_000, save_every=10_000, step_delay=0.5, peer_timeout_s=timeout_s)
  survivor = procs[1 - victim]
  deadline = time.time() + TIMEOUT
  try:
    metrics = os.path.join(w, "metrics.jsonl")
    while not (os.path.exists(metrics) and _losses(w)):  # both processes are in the training loop
      assert time.time() < deadline and all(p.poll() is None for p in procs), "the run did not start"
      time.sleep(0.1)
    procs[victim].send_signal(signal.SIGKILL)
    killed_at = time.time()
    procs[victim].wait()
    survivor.wait(timeout=timeout_s + 30)
    took = time.time() - killed_at
  finally:
    _kill(procs)
  with open(os.path.join(w, f"worker{1 - victim}.log")) as f:
    log = f.read()
  last = log.strip().splitlines()[-1]
  assert survivor.returncode == 1, (survivor.returncode, log[-2000:])
  assert last.startswith(f"srformer_jax: process {1 - victim} of 2 stops: ") and "Rerun the job" in last, last
  assert "process 1 has sent no heartbeat" in last
  assert "Traceback" not in log and "Check failure" not in log, log[-2000:]
  assert took < timeout_s + 20, took


@pytest.mark.slow
def test_two_process_eval_gathers_all_examples(tmp_path, corpus_dir, reference):  # noqa: F811
  from srformer_jax import eval_lib
  cfg = mp_cfg()
  w = str(tmp_path / "eval")
  shutil.copytree(reference, w)
  one = eval_lib.evaluate(cfg, reference)
  with open(os.path.join(reference, "predictions.jsonl")) as f:
    want = f.readlines()
  _run2(w, evaluate=True)  # training is finished: it only evaluates
  with open(os.path.join(w, "predictions.jsonl")) as f:
    got = f.readlines()
  assert len(got) == one["num_examples"] == cfg.data.max_eval_examples
  assert got == want


def test_two_checkpointers_save_at_once_on_two_processes(tmp_path):
  """The language model's run and best-validation Checkpointers save in the same steps; orbax's
  barrier keys are the same for every manager unless prefixed, and without the prefix this failed
  at once with "Barrier ... is already ongoing" (checkpoint.barrier_prefix)."""
  from srformer_jax import checkpoint
  # ~10 s; without the prefix it hung or failed
  _wait(_start(str(tmp_path), local_devices=1, ckpt_pair=12), str(tmp_path), timeout=180)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "11", "12"]
  assert os.listdir(tmp_path / "best") == ["12"]
  for d in ("checkpoints/10", "checkpoints/11", "checkpoints/12", "best/12"):
    assert checkpoint.verify(str(tmp_path / d)) is None, d  # finished, with its manifest


def test_two_processes_train_the_language_model_as_one_with_two_devices(tmp_path):
  """train_lm.py's loop on 2 processes x 1 device equals 1 process on 2 devices: the same losses,
  validation and final parameters (the default suite's multi-host run: bounded, 127.0.0.1)."""
  from srformer_jax.crt import train as lm_train
  from tests.test_crt import write_corpus
  corpus = write_corpus(tmp_path)
  cfg = lm_mp_cfg(corpus)
  one = str(tmp_path / "one")
  lm_train.train(cfg, one)
  two = str(tmp_path / "two")
  os.makedirs(two)
  _wait(_start(two, local_devices=1, lm_corpus=corpus), two, timeout=300)
  rows = lambda w: [json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]  # noqa: E731
  a, b = rows(one), rows(two)
  assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, 7))
  for key in ("loss", "grad_norm", "param_norm"):  # float32 sums in another order: ~1e-7 relative
    np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], atol=1e-5, rtol=1e-6)
  np.testing.assert_allclose([r["valid_nll"] for r in b if "valid_nll" in r],
                             [r["valid_nll"] for r in a if "valid_nll" in r], atol=1e-5, rtol=0)
  _assert_params_close(lm_params(cfg, two), lm_params(cfg, one))


def lm_params(cfg, workdir):
  """The parameters of a language-model run's latest checkpoint (on one device)."""
  from srformer_jax import checkpoint
  from srformer_jax.crt import train as lm_train
  from srformer_jax.crt.model import init_params
  model, _, _ = lm_train.setup(cfg, workdir)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=one),
                          jax.eval_shape(lambda r: init_params(model.config, r), jax.random.key(0)))
  ck = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    return ck.restore_params(abstract)[0]
  finally:
    ck.close()
