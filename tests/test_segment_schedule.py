"""The `length` segment schedule: each example's segments are counted over its own tokens."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srformer_jax import CROSS_ATTENTION_KINDS, ModelConfig, build_model, init_params
from srformer_jax.attention import raf
from srformer_jax.attention.segmented import length_plan
from srformer_jax.decoding import DecodeConfig, generate
from tests import checks
from tests.test_srformer import tiny

SEGMENTED_KINDS = [k for k in CROSS_ATTENTION_KINDS if k != "full"]
LENGTHS = (37, 21, 9)  # row 2 is shorter than two segments at s = 8


def ragged_batch(k_len=48, dec_len=10, lengths=LENGTHS, vocab=64, seed=0):
  """Right-padded rows of the given lengths: ids, mask [b, k_len], decoder ids [b, dec_len]."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, (len(lengths), k_len))
  mask = (np.arange(k_len)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
  ids = np.where(mask, ids, 0)
  dec = rng.integers(3, vocab, (len(lengths), dec_len))
  return ids, mask, dec


def _logits(config, params, ids, mask, dec):
  # jitted: one compile per shape costs less than running the segment scans op by op
  return jax.jit(build_model(config).apply)({"params": params}, ids, mask, dec)


def test_length_plan_counts_each_examples_own_segments():
  ms = jnp.asarray(ragged_batch(k_len=48)[1].reshape(3, 6, 8).astype(bool))  # s = 8, m = 6
  mb, seg, visited = length_plan(ms, q_len=10)
  np.testing.assert_array_equal(mb, [5, 3, 2])  # ceil(37/8), ceil(21/8), ceil(9/8)
  np.testing.assert_array_equal(seg[1], [0, 0, 0, 0, 1, 1, 1, 2, 2, 2])  # floor(t * 3 / 10)
  np.testing.assert_array_equal(seg[2], [0] * 5 + [1] * 5)
  np.testing.assert_array_equal(visited[2], [1, 1, 0, 0, 0, 0])
  assert int(seg.max()) < 5  # no position reads a segment of pure padding


# Every kind on T5; on BART (scaled queries, K^T V clamp, no bias) the two that differ most. The
# default suite runs three that cover each code path (srformer: the segment softmax plus RAF; xl:
# the previous segment; BART); segmented alone, the ablations and BART xl run with `pytest -m slow`.
DEFAULT_ARCH_KINDS = [("t5", "srformer"), ("t5", "xl"), ("bart", "srformer"),
                      # the alternatives' own length-schedule paths (pooled's per-position memory
                      # mask, local_window's per-example window, gru_memory's per-example steps)
                      ("t5", "pooled"), ("t5", "local_window"), ("t5", "gru_memory")]
ARCH_KINDS = [pytest.param(a, k, marks=() if (a, k) in DEFAULT_ARCH_KINDS else pytest.mark.slow)
              for a, k in [("t5", k) for k in SEGMENTED_KINDS] + [("bart", "srformer"), ("bart", "xl")]]


@pytest.mark.parametrize("arch,kind", ARCH_KINDS)
def test_length_schedule_equals_padded_schedule_on_each_example_cut_to_its_length(arch, kind):
  """The definition: on a padded batch, each example reads what the paper's schedule reads on that
  example alone without padding (m = ceil(len / s)). This also shows that an example's logits do
  not depend on the padding after it nor on the other examples of its batch."""
  s = 4 if kind != "xl" else 8  # s = 4 < d_kv = 8: the V W route of the RAF input (T5)
  padded = tiny(arch, cross_attention=kind, segment_size=s, gen_len=10)
  length = dataclasses.replace(padded, segment_schedule="length")
  params = init_params(padded, jax.random.key(1))
  ids, mask, dec = ragged_batch()
  got = _logits(length, params, ids, mask, dec)
  for row, n in enumerate(LENGTHS):
    alone = _logits(padded, params, ids[row:row + 1, :n], mask[row:row + 1, :n], dec[row:row + 1])
    chex.assert_trees_all_close(got[row], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["srformer", pytest.param("xl", marks=pytest.mark.slow)])
def test_length_schedule_does_not_depend_on_padding(kind):
  """The same documents padded to 104 and to 128 tokens give the same logits (1e-5); under the
  paper's schedule they do not (the check is sensitive)."""
  config = tiny(cross_attention=kind, segment_size=8, gen_len=10, segment_schedule="length")
  params = init_params(config, jax.random.key(2))
  lengths = (100, 33, 5)  # 13 (more than the 10 decoder positions), 5 and 1 segments at s = 8
  ids, mask, dec = ragged_batch(k_len=128, lengths=lengths)
  short = _logits(config, params, ids[:, :104], mask[:, :104], dec)
  long = _logits(config, params, ids, mask, dec)
  chex.assert_trees_all_close(short, long, atol=1e-5, rtol=0)
  padded = dataclasses.replace(config, segment_schedule="padded")
  diff = jnp.max(jnp.abs(_logits(padded, params, ids[:, :104], mask[:, :104], dec)
                         - _logits(padded, params, ids, mask, dec)))
  assert diff > 1e-3


@pytest.mark.parametrize("arch,kind", [("t5", "srformer"), ("t5", "xl"), ("bart", "srformer")])
def test_length_schedule_equals_padded_when_every_example_fills_the_input(arch, kind):
  """The two schedules are the same computation here, so they agree to float64 rounding (in float32
  the two compiled graphs fuse differently and differ by a few ulps)."""
  config = tiny(arch, cross_attention=kind, segment_size=4, gen_len=10, dtype="float64")
  ids, mask, dec = ragged_batch(k_len=37, lengths=(37, 37, 37))
  length = dataclasses.replace(config, segment_schedule="length")
  with jax.enable_x64(True):
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), init_params(config, jax.random.key(3)))
    got = _logits(length, params, ids, mask, dec)
    assert got.dtype == jnp.float64
    chex.assert_trees_all_close(got, _logits(config, params, ids, mask, dec), atol=1e-12, rtol=0)


