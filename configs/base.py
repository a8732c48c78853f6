"""Shared pieces of the run configs (each configs/<name>.py has a `get_config()`)."""

import ml_collections

# Paper settings (Long et al. 2023, Sec. 4): source 1024, target 128, AdamW lr 5e-5, linear decay, s=64.
PAPER_DATASETS = {
    # name: (tfds name, train split, eval split)
    "cnn_dailymail": ("cnn_dailymail", "train", "test"),
    "xsum": ("xsum", "train", "test"),
    "arxiv": ("scientific_papers/arxiv", "train", "test"),
    "media_sum": ("media_sum", "train", "test"),
}
PAPER_MODELS = {
    # name: (HF checkpoint, T5 task prefix, RAF leak init as in the authors' code)
    "t5_small": ("t5-small", "summarize: ", 0.1),
    "bart_base": ("facebook/bart-base", "", 0.5),
}


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
      raf_threshold_init=0.1,
      raf_leak_init=0.1,
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
      tokenizer="init_from",     # "init_from" | "hf:<dir>" | "spm:<file>" | "train_spm"
      spm_vocab_size=4000,
      prefix="",
      max_source_len=1024, max_target_len=128,
      long_target="truncate",    # summaries over max_target_len: truncate | skip | error
      max_train_examples=0, max_eval_examples=0,
  ))
  c.train = ml_collections.ConfigDict(dict(
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
  c.decode = ml_collections.ConfigDict(dict(
      num_beams=4, max_len=0, length_penalty=2.0, no_repeat_ngram_size=3, min_len=0,
      early_stopping=True, batch_size=16))
  return c


def paper_config(model: str, dataset: str) -> ml_collections.ConfigDict:
  c = base_config()
  ckpt, prefix, leak = PAPER_MODELS[model]
  name, train_split, eval_split = PAPER_DATASETS[dataset]
  c.model.init_from = ckpt
  c.model.raf_leak_init = leak
  c.data.update(source="tfds", name=name, train_split=train_split, eval_split=eval_split,
                tokenizer="init_from", prefix=prefix)
  if dataset == "xsum":
    c.data.max_target_len = 64
  return c
