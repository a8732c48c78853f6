"""Summarize files or stdin with a trained run.

  python -m srformer_jax.cli --workdir runs/default article1.txt article2.txt
  cat article.txt | python -m srformer_jax.cli --workdir runs/default
  python -m srformer_jax.cli --workdir runs/default --lines < one_document_per_line.txt

Each file (or all of stdin, when no file or "-" is given) is one document; with --lines every
non-empty line of the input is one document. Prints one summary per document, one per line, in
input order (line breaks inside a summary become spaces); the progress bar and logs go to stderr.
Decoding settings come from the run's config (decode section) unless given here.

(Run it with -m; the library function is `srformer_jax.summarize`, see `srformer_jax.api`.)
"""

from __future__ import annotations

import argparse
import logging
import sys

from srformer_jax import entry
from srformer_jax.errors import USER_ERRORS


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m srformer_jax.cli",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("files", nargs="*", help="documents to summarize ('-' or none: stdin)")
  p.add_argument("--workdir", required=True, help="run directory (train.py --workdir)")
  p.add_argument("--config", default=None,
                 help="run config (configs/*.py or .json) for runs without run_config.json")
  p.add_argument("--lines", action="store_true", help="every non-empty input line is one document")
  p.add_argument("--batch_size", type=int, default=None, help="default: config.decode.batch_size")
  p.add_argument("--mesh_shape", default=None, help="e.g. 1,1,1 (default: config.train.mesh_shape)")
  p.add_argument("--verbose", action="store_true", help="show the traceback of an error")
  for name, kind in (("max_len", int), ("num_beams", int), ("length_penalty", float),
                     ("no_repeat_ngram_size", int), ("min_len", int)):
    p.add_argument(f"--{name}", type=kind, default=None, help="default: the run's config.decode")
  return p.parse_args(argv)


def read_documents(files: list[str], lines: bool) -> list[str]:
  """The documents of the input; ValueError naming an input with nothing to summarize."""
  raw = []
  for name in files or ["-"]:
    if name == "-":
      text, where = sys.stdin.read(), "stdin"
    else:
      with open(name, encoding="utf-8") as f:
        text, where = f.read(), repr(name)
    if not text.strip():
      raise ValueError(f"{where} is empty: there is nothing to summarize")
    raw.append(text)
  if lines:
    return [line.strip() for text in raw for line in text.splitlines() if line.strip()]
  return raw


def main(argv=None) -> int:
  """Summarizes; user errors (bad paths, empty input, no usable checkpoint): one line on stderr,
  exit status 1 (--verbose: the traceback)."""
  args = parse_args(argv)
  try:
    return _summarize(args)
  except Exception as e:  # noqa: BLE001 (sorted out here)
    if args.verbose or not isinstance(e, USER_ERRORS + (ValueError, OSError)):
      raise
    print(f"error: {entry.one_line(e)} (--verbose shows the traceback)", file=sys.stderr)
    return 1


def _summarize(args) -> int:
  logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax chatter
  except ImportError:
    pass
  from srformer_jax import api
  docs = read_documents(args.files, args.lines)
  mesh = tuple(int(x) for x in args.mesh_shape.split(",")) if args.mesh_shape else None
  run = api.load_run(args.workdir, args.config, mesh_shape=mesh)
  overrides = {k: getattr(args, k) for k in ("max_len", "num_beams", "length_penalty",
                                              "no_repeat_ngram_size", "min_len")
               if getattr(args, k) is not None}
  for summary in api.summarize(docs, run, args.batch_size, **overrides):
    print(" ".join(summary.split("\n")))
  return 0


if __name__ == "__main__":
  sys.exit(main())