@pytest.mark.parametrize("arch,kind", ARCH_KINDS)
def test_length_schedule_cached_decoding_equals_teacher_forcing(arch, kind):
  config = tiny(arch, cross_attention=kind, segment_size=4, gen_len=10, segment_schedule="length")
  ids, mask, dec = ragged_batch()
  checks.cached_equals_teacher_forced(config, init_params(config, jax.random.key(1)), ids, mask, dec)


def test_length_schedule_beam_search_equals_each_example_alone():
  """Beam search on a ragged batch returns, per example, what the paper's schedule returns on that
  example alone, cut to its length; and the returned score is the sequence's teacher-forced
  log-probability (the per-example cache is consistent across beams)."""
  config = tiny(cross_attention="srformer", segment_size=4, gen_len=8, segment_schedule="length")
  params = init_params(config, jax.random.key(4))
  ids, mask, _ = ragged_batch()
  dc = DecodeConfig(max_len=8, num_beams=3, length_penalty=0.0)
  model = build_model(config)
  seqs, scores = generate(model, params, ids, mask, dc, return_scores=True)
  padded = dataclasses.replace(config, segment_schedule="padded")
  for row, n in enumerate(LENGTHS):
    alone, alone_score = generate(build_model(padded), params, ids[row:row + 1, :n],
                                  mask[row:row + 1, :n], dc, return_scores=True)
    np.testing.assert_array_equal(seqs[row], alone[0])
    np.testing.assert_allclose(scores[row], alone_score[0], atol=1e-5)
  # score = sum of log-probs of the tokens up to and including EOS (length_penalty 0)
  dec_in = jnp.concatenate([jnp.full((3, 1), config.decoder_start_token_id), seqs[:, :-1]], axis=1)
  logp = jax.nn.log_softmax(model.apply({"params": params}, ids, mask, dec_in), axis=-1)
  tok_lp = jnp.take_along_axis(logp, seqs[..., None], axis=-1)[..., 0]
  eos_at = jnp.argmax(seqs == config.eos_token_id, axis=1)
  ended = jnp.any(seqs == config.eos_token_id, axis=1)
  upto = jnp.where(ended, eos_at, seqs.shape[1] - 1)
  keep = jnp.arange(seqs.shape[1])[None] <= upto[:, None]
  np.testing.assert_allclose(jnp.sum(tok_lp * keep, axis=1), scores, atol=1e-4)


