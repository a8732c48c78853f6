"""Run setup shared by training and evaluation: processes, tokenizer, model, data sources, mesh.

With several processes (jax.distributed), files every process needs (the docstring corpus, the
SentencePiece tokenizer, the tokenised splits) are written by process 0 while the others wait on
a barrier, then read by all; only process 0 writes logs and results.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax

from srformer_jax import checkpoint, data, processes, runfiles, sharding
from srformer_jax.config import ModelConfig
from srformer_jax.errors import ConfigError, DataError
from srformer_jax.model import abstract_params, build_model, logical_param_specs
from srformer_jax.processes import main_first

log = logging.getLogger(__name__)


def make_mesh(cfg):
  """The (data, fsdp, tensor) mesh of config.train.mesh_shape over the devices jax sees."""
  shape = tuple(cfg.train.mesh_shape)
  if len(shape) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or (d < 1 and d != -1) for d in shape):
    raise ConfigError(f"config.train.mesh_shape must be three positive integers (data, fsdp, tensor), one of "
                      f"them may be -1, got {shape}")
  try:
    return sharding.make_mesh(shape)
  except ValueError as e:
    raise ConfigError(f"config.train.mesh_shape {shape}: {e}; set it for the {jax.device_count()} devices "
                      f"there are, e.g. (-1, 1, 1)") from None


def check_train_batch(cfg, mesh):
  """Refuses a global train batch that does not split evenly over the mesh's data-parallel devices
  (data x fsdp), which jax would otherwise report mid-step as an IndivisibleError. (Micro-batches
  of a grad_accum step may split unevenly: XLA pads them.) Values that are not positive integers
  are left to `validate_config`'s message."""
  batch = cfg.train.batch_size
  if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
    return
  n = sharding.batch_shards(mesh)
  if batch % n:
    raise ConfigError(f"config.train.batch_size {batch} does not split over the mesh's {n} data-parallel "
                      f"devices (mesh {tuple(mesh.devices.shape)}, data x fsdp x tensor): set "
                      f"config.train.batch_size to a multiple of {n} or change config.train.mesh_shape")


# ------------------------------------------------------------------------------------------------
# tokenizer, model, data


def model_fields(cfg) -> dict:
  """SRformer / numerics fields of config.model that override the checkpoint's architecture. RAF's
  initial leak is left to the architecture when None (`ModelConfig.from_hf`: T5 0.1, BART 0.5, as
  the authors' code)."""
  m = cfg.model
  fields = dict(cross_attention=m.cross_attention, segment_size=m.segment_size,
                gen_len=m.gen_len or cfg.data.max_target_len, faithful=m.faithful, dtype=m.dtype,
                segment_schedule=m.segment_schedule, dropout_rate=m.dropout_rate,
                attention_impl=m.attention_impl, attention_block_size=m.attention_block_size,
                remat_policy=m.remat_policy, raf_remat=m.raf_remat, kernels=m.kernels,
                raf_threshold_init=m.raf_threshold_init)
  if m.raf_leak_init is not None:
    fields["raf_leak_init"] = m.raf_leak_init
  return fields


POSITIVE_INTS = ("train.batch_size", "train.grad_accum", "train.log_every", "train.save_every",
                 "train.keep_checkpoints", "decode.batch_size", "decode.num_beams",
                 "data.max_source_len", "data.max_target_len", "data.spm_vocab_size")


