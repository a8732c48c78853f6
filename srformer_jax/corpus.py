"""An offline summarization corpus: the docstrings of the Python code installed on this machine.

Each example pairs a function's, class's or method's docstring body (its explanation, arguments,
caveats) with its one-line summary, written by the authors of that code: real human-written text
pairs that every machine with this project installed has, so the default job needs no download.

What is read: the Python standard library and the packages the project installs (`RUNTIME`, the
runtime part of requirements.txt, and everything they require that is installed), as *source*:
each `.py` file is parsed (`ast`), never imported, so nothing runs, prints or opens a window, and a
file that does not parse, or is larger than `MAX_FILE_BYTES`, is skipped. Tests and vendored copies
are left out. Pairs are deduplicated by their body (the first in sorted module order is kept) and
split into train / validation / test by a hash of the qualified name (5% test, 5% validation), so
the split is stable across runs and machines; which pairs there are depends on the installed
versions, which the corpus records (`corpus_stats.json`).

The corpus is built once per machine and package set (a cache under ~/.cache/srformer_jax, or
$SRFORMER_JAX_CACHE) with a progress bar, and copied into each run that uses it.
"""

from __future__ import annotations

import ast
import concurrent.futures
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
import sysconfig

# The runtime distributions of requirements.txt (their dependencies that are installed come too).
RUNTIME = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "ml-collections", "numpy",
           "transformers", "safetensors", "sentencepiece", "tokenizers", "tensorflow-cpu", "tensorflow",
           "tensorflow-datasets", "rouge-score", "nltk", "tqdm", "matplotlib", "tensorboardX", "absl-py",
           "torch")
SKIP_DIRS = {"tests", "test", "testing", "_vendor", "vendor", "idlelib", "turtledemo", "tkinter", "lib2to3",
             "ensurepip", "site-packages", "dist-packages", "__pycache__", "examples", "benchmarks"}
MAX_FILE_BYTES = 1 << 20
SPLITS = ("train", "validation", "test")
STATS = "corpus_stats.json"
_WS = re.compile(r"\s+")


def _clean(text: str) -> str:
  return _WS.sub(" ", text).strip()


def split_docstring(doc: str) -> tuple[str, str] | None:
  """(summary, body) of a docstring whose first paragraph is a one-sentence summary of 4-40 words
  ending in a period and whose body has at least 12 words; None otherwise."""
  parts = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)
  if len(parts) != 2:
    return None
  summary, body = _clean(parts[0]), _clean(parts[1])
  if not (4 <= len(summary.split()) <= 40) or not summary.endswith(".") or len(body.split()) < 12:
    return None
  if summary.count(". ") > 1 or summary.startswith((">>>", "..", "#", "-", "*", ":")):  # not one sentence
    return None
  return summary, body


def _signature(node) -> str:
  try:
    args = ast.unparse(node.args)
  except Exception:  # noqa: BLE001 (an exotic signature: leave it out)
    return "()"
  return f"({args})" if len(args) <= 200 else "(...)"


def pairs_of_source(source: str, module: str) -> list[dict]:
  """[{id, document, summary}] of the public functions, classes and methods of one module's source."""
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return []
  rows = []

  def visit(body, prefix: str, in_class: bool):
    for node in body:
      if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith("_"):
        continue
      doc = ast.get_docstring(node)
      split = split_docstring(doc) if doc else None
      if split is not None:
        sig = "" if isinstance(node, ast.ClassDef) else _signature(node)
        rows.append({"id": f"{prefix}.{node.name}", "document": f"{node.name}{sig}: {split[1]}",
                     "summary": split[0]})
      if isinstance(node, ast.ClassDef) and not in_class:
        visit(node.body, f"{prefix}.{node.name}", True)

  visit(tree.body, module, False)
  return rows


def _pairs_of_file(job: tuple[str, str]) -> list[dict]:
  path, module = job
  try:
    if os.path.getsize(path) > MAX_FILE_BYTES:
      return []
    with open(path, encoding="utf-8") as f:
      return pairs_of_source(f.read(), module)
  except (OSError, UnicodeDecodeError):
    return []


def _distribution_closure(names) -> dict[str, str]:
  """{distribution: version} of the installed distributions among `names` and what they require."""
  out, todo = {}, list(names)
  while todo:
    name = todo.pop()
    key = re.split(r"[\s;<>=!~\[]", name.strip(), maxsplit=1)[0].lower().replace("_", "-")
    if not key or key in out:
      continue
    try:
      dist = importlib.metadata.distribution(key)
    except importlib.metadata.PackageNotFoundError:
      continue
    out[key] = dist.version
    todo += [r for r in (dist.requires or []) if "extra ==" not in r]
  return out


def _top_level_dirs(dists) -> dict[str, str]:
  """{import name: package directory} of the distributions' top-level packages."""
  out = {}
  for name in dists:
    dist = importlib.metadata.distribution(name)
    tops = (dist.read_text("top_level.txt") or "").split()
    if not tops:  # no top_level.txt: the first path component of its files
      tops = sorted({str(f).split("/")[0] for f in (dist.files or []) if str(f).endswith(".py")
                     and "/" in str(f) and not str(f).split("/")[0].endswith((".dist-info", ".data"))})
    for top in tops:
      if "/" in top or top.startswith("_"):
        continue
      try:  # a top-level package: found without running it
        spec = importlib.util.find_spec(top)
      except (ImportError, ValueError):
        continue
      if spec is not None and spec.submodule_search_locations:
        out[top] = list(spec.submodule_search_locations)[0]
  return out


