"""Every run config's fields and their defaults, declared once.

`configs/*.py` start from `base_config()` (summarisation) or `train_section()` (the language
models' config.train); `with_defaults(cfg)` completes a summarisation config read back from an older
run_config.json (fields added since take these defaults), so the library reads every field directly.
"""

import ml_collections


def train_section(**overrides) -> ml_collections.ConfigDict:
  """config.train of every run, summarisation and language models alike: the optimiser, the loop,
  checkpoints, the mesh and the processes (each field declared here once)."""
  t = ml_collections.ConfigDict(dict(
      batch_size=16, num_steps=100_000, learning_rate=5e-5, warmup_steps=0, weight_decay=0.01,
      decay_all_params=False,    # True: decay norm scales, biases and RAF scalars too (before stop 13)
      grad_clip=1.0, grad_accum=1, seed=0, log_every=50, save_every=2000, keep_checkpoints=3,
      mesh_shape=(-1, 1, 1),     # (data, fsdp, tensor); -1 takes the remaining devices
      distributed=False,         # jax.distributed.initialize() for multi-host runs (autodetected
                                 # from the environment unless the three fields below are set)
      coordinator_address=ml_collections.FieldReference(None, field_type=str),  # "host:port" of process 0
      num_processes=ml_collections.FieldReference(None, field_type=int),
      process_id=ml_collections.FieldReference(None, field_type=int),
      peer_timeout_s=30,         # multi-process: a peer silent this long ends every process (0: off)
  ))
  t.update(overrides)
  return t


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(dict(
      init_from="",              # HF checkpoint dir or hub name; empty: train from scratch (scratch)
      cross_attention="srformer",
      segment_size=64,
      gen_len=0,                 # 0: data.max_target_len
      faithful=False,
      segment_schedule="padded",  # "length": segments counted over each example's own tokens
      dtype="float32",           # "bfloat16" for mixed precision on GPU/TPU
      attention_impl="auto",     # self-attention: auto | dense | blockwise | cudnn (README, "Long inputs")
      attention_block_size=512,  # blockwise query/key block
      remat_policy="none",       # encoder/decoder layers: none | full | dots | dots_no_batch
      raf_remat=False,           # recompute SRformer's per-segment d x d tensors in the backward
      kernels="auto",            # auto | xla | cpu: forms of a few ops (srformer_jax.config.KERNELS)
      raf_threshold_init=0.1,
      # None: the architecture's, as in the authors' code (T5 0.1, BART 0.5; ModelConfig.from_hf)
      raf_leak_init=ml_collections.FieldReference(None, field_type=float),
      dropout_rate=0.1,
      scratch=ml_collections.ConfigDict(dict(
          arch="t5", d_model=256, num_heads=4, d_kv=64, d_ff=1024, num_encoder_layers=4,
          num_decoder_layers=4, feed_forward_proj="gated-gelu", tie_word_embeddings=True,
          scale_decoder_outputs=True, relative_attention_num_buckets=32,
          relative_attention_max_distance=128)),
  ))
  c.data = ml_collections.ConfigDict(dict(
      source="tfds", name="", data_dir=ml_collections.FieldReference(None, field_type=str),
      train_split="train", eval_split="validation",
      document_key="document", summary_key="summary",  # JSONL fields of a document and its summary
      eval_summary_key="",       # the eval split's summary field when it differs (DialogSum: summary1)
      tokenizer="init_from",     # "init_from" | "hf:<dir>" | "spm:<file>" | "train_spm"
      spm_vocab_size=4000,
      prefix="",
      max_source_len=1024, max_target_len=128,
      long_target="truncate",    # summaries over max_target_len: truncate | skip | error
      max_train_examples=0, max_eval_examples=0,
      docstring_modules="",      # source "docstrings": "" reads every installed package; "json,email":
                                 # those standard-library modules only (a small corpus, for tests)
  ))
  c.train = train_section()
  c.decode = ml_collections.ConfigDict(dict(
      num_beams=4, max_len=0, length_penalty=2.0, no_repeat_ngram_size=3, min_len=0,
      early_stopping=True, batch_size=16,
      ngram_scope_separator=""))  # text joining summaries: the n-gram ban restarts after it
  return c


def with_defaults(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `cfg` (a summarisation run config) with every field `base_config` declares that it
  lacks added, at its default; the fields it has are kept as they are (also ones base lacks)."""
  merged = base_config()

  def fill(dst, src):
    for k, v in src.items():
      if isinstance(v, (ml_collections.ConfigDict, dict)) and isinstance(dst.get(k), ml_collections.ConfigDict):
        fill(dst[k], v)
      else:
        with dst.unlocked():
          dst[k] = v
  fill(merged, cfg)
  return merged