def check_positive_ints(cfg, paths):
  for path in paths:
    section, key = path.split(".")
    value = cfg[section][key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ConfigError(f"config.{path} must be a positive integer, got {value!r}")


def validate_config(cfg):
  """Rejects config values that cannot work, naming the `config.` field, before any work is done
  (no data read, no tokenizer trained): the run's own fields, then the model's (as ModelConfig
  checks them) and the mesh's."""
  check_positive_ints(cfg, POSITIVE_INTS)
  if cfg.train.batch_size % cfg.train.grad_accum:
    raise ConfigError(f"config.train.batch_size ({cfg.train.batch_size}) must be a multiple of "
                      f"config.train.grad_accum ({cfg.train.grad_accum})")
  fields = model_fields(cfg)
  arch = dict(cfg.model.scratch) if not cfg.model.init_from else dict(
      arch="t5", vocab_size=8, d_model=8, num_heads=2, d_kv=4, d_ff=8, num_encoder_layers=1, num_decoder_layers=1)
  arch.setdefault("vocab_size", 8)
  where = "config.model" if cfg.model.init_from else "config.model (with config.model.scratch)"
  try:
    ModelConfig(**arch, **fields)
  except (TypeError, ValueError) as e:
    named = next((k for k in list(fields) + list(arch) if str(e).startswith(k) or f" {k}" in str(e)), None)
    path = (f"config.model.{named}" if named in fields else f"config.model.scratch.{named}") if named else where
    raise ConfigError(f"{path}: {e}") from None


def build_tokenizer(cfg, workdir: str, train_texts=None) -> data.Tokenizer:
  """The run's tokenizer; `train_spm` trains one on `train_texts` (an iterable of strings) into
  workdir/spm when none is there."""
  spec = cfg.data.tokenizer
  if spec == "train_spm":
    path = os.path.join(workdir, runfiles.SPM_DIR, "spm.model")
    if not os.path.exists(path):
      if train_texts is None:
        raise DataError(f"no trained tokenizer at {path}: run train.py first")
      with processes.busy():  # SentencePiece's C++ trainer holds the GIL: no heartbeats meanwhile
        data.train_sentencepiece(list(train_texts), path[:-len(".model")], cfg.data.spm_vocab_size,
                                 seed=cfg.train.seed)
    return data.SentencePieceTokenizer(path)
  if spec == "init_from":
    return data.HFTokenizer(cfg.model.init_from)
  return data.load_tokenizer(spec)


def load_source(cfg, split_key: str, workdir: str):
  """The text source of data.<split_key> (tfds splits are streamed)."""
  d = cfg.data
  split = d[split_key]
  max_examples = d.max_train_examples if split_key == "train_split" else d.max_eval_examples
  if d.source == "tfds":
    return data.read_tfds(d.name, split, d.data_dir, max_examples)
  if d.source == "jsonl":
    if not os.path.exists(split):
      raise DataError(f"data file {split!r} does not exist: set config.data.{split_key} to a "
                           f"JSONL file with '{d.document_key}' and "
                           f"'{_summary_key(d, split_key)}' fields per line")
    try:
      return data.read_jsonl(split, d.document_key, _summary_key(d, split_key), max_examples)
    except DataError as e:  # which config field holds the file
      raise DataError(f"config.data.{split_key}: {e}") from None
  if d.source == "docstrings":
    from srformer_jax import corpus
    paths = main_first("corpus", lambda: corpus.write_corpus(os.path.join(workdir, runfiles.CORPUS),
                                                             d.docstring_modules))
    return data.read_jsonl(paths[split], max_examples=max_examples)
  raise DataError(f"config.data.source must be tfds, jsonl or docstrings, got {d.source!r}")


def _summary_key(d, split_key: str) -> str:
  """The JSONL summary field of a split (eval_summary_key for test files with several references,
  e.g. DialogSum's summary1..3)."""
  if split_key == "eval_split" and d.eval_summary_key:
    return d.eval_summary_key
  return d.summary_key


def source_id(cfg, split_key: str, workdir: str) -> str:
  """What a split's text depends on (for the tokenised-split cache key)."""
  d = cfg.data
  split = d[split_key]
  limit = d.max_train_examples if split_key == "train_split" else d.max_eval_examples
  if d.source == "tfds":
    return json.dumps(["tfds", d.name, split, d.data_dir, limit])
  path = split if d.source == "jsonl" else os.path.join(workdir, runfiles.CORPUS, f"{split}.jsonl")
  return json.dumps([d.source, _file_identity(path, workdir), limit, d.document_key,
                     _summary_key(d, split_key)])


def _file_identity(path: str, workdir: str) -> list:
  """A data file by its content (size, SHA-256), never its absolute path or modification time, so
  that a copied or moved workdir (or data file) keeps its tokenised cache."""
  if not os.path.exists(path):
    return [os.path.basename(path), None, None]
  return [os.path.getsize(path), checkpoint.sha256_file(path)]


def batch_spec(cfg, batch_size=None) -> data.BatchSpec:
  d = cfg.data
  return data.BatchSpec(batch_size or cfg.train.batch_size, d.max_source_len, d.max_target_len,
                        d.prefix, d.long_target)


def build_model_config(cfg, tok: data.Tokenizer) -> tuple[ModelConfig, dict | None, list[str]]:
  """(model config, converted params or None for a random init, newly initialised names)."""
  from srformer_jax import convert
  m = cfg.model
  if m.init_from:
    # new SRformer parameters (RAF) are initialised from the run's seed (seed 0: jax.random.key(0), as
    # load_hf_checkpoint's default), so seeds differ in them as in data order and dropout
    mc, params, new = convert.load_hf_checkpoint(m.init_from, rng=jax.random.key(cfg.train.seed),
                                                 **model_fields(cfg))
    if tok.vocab_size > mc.vocab_size:
      raise ValueError(f"tokenizer has {tok.vocab_size} tokens, model only {mc.vocab_size}")
    return mc, params, new
  arch = dict(m.scratch)
  arch.setdefault("vocab_size", tok.vocab_size)
  arch.update(pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, decoder_start_token_id=tok.pad_id)
  return ModelConfig(**arch, **model_fields(cfg)), None, []


@dataclasses.dataclass
class TrainSetup:
  model: object
  tokenizer: data.Tokenizer
  train_data: data.TokenizedSplit   # the training split, tokenised once (cached in workdir/tokenized)
  hf_params: dict | None            # converted init_from parameters, or None for a random init
  initialised: list[str]            # SRformer parameters new to the init_from checkpoint


def setup_training(cfg, workdir: str) -> TrainSetup:
  """Tokenizer, model and the tokenised training split of a run (shared files by process 0)."""
  os.makedirs(workdir, exist_ok=True)
  src = load_source(cfg, "train_split", workdir)
  if cfg.data.tokenizer == "train_spm":
    import itertools
    texts = lambda: (t for pair in itertools.islice(iter(src), 20000) for t in pair)  # noqa: E731
    main_first("tokenizer", lambda: build_tokenizer(cfg, workdir, texts()))
  tok = build_tokenizer(cfg, workdir)
  spec = batch_spec(cfg)
  sid = source_id(cfg, "train_split", workdir)
  table = main_first("tokenized", lambda: data.tokenized_split(
      lambda: src, tok, spec, os.path.join(workdir, runfiles.TOKENIZED), sid))
  model_config, params, new = build_model_config(cfg, tok)
  return TrainSetup(build_model(model_config), tok, table, params, new)


def load_trained_model(cfg, workdir: str):
  """(model, tokenizer, params) for inference: the newest good checkpoint in workdir (with
  workdir/model_config.json), else the config.model.init_from checkpoint."""
  tok = build_tokenizer(cfg, workdir)
  ckpt_dir = os.path.join(workdir, runfiles.CHECKPOINTS)
  cfg_file = os.path.join(workdir, runfiles.MODEL_CONFIG)
  if os.path.exists(cfg_file) and os.path.isdir(ckpt_dir):
    with open(cfg_file) as f:
      model_config = ModelConfig.from_dict(json.load(f))
    # the segment rule of decoding uses the generation length of this config
    model_config = dataclasses.replace(model_config, gen_len=model_fields(cfg)["gen_len"])
    shardings = sharding.logical_to_sharding(logical_param_specs(model_config), make_mesh(cfg))
    abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            abstract_params(model_config), shardings)
    ck = checkpoint.Checkpointer(ckpt_dir)
    try:
      if ck.latest_step() is not None:
        params, step = ck.restore_params(abstract)
        log.info("evaluating checkpoint step %d", step)
        return build_model(model_config), tok, params
    finally:
      ck.close()
  model_config, params, new = build_model_config(cfg, tok)
  if params is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir} and no config.model.init_from to evaluate")
  if new:
    log.warning("evaluating with freshly initialised SRformer parameters: %s", new)
  return build_model(model_config), tok, params


__all__ = ["make_mesh", "check_train_batch", "model_fields", "validate_config", "build_tokenizer", "load_source",
           "source_id", "batch_spec", "build_model_config", "TrainSetup", "setup_training", "load_trained_model"]
