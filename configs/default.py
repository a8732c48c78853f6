"""Offline default: a small T5-style SRformer trained from scratch on the Python docstring corpus.

Needs no network and no prepared data: the corpus (docstring body -> its one-line summary) is built
from the Python code installed on this machine, and a SentencePiece tokenizer is trained on it. Runs
end to end (train + ROUGE eval) on a 2-core CPU in about ten minutes. The sizes, the tokenizer and the
source length were chosen by `benchmarks/default_job_compare.py` (docs/training.md): at the same
training time, d_model 128 beat 256 (more steps), 8k pieces beat 2k and 16k, and the first 64 tokens
of a docstring (its name, signature and first sentences) did as well as 128 at more steps.
"""

from configs import base


def get_config():
  c = base.base_config()
  c.model.init_from = ""
  c.model.segment_size = 16
  c.model.dropout_rate = 0.1
  c.model.scratch.update(d_model=128, num_heads=4, d_kv=32, d_ff=512, num_encoder_layers=2,
                         num_decoder_layers=2, relative_attention_num_buckets=16)
  c.data.update(source="docstrings", train_split="train", eval_split="test", tokenizer="train_spm",
                spm_vocab_size=8000, max_source_len=64, max_target_len=32)
  c.train.update(batch_size=32, num_steps=2400, learning_rate=2e-3, warmup_steps=240,
                 weight_decay=0.01, log_every=50, save_every=400)
  c.decode.update(num_beams=2, length_penalty=1.0, no_repeat_ngram_size=3, batch_size=32)
  return c
