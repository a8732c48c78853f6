"""An offline summarization corpus built from the Python standard library's docstrings.

Each example pairs a function's or class's docstring body (its explanation, arguments, caveats)
with its one-line summary, written by the CPython authors: real human-written text pairs that every
machine with Python has, so the default job needs no download. Train/validation/test are split by
a hash of the qualified name, so they are stable across runs and machines.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import re
import warnings

# Plain-library modules whose import has no side effects (no GUI, no network, no prints).
STDLIB_MODULES = (
    "abc argparse ast asyncio base64 bisect bz2 calendar cmd codecs collections collections.abc "
    "colorsys concurrent.futures configparser contextlib copy csv dataclasses datetime decimal "
    "difflib dis email email.message email.utils enum filecmp fileinput fnmatch fractions ftplib "
    "functools getopt gettext glob gzip hashlib heapq hmac html html.parser http.client http.cookies "
    "http.server imaplib importlib importlib.metadata inspect io ipaddress itertools json json.decoder "
    "json.encoder keyword linecache locale logging logging.handlers lzma mailbox mimetypes "
    "multiprocessing multiprocessing.pool numbers operator optparse os os.path pathlib pickle "
    "pickletools pkgutil platform plistlib poplib pprint profile pstats queue quopri random re "
    "reprlib sched secrets selectors shelve shlex shutil signal smtplib socket socketserver "
    "sqlite3 ssl stat statistics string stringprep struct subprocess symtable sysconfig tabnanny "
    "tarfile tempfile textwrap threading timeit token tokenize trace traceback tracemalloc types "
    "typing unittest unittest.mock urllib.parse urllib.request uuid warnings wave weakref "
    "xml.dom.minidom xml.etree.ElementTree xml.sax zipfile zipimport zlib zoneinfo").split()

_WS = re.compile(r"\s+")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _clean(text: str) -> str:
  return _WS.sub(" ", text).strip()


def _split_docstring(doc: str) -> tuple[str, str] | None:
  """(summary line, body) of a docstring with a one-paragraph summary and a real body."""
  doc = inspect.cleandoc(doc)
  parts = re.split(r"\n\s*\n", doc, maxsplit=1)
  if len(parts) != 2:
    return None
  summary, body = _clean(parts[0]), _clean(parts[1])
  if not (4 <= len(summary.split()) <= 40) or len(body.split()) < 12:
    return None
  return summary, body


def _members(module):
  for name, obj in sorted(vars(module).items()):
    if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
      continue
    if inspect.isclass(obj):
      yield f"{module.__name__}.{name}", obj
      for mname, meth in sorted(vars(obj).items()):
        if not mname.startswith("_") and (inspect.isfunction(meth) or inspect.ismethoddescriptor(meth)):
          yield f"{module.__name__}.{name}.{mname}", meth
    elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
      yield f"{module.__name__}.{name}", obj


def build_docstring_corpus(modules=STDLIB_MODULES) -> list[dict]:
  """[{id, document, summary}] from the docstrings of `modules` (sorted, deterministic)."""
  rows, seen = [], set()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for mod_name in modules:
      try:
        module = importlib.import_module(mod_name)
      except Exception:  # a module this Python lacks (e.g. built without sqlite3)
        continue
      for qualname, obj in _members(module):
        doc = getattr(obj, "__doc__", None)
        if not isinstance(doc, str):
          continue
        split = _split_docstring(doc)
        if split is None or split[1] in seen:
          continue
        seen.add(split[1])
        try:
          # default values like <object object at 0x7f...> differ per process: drop the address
          sig = _ADDRESS.sub("", str(inspect.signature(obj)))
        except (TypeError, ValueError):
          sig = ""
        name = qualname.rsplit(".", 1)[-1]
        rows.append({"id": qualname, "document": f"{name}{sig}: {split[1]}", "summary": split[0]})
  return rows


def split_of(example_id: str) -> str:
  h = int(hashlib.sha256(example_id.encode()).hexdigest(), 16) % 100
  return "test" if h < 5 else "validation" if h < 10 else "train"


def write_corpus(out_dir: str) -> dict[str, str]:
  """Writes train/validation/test JSONL files (if absent) and returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {s: os.path.join(out_dir, f"{s}.jsonl") for s in ("train", "validation", "test")}
  if all(os.path.exists(p) for p in paths.values()):
    return paths
  rows = build_docstring_corpus()
  files = {s: open(p + ".tmp", "w", encoding="utf-8") for s, p in paths.items()}
  try:
    for r in rows:
      files[split_of(r["id"])].write(json.dumps(r, ensure_ascii=False) + "\n")
  finally:
    for f in files.values():
      f.close()
  for s, p in paths.items():
    os.replace(p + ".tmp", p)
  return paths
