"""Every exception a user of srformer_jax can meet: each is something to fix in what was passed.

The command-line entry points (`entry.run`) print these as one line on stderr and exit with status 1
(`--verbose` shows the traceback); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
  """A config value that cannot work, an override that names no field, or one that contradicts a
  saved run. The message names the `config.` path to change."""


class DataError(ValueError):
  """Input data that cannot be used: a missing or unreadable file, an empty split, a damaged
  tokenizer, nothing left after filtering (summarisation and language-model corpora alike)."""


class CheckpointError(RuntimeError):
  """No usable checkpoint, or one that does not fit the model."""


class ConversionError(ValueError):
  """A Hugging Face checkpoint does not match the model: a missing, unexpected or mis-shaped tensor."""


class TrainingDiverged(RuntimeError):
  """A non-finite loss, gradient norm or parameters (a flagged state is never saved)."""


# What the entry points report as one line. FileNotFoundError: a path the user gave (a workdir, a
# checkpoint directory, a config file) that is not there.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, CheckpointError, ConversionError, TrainingDiverged, FileNotFoundError)
