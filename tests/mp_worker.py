"""One process of a multi-process training run on CPU, started by tests/test_multiprocess.py.

python -m tests.mp_worker '<json: workdir, port, num_processes, process_id, local_devices,
                          num_steps, save_every, stop_after, step_delay, evaluate, compilation_cache,
                          peer_timeout_s, lm_corpus>'

With `lm_corpus` (a WordPTB-layout folder) it trains the language model of tests/test_crt.py's
`lm_cfg` there (train_lm.py's loop) instead of the summarisation model. With `ckpt_pair` (a number
of rounds) it only saves: two Checkpointers at once, as the language model's run and best ones do.
"""

import json
import os
import sys

args = json.loads(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.get('local_devices', 2)}"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"

import logging  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the default on CPU; explicit
if args.get("compilation_cache"):  # later runs of the test reuse the compiled step
  jax.config.update("jax_compilation_cache_dir", args["compilation_cache"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

from srformer_jax import eval_lib, train_lib  # noqa: E402
from tests.test_multiprocess import mp_cfg  # noqa: E402


def ckpt_pair(rounds: int):
  """Each round: an asynchronous save in <workdir>/checkpoints, then a waited one in <workdir>/best,
  so the first manager's finalize thread and the second's save meet orbax's barriers together."""
  import jax.numpy as jnp
  from srformer_jax import checkpoint, runfiles
  jax.distributed.initialize(f"127.0.0.1:{args['port']}", args["num_processes"], args["process_id"])
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = {"w": jax.jit(lambda: jnp.ones((64, 64)), out_shardings=replicated)()}
  run = checkpoint.Checkpointer(os.path.join(args["workdir"], runfiles.CHECKPOINTS))
  best = checkpoint.Checkpointer(os.path.join(args["workdir"], runfiles.BEST_DIR), 1)
  for i in range(1, rounds + 1):
    run.save(i, state, {"round": i})
    best.save(i, state, {"round": i}, wait=True)
  run.close()
  best.close()


def main():
  logging.basicConfig(level=logging.INFO)
  if args.get("ckpt_pair"):
    ckpt_pair(args["ckpt_pair"])
    print(f"process {jax.process_index()} done", flush=True)
    return
  if args.get("lm_corpus"):
    from tests.test_multiprocess import lm_mp_cfg
    cfg = lm_mp_cfg(args["lm_corpus"])
  else:
    cfg = mp_cfg(args.get("num_steps", 6), args.get("save_every", 3))
  if args.get("num_processes", 1) > 1:
    cfg.train.update(coordinator_address=f"127.0.0.1:{args['port']}",
                     num_processes=args["num_processes"], process_id=args["process_id"])
  if "peer_timeout_s" in args:
    cfg.train.peer_timeout_s = args["peer_timeout_s"]
  delay = args.get("step_delay", 0.0)
  if delay:  # slows the loop down so the test can kill a process mid-run
    step = train_lib.Trainer.step

    def slow_step(self, *a, **kw):
      time.sleep(delay)
      return step(self, *a, **kw)
    train_lib.Trainer.step = slow_step
  if args.get("lm_corpus"):
    from srformer_jax.crt import train as lm_train
    lm_train.train(cfg, args["workdir"], stop_after=args.get("stop_after"))
  else:
    train_lib.train(cfg, args["workdir"], stop_after=args.get("stop_after"))
  if args.get("evaluate"):
    eval_lib.evaluate(cfg, args["workdir"])
  print(f"process {jax.process_index()} done", flush=True)


if __name__ == "__main__":
  main()
