"""The README's main command, measured: trains and evaluates configs/default.py in a fresh workdir.

Writes results/default_job_<platform>.json: the first and last logged training loss, the steps,
ROUGE on the test split and the wall time of the whole command (the README's figures come from it).

  python benchmarks/default_job.py            # ~6 min on a 2-core CPU
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
  p = common.parser(__doc__.splitlines()[0])
  p.add_argument("--workdir", default="", help="where the run goes (default: a temporary directory)")
  args = p.parse_args()
  jax = common.setup_platform(args.platform)
  env = dict(os.environ, JAX_PLATFORMS=os.environ["JAX_PLATFORMS"])
  env.pop("XLA_FLAGS", None)  # one device, as on a user's machine
  with tempfile.TemporaryDirectory() as tmp:
    workdir = args.workdir or os.path.join(tmp, "default")
    cmd = [sys.executable, "train.py", "--config=configs/default.py", f"--workdir={workdir}"]
    if args.quick:
      cmd += ["--config.train.num_steps=4", "--config.train.log_every=2", "--config.data.max_eval_examples=4"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    wall = time.perf_counter() - t0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f]
    losses = [r for r in rows if r.get("loss") is not None]
    with open(os.path.join(workdir, "rouge.json")) as f:
      rouge = json.load(f)
  payload = {"machine": common.machine(jax), "command": "python train.py --config=configs/default.py "
             "--workdir=runs/default" + (" (quick)" if args.quick else ""),
             "first_loss": losses[0]["loss"], "first_step": losses[0]["step"], "last_loss": losses[-1]["loss"],
             "steps": losses[-1]["step"], "rouge1": rouge["rouge1"], "rouge2": rouge["rouge2"],
             "rougeL": rouge["rougeL"], "wall_s": wall, "load_avg_after": os.getloadavg()}
  common.write(args.out, f"default_job_{'quick' if args.quick else args.platform}", payload)


if __name__ == "__main__":
  main()
