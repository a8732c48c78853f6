"""The segment-size sweep (paper Fig. 4, Tables 3-4) on DialogSum: a small T5 trained from scratch.

Real human-written summaries (DialogSum: 12,460 train / 500 test dialogues; the test split has three
references, `summary1` is scored). No pretrained weights can be had offline, so every kind of
cross-attention trains the same model from the same init with the same tokenizer, data order and
step budget; `benchmarks/segment_sweep.py` runs the grid. Paths are config fields (the defaults
point at the project's `../shared` copy; pass your own with --config.data.train_split=...).

Lengths: dialogues have a median of 116 words (95th percentile 255), summaries 21 words (95th: 42).
max_source_len = 256 tokens keeps ~85% of dialogues whole and gives m = 32 segments at s = 8 and
m = 4 at s = 64; max_target_len = 64 covers ~98% of summaries. m <= q holds down to s = 4
(the paper: k = 1024, q = 128, so s >= 8).
"""

from configs import base

DATA = "../shared/data/dialogsum"


def get_config():
  c = base.base_config()
  c.model.update(init_from="", cross_attention="srformer", segment_size=8, dropout_rate=0.1,
                 segment_schedule="padded")
  c.model.scratch.update(d_model=128, num_heads=4, d_kv=32, d_ff=512, num_encoder_layers=2,
                         num_decoder_layers=2, relative_attention_num_buckets=32,
                         relative_attention_max_distance=128)
  c.data.update(source="jsonl", train_split=f"{DATA}/dialogsum.train.jsonl",
                eval_split=f"{DATA}/dialogsum.test.jsonl", document_key="dialogue",
                summary_key="summary", eval_summary_key="summary1", tokenizer="train_spm",
                spm_vocab_size=4000, max_source_len=256, max_target_len=64)
  c.train.update(batch_size=16, num_steps=1500, learning_rate=1e-3, warmup_steps=100,
                 weight_decay=0.01, log_every=50, save_every=250)
  c.decode.update(num_beams=2, length_penalty=1.0, no_repeat_ngram_size=3, batch_size=50)
  return c
