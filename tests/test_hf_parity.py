"""Parity of our Flax T5/BART with Hugging Face PyTorch; conversion in both directions."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from srformer_jax import (ConversionError, DecodeConfig, ModelConfig, build_model, generate_jit,
                          load_hf_checkpoint, save_hf_checkpoint)
from srformer_jax.convert import load_state_dict, state_dict_to_params, tied_aliases
from tests import checks, hf_models


@pytest.mark.parametrize("name", hf_models.VARIANTS)
def test_forward_matches_torch(hf_dirs, name):
  ref = hf_dirs[name]
  config, params, initialised = load_hf_checkpoint(ref.path)
  assert initialised == []
  model = build_model(config)
  ids, mask, dec = hf_models.inputs()
  enc_ref, logits_ref = ref.logits(ids, mask, dec)
  enc = model.apply({"params": params}, ids, mask, method=model.encode)
  logits = model.apply({"params": params}, ids, mask, dec)
  assert logits.dtype == jnp.float32
  # padded encoder positions carry no meaning; compare the real ones
  valid = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(enc)[valid], enc_ref[valid], atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(logits), logits_ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", hf_models.VARIANTS)
def test_cached_decoding_equals_teacher_forcing(hf_dirs, name):
  config, params, _ = load_hf_checkpoint(hf_dirs[name].path)
  ids, mask, dec = hf_models.inputs()
  checks.cached_equals_teacher_forced(config, params, ids, mask, dec)


@pytest.mark.parametrize("name", ["t5_v1_0", "t5_v1_1", "bart"])
def test_export_roundtrip_through_transformers(hf_dirs, tmp_path, name):
  ref = hf_dirs[name]
  config, params, _ = load_hf_checkpoint(ref.path)
  out = save_hf_checkpoint(params, config, tmp_path / "export")
  written = set(load_state_dict(out))
  assert written and not written & set(tied_aliases(config))  # each tied tensor once, as HF writes them
  reloaded = type(ref.model).from_pretrained(out).eval()
  ids, mask, dec = hf_models.inputs(seed=1)
  run = lambda m: m(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    decoder_input_ids=torch.tensor(dec)).logits.numpy()
  with torch.no_grad():
    original, exported = run(ref.model), run(reloaded)
  np.testing.assert_array_equal(exported, original)  # HF -> ours -> HF is lossless
  ours = build_model(config).apply({"params": params}, ids, mask, dec)
  np.testing.assert_allclose(np.asarray(ours), exported, atol=1e-4, rtol=0)
  # and our own loader reads the export back to identical params
  config2, params2, _ = load_hf_checkpoint(out)
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_untied_v11_roundtrip(hf_dirs, tmp_path):
  config, params, _ = load_hf_checkpoint(hf_dirs["t5_v1_1_untied"].path)
  assert not config.tie_word_embeddings and not config.scale_decoder_outputs
  assert "lm_head" in params
  out = save_hf_checkpoint(params, config, tmp_path / "export")
  config2, params2, _ = load_hf_checkpoint(out)
  assert config2 == config
  jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_pytorch_bin_checkpoint(hf_dirs, tmp_path):
  ref = hf_dirs["t5_v1_0"]
  d = tmp_path / "bin"
  d.mkdir()
  # a legacy checkpoint: torch.save'd state dict (with the tied aliases) + config.json
  torch.save(ref.model.state_dict(), d / "pytorch_model.bin")
  shutil.copy(os.path.join(ref.path, "config.json"), d / "config.json")
  _, params_bin, _ = load_hf_checkpoint(d)
  _, params_st, _ = load_hf_checkpoint(ref.path)
  jax.tree.map(np.testing.assert_array_equal, params_bin, params_st)


def test_missing_and_mismatched_tensors_are_named(hf_dirs):
  config = ModelConfig.from_hf(hf_dirs["bart"].path)
  sd = load_state_dict(hf_dirs["bart"].path)
  broken = dict(sd)
  del broken["model.decoder.layers.1.fc2.bias"]
  with pytest.raises(ConversionError, match=r"model\.decoder\.layers\.1\.fc2\.bias"):
    state_dict_to_params(broken, config)
  broken = dict(sd)
  broken["model.encoder.layers.0.fc1.weight"] = sd["model.encoder.layers.0.fc1.weight"][:, :5]
  with pytest.raises(ConversionError, match=r"model\.encoder\.layers\.0\.fc1\.weight.*shape"):
    state_dict_to_params(broken, config)
  broken = dict(sd, **{"model.decoder.layers.7.fc2.bias": sd["model.decoder.layers.1.fc2.bias"]})
  with pytest.raises(ConversionError, match=r"unexpected tensor 'model\.decoder\.layers\.7\.fc2\.bias'"):
    state_dict_to_params(broken, config)
  broken = dict(sd)
  broken["model.encoder.embed_tokens.weight"] = sd["model.shared.weight"] + 1
  with pytest.raises(ConversionError, match="tied"):
    state_dict_to_params(broken, config)


def test_srformer_params_are_initialised_and_reported(hf_dirs):
  config, params, initialised = load_hf_checkpoint(hf_dirs["t5_v1_0"].path, cross_attention="srformer",
                                                   segment_size=8)
  assert config.cross_attention == "srformer"
  expected = {f"decoder.block.{i}.layer.1.EncDecAttention.{p}" for i in range(3)
              for p in ("SNN_kv.weight", "threshold", "leak")}
  assert set(initialised) == expected
  att = params["decoder"]["block_0"]["layer_1"]["EncDecAttention"]
  np.testing.assert_allclose(att["threshold"], [config.raf_threshold_init])
  # srformer_gated adds its per-head gate, starting at raf_gate_init (0: closed)
  config, params, initialised = load_hf_checkpoint(hf_dirs["t5_v1_0"].path, cross_attention="srformer_gated",
                                                   segment_size=8)
  assert set(initialised) == expected | {f"decoder.block.{i}.layer.1.EncDecAttention.gate" for i in range(3)}
  gate = params["decoder"]["block_2"]["layer_1"]["EncDecAttention"]["gate"]
  np.testing.assert_array_equal(gate, np.zeros(config.num_heads))


def test_missing_checkpoint_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_hf_checkpoint(str(tmp_path / "nope"))
  (tmp_path / "empty").mkdir()
  with open(tmp_path / "empty" / "config.json", "w") as f:
    json.dump({"model_type": "t5", "vocab_size": 8, "d_model": 4, "num_heads": 1, "d_kv": 4,
               "d_ff": 4, "num_layers": 1}, f)
  with pytest.raises(FileNotFoundError, match="no weights"):
    load_hf_checkpoint(tmp_path / "empty")
  # a hub name cannot be fetched offline: the error says what to pass instead
  with pytest.raises(FileNotFoundError, match="local directory"):
    load_hf_checkpoint("some-org/some-model-that-is-not-here")


@pytest.mark.parametrize("name", hf_models.GENERATE_VARIANTS)
@pytest.mark.parametrize("beams,ngram", [(1, 0), (1, 2), (4, 0), (3, 3)])
def test_generate_matches_transformers(hf_dirs, name, beams, ngram):
  ref = hf_dirs[name]
  config, params, _ = load_hf_checkpoint(ref.path)
  model = build_model(config)
  ids, mask, _ = hf_models.inputs(seed=2)
  max_len = 16
  with torch.no_grad():
    theirs = ref.model.generate(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=max_len,
        num_beams=beams, do_sample=False, no_repeat_ngram_size=ngram, length_penalty=1.0,
        early_stopping=True, min_new_tokens=0).numpy()[:, 1:]
  ours = np.asarray(generate_jit(model, params, jnp.asarray(ids), jnp.asarray(mask),
                                 DecodeConfig(max_len=max_len, num_beams=beams,
                                              no_repeat_ngram_size=ngram)))
  for row_t, row_o in zip(theirs, ours):
    # compare up to and including the first EOS (what follows is padding, filled differently)
    end = len(row_t)
    eos = np.nonzero(row_t == config.eos_token_id)[0]
    if len(eos):
      end = eos[0] + 1
    np.testing.assert_array_equal(row_o[:end], row_t[:end])
    assert np.all(row_o[end:] == config.pad_token_id)