def test_raf_scan_with_per_example_active_equals_separate_scans():
  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.normal(size=(5, 3, 2, 2)), jnp.float32)  # [segments, batch, d, e]
  active = jnp.asarray(rng.random((5, 3)) > 0.4)
  th, leak = jnp.asarray([0.3]), jnp.asarray([0.7])
  outs, mem = raf.raf_scan(xs, active, th, leak)
  for b in range(3):
    ob, mb = raf.raf_scan(xs[:, b], active[:, b], th, leak)
    chex.assert_trees_all_close((outs[:, b], mem[b]), (ob, mb), atol=1e-6, rtol=0)


@pytest.mark.parametrize("per_example,axis", [(False, 0), (True, 0), (True, 1)])
def test_raf_scan_gradient_equals_stepping_raf_step(per_example, axis):
  """raf_scan's values and own gradient (custom VJP) against JAX's gradient of a plain loop of
  raf_step, for the inputs, threshold, leak and initial membrane, with a cotangent on the final
  membrane too; inputs large enough that some elements fire and some do not (the soft reset is
  exercised). axis=1: the same with the segment axis second ([batch, segments, ...])."""
  rng = np.random.default_rng(1)
  n, b = 6, 3
  xs = jnp.asarray(rng.normal(0.0, 0.6, (n, b, 2, 3)), jnp.float32)
  mem0 = jnp.asarray(rng.normal(0.0, 0.3, (b, 2, 3)), jnp.float32)
  active = jnp.asarray(rng.random((n, b)) > 0.3) if per_example else jnp.asarray([1, 1, 0, 1, 1, 1], bool)
  w_out = jnp.asarray(rng.normal(size=xs.shape), jnp.float32)
  w_mem = jnp.asarray(rng.normal(size=mem0.shape), jnp.float32)

  def reference(xs, th, leak, mem0):
    mem, outs = mem0, []
    for i in range(n):
      new_mem, out = raf.raf_step(mem, xs[i], th, leak)
      on = active[i].reshape(active[i].shape + (1,) * (xs.ndim - 1 - active[i].ndim))
      mem = jnp.where(on, new_mem, mem)
      outs.append(jnp.where(on, out, 0.0))
    return jnp.stack(outs), mem

  def loss(fn, *args):
    outs, mem = fn(*args)
    return jnp.sum(outs * w_out) + jnp.sum(mem * w_mem)

  args = (xs, jnp.asarray([0.25]), jnp.asarray([0.6]), mem0)

  def scan(xs, th, leak, mem0):
    if axis == 0:
      return raf.raf_scan(xs, active, th, leak, mem0)
    outs, mem = raf.raf_scan(jnp.swapaxes(xs, 0, 1), active, th, leak, mem0, axis=1)
    return jnp.swapaxes(outs, 0, 1), mem

  outs, _ = scan(*args)
  assert 0.2 < float(jnp.mean(outs > 0)) < 0.8  # the test covers both sides of the threshold
  chex.assert_trees_all_close(scan(*args), reference(*args), atol=1e-6, rtol=0)
  got = jax.grad(lambda *a: loss(scan, *a), argnums=(0, 1, 2, 3))(*args)
  want = jax.grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2, 3))(*args)
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_raf_scan_rejects_per_example_active_away_from_the_batch_axis():
  xs = jnp.zeros((3, 2, 4, 2))  # [batch, heads, segments, d]
  with pytest.raises(ValueError, match="axis 0 or 1"):
    raf.raf_scan(xs, jnp.ones((4, 3), bool), jnp.asarray([0.3]), jnp.asarray([0.7]), axis=2)


def test_length_schedule_rejects_faithful_mode():
  with pytest.raises(ValueError, match="faithful"):
    tiny(cross_attention="srformer", segment_schedule="length", faithful=True)
  with pytest.raises(ValueError, match="segment_schedule"):
    tiny(cross_attention="srformer", segment_schedule="per_example")


