"""Summarization data: tfds datasets and local JSONL, tokenised once into fixed-shape batches.

One module per concern (as flax's examples keep the input pipeline apart from tokenization):

  sources      (document, summary) text pairs: tfds splits (streamed, never held as a list), JSONL,
               lists; `Stats` of what was read, kept and skipped
  tokenizers   SentencePiece / Hugging Face tokenizers behind one protocol; training SentencePiece
  encoding     examples to ids: `BatchSpec` limits, documents cut by characters before tokenising,
               truncation keeping EOS
  cache        `TokenizedSplit`: a source tokenised once into flat token arrays, cached as .npy
               files keyed by the data's content, the tokenizer and the limits
  batching     `BatchIterator`: a deterministic per-epoch permutation whose position (`epoch`,
               `index`) and statistics are saved with every checkpoint, so a resumed run reads
               exactly the batches the uninterrupted run would have; with several processes each
               collates only its rows of every global batch. `eval_batches` for evaluation.

Every name is importable from `srformer_jax.data` as before the split.
"""

from srformer_jax.data.batching import BatchIterator, collate, eval_batches
from srformer_jax.data.cache import TokenizedSplit, cache_key, tokenized_split
from srformer_jax.data.encoding import (CUT_CHARS_PER_TOKEN, CUT_MARGIN_TOKENS, BatchSpec, cut_document,
                                        encode_pair, encode_sources)
from srformer_jax.data.sources import (TFDS_FIELDS, DataError, ListSource, Source, Stats, TfdsSource, read_jsonl,
                                       read_tfds)
from srformer_jax.data.tokenizers import (HFTokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer,
                                          train_sentencepiece)

__all__ = [
    "BatchIterator", "collate", "eval_batches", "TokenizedSplit", "cache_key", "tokenized_split",
    "CUT_CHARS_PER_TOKEN", "CUT_MARGIN_TOKENS", "BatchSpec", "cut_document", "encode_pair", "encode_sources",
    "TFDS_FIELDS", "DataError", "ListSource", "Source", "Stats", "TfdsSource", "read_jsonl", "read_tfds",
    "HFTokenizer", "SentencePieceTokenizer", "Tokenizer", "load_tokenizer", "train_sentencepiece",
]
