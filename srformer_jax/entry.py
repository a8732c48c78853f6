"""Command-line entry points: user errors as one line on stderr (exit 1), `--verbose` for the
traceback; config overrides checked against the config and, for evaluation, against the saved run.
"""

from __future__ import annotations

import difflib
import json
import os
import sys

import ml_collections

from srformer_jax import runfiles
from srformer_jax.errors import USER_ERRORS, ConfigError

VERBOSE_HELP = "show the traceback of an error instead of its one-line message"


def one_line(e: BaseException) -> str:
  """The first line of an error's message (its type when it has none)."""
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return lines[0] if lines else type(e).__name__


def verbose_requested(argv: list[str]) -> bool:
  """--verbose on the command line (read directly: flag parsing itself may be what failed)."""
  return any(a in ("--verbose", "-verbose", "--verbose=true", "--verbose=True", "--verbose=1")
             for a in argv)


def fail(message: str):
  """One line on stderr, exit status 1."""
  print(f"error: {message} (--verbose shows the traceback)", file=sys.stderr)
  sys.exit(1)


def config_overrides(argv: list[str]) -> dict[str, str]:
  """{'model.scratch.d_model': '128'} from --config.model.scratch.d_model=128 arguments."""
  out = {}
  for a in argv:
    if a.startswith("--config.") and "=" in a:
      key, value = a[len("--config."):].split("=", 1)
      out[key] = value
  return out


def unknown_field(cfg: ml_collections.ConfigDict, path: str) -> str | None:
  """None if `path` (a.b.c) names a field of cfg; else what is wrong, with the closest name."""
  node, done = cfg, []
  for part in path.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      fields = sorted(node.keys()) if isinstance(node, (ml_collections.ConfigDict, dict)) else []
      where = ".".join(["config"] + done)
      close = difflib.get_close_matches(part, fields, n=1)
      hint = f"did you mean {where}.{close[0]}?" if close else f"its fields: {', '.join(fields)}"
      return f"{where} has no field {part!r} (--config.{path}): {hint}"
    node, done = node[part], done + [part]
  return None


def _load_config_file(argv: list[str], default: str):
  """The --config file's ConfigDict, loaded the way config_flags loads it (None if it does not
  load: then that is the error to report)."""
  from ml_collections.config_flags import config_flags as impl
  arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), default)
  try:
    return impl.ConfigFileFlagParser(name="config").parse(arg)
  except Exception:  # noqa: BLE001 (no config to compare with)
    return None


def _report_override_error(e: BaseException, default: str):
  """Exits with one line if an override names no config field (ml_collections raised `e`)."""
  if verbose_requested(sys.argv) or not isinstance(e, (AttributeError, KeyError)):
    return
  cfg = _load_config_file(sys.argv, default)
  for path in config_overrides(sys.argv):
    problem = unknown_field(cfg, path) if cfg is not None else None
    if problem:
      fail(problem)


def define_config(default: str, help_text: str):
  """config_flags.DEFINE_config_file("config", ...): it applies the --config.* overrides at once,
  so an override naming no field fails here, as one line."""
  from ml_collections import config_flags
  global _CONFIG_DEFAULT
  _CONFIG_DEFAULT = default
  try:
    config_flags.DEFINE_config_file("config", default, help_text)
  except Exception as e:  # noqa: BLE001 (re-raised unless it is an unknown field)
    _report_override_error(e, default)
    raise


_CONFIG_DEFAULT = "configs/default.py"


def run(main):
  """absl's app.run(main), with user errors (and config overrides naming no field) reported in
  one line unless --verbose is given. First re-executes the process with glibc's malloc on huge
  pages (`host_malloc`; `SRFORMER_JAX_HUGE_PAGES=0` turns that off)."""
  from absl import app

  from srformer_jax import host_malloc
  host_malloc.reexec_with_huge_pages()
  try:
    app.run(main)
  except SystemExit:
    raise
  except Exception as e:  # noqa: BLE001 (sorted out below)
    if verbose_requested(sys.argv):
      raise
    _report_override_error(e, _CONFIG_DEFAULT)
    if isinstance(e, USER_ERRORS):
      fail(one_line(e))
    raise


def check_workdir(workdir: str, existing: bool):
  """--workdir must be a directory (a file there is an error); `existing`: it must exist already
  (evaluation), else it is created by the run."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir {workdir!r} is a file, not a run directory: pass a directory")
  if existing and not os.path.isdir(workdir):
    raise FileNotFoundError(f"run directory {workdir!r} does not exist (train.py --workdir)")


def _check_overrides_match_model(cfg, workdir: str, argv: list[str]):
  """--config.model.<field> / model.scratch.<field> against the saved ModelConfig (gen_len excepted:
  decoding takes the config's)."""
  path = os.path.join(workdir, runfiles.MODEL_CONFIG)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  for key in config_overrides(argv):
    field = key.split(".")[-1]
    if not key.startswith("model.") or field not in saved or field == "gen_len" or key.count(".") > 2:
      continue
    given = cfg
    for part in key.split("."):
      given = given[part]
    was = saved[field]
    if isinstance(was, list) and isinstance(given, tuple):
      given = list(given)
    if given is not None and given != was:
      raise ConfigError(f"--config.{key}={given!r} contradicts the model in {workdir}: it was trained "
                        f"with {field}={was!r} ({runfiles.MODEL_CONFIG}); evaluation uses the saved model, "
                        f"so drop the override or use another --workdir")


def check_overrides_match_run(cfg, workdir: str, argv: list[str]):
  """Refuses --config.model.* overrides that differ from the run saved in workdir (evaluation uses
  the saved model; an override there would be silently ignored). Checked against run_config.json,
  or, for a run without one, against the model itself (model_config.json)."""
  path = os.path.join(workdir, runfiles.RUN_CONFIG)
  if not os.path.exists(path):
    _check_overrides_match_model(cfg, workdir, argv)
    return
  with open(path) as f:
    saved = ml_collections.ConfigDict(json.load(f))
  for key in config_overrides(argv):
    if not key.startswith("model.") or unknown_field(saved, key):
      continue
    given, was = cfg, saved
    for part in key.split("."):
      given, was = given[part], was[part]
    if isinstance(was, list) and isinstance(given, tuple):
      given = list(given)
    if given != was:
      raise ConfigError(f"--config.{key}={given!r} contradicts the run in {workdir}: it was trained "
                        f"with config.{key}={was!r} ({runfiles.RUN_CONFIG}); evaluation uses the saved "
                        f"model, so drop the override or use another --workdir")
