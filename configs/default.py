"""Offline default: a small T5-style SRformer trained from scratch on the Python docstring corpus.

Needs no network and no prepared data: the corpus (docstring body -> its one-line summary) is built
from the local Python standard library, and a SentencePiece tokenizer is trained on it. Runs end to
end (train + ROUGE eval) on a laptop CPU in a few minutes.
"""

from configs import base


def get_config():
  c = base.base_config()
  c.model.init_from = ""
  c.model.segment_size = 16
  c.model.dropout_rate = 0.1
  c.model.scratch.update(d_model=128, num_heads=4, d_kv=32, d_ff=256, num_encoder_layers=2,
                         num_decoder_layers=2, relative_attention_num_buckets=16)
  c.data.update(source="docstrings", train_split="train", eval_split="test", tokenizer="train_spm",
                spm_vocab_size=2000, max_source_len=128, max_target_len=32)
  c.train.update(batch_size=32, num_steps=600, learning_rate=2e-3, warmup_steps=60,
                 weight_decay=0.01, log_every=20, save_every=200)
  c.decode.update(num_beams=2, length_penalty=1.0, no_repeat_ngram_size=3, batch_size=32)
  return c
