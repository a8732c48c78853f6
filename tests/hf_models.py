"""Tiny random T5 / BART models built with `transformers` (the PyTorch reference)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch
import transformers

VARIANTS = ("t5_v1_0", "t5_v1_1", "t5_v1_1_untied", "bart")
# transformers' generate() sizes its cache by num_layers and fails when the decoder is deeper, so
# the generation tests use a T5 with equal encoder and decoder depth.
GENERATE_VARIANTS = ("t5_v1_0_even", "bart")


@dataclasses.dataclass
class Reference:
  path: str                    # save_pretrained directory
  model: torch.nn.Module       # torch reference
  lm_head: np.ndarray | None   # separate lm_head of the untied variant (see `save`)

  def logits(self, ids, mask, dec):
    """Teacher-forced (encoder states, logits) from torch, as numpy."""
    with torch.no_grad():
      out = self.model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                       decoder_input_ids=torch.tensor(dec), output_hidden_states=True)
    logits = out.logits.numpy()
    if self.lm_head is not None:
      logits = out.decoder_hidden_states[-1].numpy() @ self.lm_head.T
    return out.encoder_last_hidden_state.numpy(), logits


def make(name: str) -> torch.nn.Module:
  torch.manual_seed(0)
  if name.startswith("t5"):
    v11 = name.startswith("t5_v1_1")
    cfg = transformers.T5Config(
        vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2,
        num_decoder_layers=2 if name.endswith("even") else 3, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
        feed_forward_proj="gated-gelu" if v11 else "relu", tie_word_embeddings=not v11,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    model = transformers.T5ForConditionalGeneration(cfg)
  else:
    cfg = transformers.BartConfig(
        vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=80,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, scale_embedding=True,
        forced_bos_token_id=None)
    model = transformers.BartForConditionalGeneration(cfg)
    with torch.no_grad():
      model.final_logits_bias.normal_(0, 0.5)
  return model.eval()


def save(name: str, path) -> Reference:
  model = make(name)
  model.save_pretrained(path)
  lm_head = None
  if name == "t5_v1_1_untied":
    # What the published v1.1 / flan checkpoints look like (written by transformers 4.x): a separate
    # lm_head tensor and tie_word_embeddings=false. transformers >= 5 always ties the head, so the
    # file is written by hand and the reference applies the head to torch's decoder output.
    from safetensors.torch import load_file, save_file
    sd = load_file(f"{path}/model.safetensors")
    torch.manual_seed(1)
    sd["lm_head.weight"] = torch.randn_like(sd["shared.weight"])
    save_file(sd, f"{path}/model.safetensors", metadata={"format": "pt"})
    lm_head = sd["lm_head.weight"].numpy()
    with open(f"{path}/config.json") as f:
      cfg = json.load(f)
    cfg["tie_word_embeddings"] = False
    cfg.pop("scale_decoder_outputs", None)
    with open(f"{path}/config.json", "w") as f:
      json.dump(cfg, f)
  return Reference(str(path), model, lm_head)


def inputs(batch=3, enc_len=23, dec_len=11, vocab=99, seed=0):
  """Random ids (no special tokens) with a padded row: row 1 is padding from position 15."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, (batch, enc_len))
  mask = np.ones((batch, enc_len), np.int64)
  mask[1, 15:] = 0
  dec = rng.integers(3, vocab, (batch, dec_len))
  return ids, mask, dec