def test_raf_statistics_report_firing_per_layer():
  from srformer_jax.diagnostics import raf_statistics
  config = tiny(cross_attention="srformer", segment_size=4, gen_len=10, segment_schedule="length")
  params = init_params(config, jax.random.key(1))
  ids, mask, dec = ragged_batch()
  stats = raf_statistics(build_model(config), params, ids, mask, dec)
  assert len(stats) == config.num_decoder_layers
  for layer in stats.values():
    assert 0.0 < layer["raf_fired"] < 1.0 and layer["raf_mean_abs_out"] > 0.0
    assert 0.0 < layer["recurrent_share"] < 1.0
    assert layer["threshold"] == pytest.approx(config.raf_threshold_init)
  padded = dataclasses.replace(config, segment_schedule="padded")
  for layer in raf_statistics(build_model(padded), params, ids, mask, dec).values():
    assert 0.0 < layer["raf_fired"] < 1.0 and 0.0 < layer["recurrent_share"] < 1.0
  # an enormous threshold: nothing fires, nothing is passed on
  high = jax.tree_util.tree_map_with_path(
      lambda p, x: x * 1e6 if "threshold" in jax.tree_util.keystr(p) else x, params)
  for layer in raf_statistics(build_model(config), high, ids, mask, dec).values():
    assert layer["raf_fired"] == 0.0 and layer["recurrent_share"] == 0.0
  assert raf_statistics(build_model(dataclasses.replace(config, cross_attention="segmented")),
                        params, ids, mask, dec) == {}


def test_source_reliance_is_the_loss_with_own_and_rotated_documents():
  from srformer_jax.diagnostics import parts_of, source_reliance
  from srformer_jax.layers import shift_right
  config = tiny(cross_attention="srformer", segment_size=8, gen_len=10)
  params = init_params(config, jax.random.key(2))
  ids, mask, labels = ragged_batch()
  weights = (np.arange(10)[None] < np.array([[10], [7], [4]])).astype(np.int32)

  def mean_loss(ids, mask):  # independent of source_reliance: the model's log-probs directly
    dec = shift_right(jnp.asarray(labels), config.decoder_start_token_id, config.pad_token_id)
    logp = jax.nn.log_softmax(_logits(config, params, ids, mask, dec), -1)
    nll = -np.take_along_axis(np.asarray(logp), labels[..., None], -1)[..., 0]
    return float((nll * weights).sum() / weights.sum())

  batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "label_mask": weights}
  padded = {k: np.concatenate([v, v[:1] * 0 + 5]) for k, v in batch.items()}  # a 4th, padding row
  lone = {k: v[:1] for k, v in batch.items()}
  out = source_reliance(build_model(config), params, [(padded, 3), (lone, 1)])
  own, rotated = mean_loss(ids, mask), mean_loss(np.roll(ids, 1, 0), np.roll(mask, 1, 0))
  assert out["test_loss"] == pytest.approx(own, abs=1e-5)
  assert out["test_loss_rotated_source"] == pytest.approx(rotated, abs=1e-5)
  assert out["source_gain"] == pytest.approx(rotated - own, abs=1e-5) and abs(rotated - own) > 1e-4
  assert out["tokens"] == weights.sum()  # the padding row and the lone example are not counted
  # joined summaries: the same per part, the parts cut after each separator (its tokens: the part it ends)
  sep = (1, 2)  # ids the random labels (>= 3) never hold
  labels_sep = labels.copy()
  labels_sep[:, 2:4] = sep  # every row: a separator at 2..3 (the last row's real tokens end there)
  parts = parts_of(labels_sep, sep)
  assert (parts[:, :4] == 0).all() and (parts[:, 4:] == 1).all()
  batch = dict(batch, labels=labels_sep)
  by_part = source_reliance(build_model(config), params, [(batch, 3)], part_ids=sep)["by_part"]
  labels = labels_sep
  for part, weights_part in ((0, weights * (parts == 0)), (1, weights * (parts == 1))):
    weights = weights_part
    own, rotated = mean_loss(ids, mask), mean_loss(np.roll(ids, 1, 0), np.roll(mask, 1, 0))
    assert by_part[part]["part"] == part and by_part[part]["tokens"] == weights.sum()
    assert by_part[part]["source_gain"] == pytest.approx(rotated - own, abs=1e-5)
  assert len(by_part) == 2


def test_length_schedule_with_raf_remat_same_loss_and_gradients():
  config = tiny(cross_attention="srformer", segment_size=4, gen_len=10, segment_schedule="length")
  params = init_params(config, jax.random.key(5))
  ids, mask, dec = ragged_batch()

  def loss_and_grads(cfg):
    loss = lambda p: jnp.sum(_logits(cfg, p, ids, mask, dec) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  want = loss_and_grads(config)
  got = loss_and_grads(dataclasses.replace(config, raf_remat=True))
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-6)
  assert float(jnp.abs(want[1]["decoder"]["block_0"]["layer_1"]["EncDecAttention"]["threshold"]).max()) > 0