def source_files(packages: dict[str, str], stdlib: bool = True) -> list[tuple[str, str]]:
  """(path, module name) of every .py file to read, sorted: the standard library's and each
  package directory's, without tests and vendored copies."""
  roots = [(d, name) for name, d in sorted(packages.items())]
  if stdlib:
    roots.append((sysconfig.get_paths()["stdlib"], ""))
  jobs = []
  for root, name in roots:
    for d, dirs, files in os.walk(root):
      dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.startswith("."))
      rel = os.path.relpath(d, root)
      parts = ([name] if name else []) + ([] if rel == "." else rel.split(os.sep))
      if any(not p.isidentifier() for p in parts):
        continue
      for f in sorted(files):
        if not f.endswith(".py") or f.startswith(("test_", "conftest")) or f.endswith("_test.py"):
          continue
        mod = parts + ([] if f == "__init__.py" else [f[:-3]])
        if mod and all(p.isidentifier() for p in mod):
          jobs.append((os.path.join(d, f), ".".join(mod)))
  return jobs


def build_docstring_corpus(packages: dict[str, str] | None = None, stdlib: bool = True,
                           progress: bool = True, workers: int | None = None) -> list[dict]:
  """[{id, document, summary}] from the sources (deduplicated by body; deterministic order).

  packages: {import name: directory}; None: the packages the project installs (`RUNTIME`)."""
  if packages is None:
    packages = _top_level_dirs(_distribution_closure(RUNTIME))
  jobs = source_files(packages, stdlib)
  from tqdm.auto import tqdm
  rows, seen = [], set()
  workers = workers or min(4, os.cpu_count() or 1)
  with concurrent.futures.ProcessPoolExecutor(workers) as pool:
    results = pool.map(_pairs_of_file, jobs, chunksize=32)
    for found in tqdm(results, total=len(jobs), desc="docstring corpus", unit="file", disable=not progress,
                      dynamic_ncols=True, mininterval=1.0):
      for r in found:
        if r["document"] not in seen:
          seen.add(r["document"])
          rows.append(r)
  return rows


def stdlib_rows(modules: str) -> list[dict]:
  """The pairs of a few standard-library modules or packages ("json,email"), read in this process."""
  stdlib = sysconfig.get_paths()["stdlib"]
  jobs = []
  for name in modules.split(","):
    base = os.path.join(stdlib, *name.strip().split("."))
    if os.path.isdir(base):
      jobs += source_files({name.strip(): base}, stdlib=False)
    elif os.path.exists(base + ".py"):
      jobs.append((base + ".py", name.strip()))
  rows, seen = [], set()
  for job in jobs:
    for r in _pairs_of_file(job):
      if r["document"] not in seen:
        seen.add(r["document"])
        rows.append(r)
  return rows


def split_of(example_id: str) -> str:
  h = int(hashlib.sha256(example_id.encode()).hexdigest(), 16) % 100
  return "test" if h < 5 else "validation" if h < 10 else "train"


def cache_dir() -> str:
  return os.environ.get("SRFORMER_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "srformer_jax")


def corpus_key(modules: str = "") -> str:
  """What the corpus depends on: Python, the installed versions of what it reads, the selection."""
  versions = _distribution_closure(RUNTIME) if not modules else {}
  blob = json.dumps([sys.version, versions, modules, MAX_FILE_BYTES, sorted(SKIP_DIRS), 2], sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _write(rows: list[dict], out_dir: str, stats: dict) -> dict[str, str]:
  os.makedirs(out_dir, exist_ok=True)
  paths = {s: os.path.join(out_dir, f"{s}.jsonl") for s in SPLITS}
  counts = dict.fromkeys(SPLITS, 0)
  files = {s: open(p + ".tmp", "w", encoding="utf-8") for s, p in paths.items()}
  try:
    for r in rows:
      s = split_of(r["id"])
      counts[s] += 1
      files[s].write(json.dumps(r, ensure_ascii=False) + "\n")
  finally:
    for f in files.values():
      f.close()
  for s, p in paths.items():
    os.replace(p + ".tmp", p)
  with open(os.path.join(out_dir, STATS), "w") as f:
    json.dump(dict(stats, counts=counts), f, indent=2)
  return paths


def write_corpus(out_dir: str, modules: str = "") -> dict[str, str]:
  """The corpus in out_dir (train/validation/test JSONL and corpus_stats.json), built once per
  machine into the cache and copied. `modules`: comma-separated standard-library modules to read
  instead of everything (e.g. "json,argparse": a small corpus for tests)."""
  paths = {s: os.path.join(out_dir, f"{s}.jsonl") for s in SPLITS}
  if all(os.path.exists(p) for p in paths.values()):
    return paths
  cached = os.path.join(cache_dir(), "docstring_corpus", corpus_key(modules))
  if not all(os.path.exists(os.path.join(cached, f"{s}.jsonl")) for s in SPLITS):
    if modules:
      rows, versions = stdlib_rows(modules), {}
    else:
      rows = build_docstring_corpus()
      versions = _distribution_closure(RUNTIME)
    tmp = cached + f".tmp{os.getpid()}"
    _write(rows, tmp, {"python": sys.version.split()[0], "packages": versions, "modules": modules or "all",
                       "pairs": len(rows)})
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    if os.path.exists(cached):  # another process finished first
      shutil.rmtree(tmp)
    else:
      os.replace(tmp, cached)
  os.makedirs(out_dir, exist_ok=True)
  for name in [f"{s}.jsonl" for s in SPLITS] + [STATS]:
    shutil.copyfile(os.path.join(cached, name), os.path.join(out_dir, name + ".tmp"))
    os.replace(os.path.join(out_dir, name + ".tmp"), os.path.join(out_dir, name))
  return paths
