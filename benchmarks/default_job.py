"""The README's main command, measured: trains and evaluates configs/default.py in a fresh workdir.

Writes results/default_job_<platform>.json: the first and last logged training loss, the steps,
ROUGE on the test split, the wall time of the whole command, the corpus it built (counts, Python and
package versions), the first three test examples with the model's summaries, and what the README's
`summarize(...)` snippet prints on the trained run (the README's figures come from it).

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
# The README's snippet: docstrings the model has not seen (written here; not in any package), in the
# corpus's "name(signature): body" form. default_job.py runs exactly this and records what it prints.
SNIPPET = [
    "read_lines(path): Reads the file at path and returns its lines without their line endings. A "
    "missing file raises FileNotFoundError, and an empty file gives an empty list.",
    "close_all(self): Closes every connection this pool has opened, waiting for each one to finish "
    "its current request. Connections opened after this call are not affected.",
]
SNIPPET_CODE = ("import json, sys; from srformer_jax import load_run, summarize; "
                "run = load_run(sys.argv[1]); print(json.dumps(summarize(json.loads(sys.argv[2]), run)))")


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
    with open(os.path.join(workdir, "corpus", "corpus_stats.json")) as f:
      corpus = json.load(f)
    with open(os.path.join(workdir, "predictions.jsonl")) as f:  # the test split, in its order
      preds = [json.loads(line) for _, line in zip(range(3), f)]
    with open(os.path.join(workdir, "corpus", "test.jsonl")) as f:
      docs = [json.loads(line) for _, line in zip(range(3), f)]
    examples = [dict(id=d["id"], document=d["document"], reference=p["reference"], prediction=p["prediction"])
                for d, p in zip(docs, preds)]
    out = subprocess.run([sys.executable, "-c", SNIPPET_CODE, workdir, json.dumps(SNIPPET)], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True)
    snippet = [dict(document=d, summary=s) for d, s in zip(SNIPPET, json.loads(out.stdout.splitlines()[-1]))]
  payload = {"machine": common.machine(jax), "command": "python train.py --config=configs/default.py "
             "--workdir=runs/default" + (" (quick)" if args.quick else ""),
             "first_loss": losses[0]["loss"], "first_step": losses[0]["step"], "last_loss": losses[-1]["loss"],
             "steps": losses[-1]["step"], "rouge1": rouge["rouge1"], "rouge2": rouge["rouge2"],
             "rougeL": rouge["rougeL"], "test_examples_scored": rouge["num_examples"], "wall_s": wall,
             "load_avg_after": os.getloadavg(), "corpus": corpus, "test_examples": examples,
             "summarize_snippet": snippet}
  common.write(args.out, f"default_job_{'quick' if args.quick else args.platform}", payload)


if __name__ == "__main__":
  main()
