"""How the package is put together: no import circle, kernels chosen per backend (each CPU form
against the plain JAX form), defaults declared once, run files named once."""

import ast
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srformer_jax import CROSS_ATTENTION_KINDS, ModelConfig, build_model, init_params, layers
from srformer_jax.config import cpu_kernels
from tests.test_srformer import batch, tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "srformer_jax"


# ------------------------------------------------------------------------------------------------
# imports


def import_graph(root: str = REPO) -> dict[str, set[str]]:
  """module -> the package modules it imports, at module level or inside functions alike."""
  files = {}
  for d, _, names in os.walk(os.path.join(root, PKG)):
    for n in names:
      if n.endswith(".py"):
        rel = os.path.relpath(os.path.join(d, n), root)[:-3].replace(os.sep, ".")
        files[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(d, n)

  def module_of(name: str) -> str:
    while name not in files and "." in name:
      name = name.rsplit(".", 1)[0]
    return name if name in files else ""

  graph = {}
  for mod, path in files.items():
    edges = set()
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Import):
        edges |= {module_of(a.name) for a in node.names if a.name.startswith(PKG)}
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the importing module's package
          parts = mod.split(".")[:len(mod.split(".")) - node.level + (1 if path.endswith("__init__.py") else 0)]
          base = ".".join(parts + ([base] if base else []))
        if base.startswith(PKG):
          edges |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else module_of(base) for a in node.names}
    graph[mod] = edges - {mod, ""}
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan)."""
  index, low, on, stack, out = {}, {}, set(), [], []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_circle_in_the_package():
  graph = import_graph()
  assert "srformer_jax.train_lib" in graph and "srformer_jax.loop" in graph["srformer_jax.train_lib"]
  assert cycles(graph) == []


def test_the_circle_finder_finds_a_circle():
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  # a function-level import is an edge like any other (entry -> train_lib -> run_setup -> entry was one)
  tree = {"srformer_jax.entry": {"srformer_jax.train_lib"}, "srformer_jax.train_lib": {"srformer_jax.run_setup"},
          "srformer_jax.run_setup": {"srformer_jax.entry"}}
  assert len(cycles(tree)) == 1


def test_run_file_names_are_written_in_one_module():
  """The run directory's file names appear as literals only in runfiles.py."""
  names = ('"model_config.json"', '"run_config.json"', '"metrics.jsonl"', '"rouge.json"', '"predictions.jsonl"',
           '"data_stats.json"', '"loss.png"', '"eval_results.json"', '"best.json"', '"stopped.json"')
  found = []
  for d, _, files in os.walk(os.path.join(REPO, PKG)):
    for n in files:
      if n.endswith(".py") and n != "runfiles.py":
        text = open(os.path.join(d, n)).read()
        found += [f"{n}: {name}" for name in names if name in text]
  assert found == []


# ------------------------------------------------------------------------------------------------
# kernels per backend


def test_kernels_choice_follows_the_backend():
  assert cpu_kernels("cpu") and not cpu_kernels("xla")
  assert cpu_kernels("auto") == (jax.default_backend() == "cpu")
  with pytest.raises(ValueError, match="kernels must be one of"):
    tiny(kernels="gpu")


def _loss_and_grads(config, params, ids, mask, dec):
  from srformer_jax.train_lib import loss_and_metrics
  model = build_model(config)
  labels = jnp.asarray(dec)
  b = {"input_ids": ids, "attention_mask": mask, "labels": labels, "label_mask": jnp.ones_like(labels)}
  (loss, m), g = jax.value_and_grad(lambda p: loss_and_metrics(model, p, b, None, True), has_aux=True)(params)
  return loss, m["correct"], g


@pytest.mark.parametrize("arch", ["t5", "bart"])
@pytest.mark.parametrize("kind", CROSS_ATTENTION_KINDS)
def test_cpu_forms_equal_the_plain_forms(arch, kind):
  """kernels="cpu" and kernels="xla" give the same loss, token accuracy and gradients (float64:
  the forms are the same arithmetic up to rounding), for every cross-attention kind."""
  ids, mask, dec = batch()
  with jax.enable_x64(True):
    base = tiny(arch, cross_attention=kind, segment_size=4, gen_len=12, dtype="float64")
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), init_params(base, jax.random.key(1)))
    got = [_loss_and_grads(dataclasses.replace(base, kernels=k), params, ids, mask, dec) for k in ("cpu", "xla")]
    (l1, c1, g1), (l2, c2, g2) = got
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-12)
    assert float(c1) == float(c2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12), g1, g2)


@pytest.mark.parametrize("kind", ["srformer", "xl", "pooled", "local_window", "linear"])
def test_greedy_decoding_equals_with_either_form(kind):
  """The cross step's beam-free greedy layout (the CPU form) and the rows layout give the same tokens."""
  from srformer_jax.decoding import DecodeConfig, generate
  ids, mask, _ = batch()
  dc = DecodeConfig(max_len=12, num_beams=1)
  out = []
  for k in ("cpu", "xla"):
    config = tiny(cross_attention=kind, segment_size=4, gen_len=12, kernels=k)
    out.append(np.asarray(generate(build_model(config), init_params(config, jax.random.key(2)), ids, mask, dc)))
  np.testing.assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("hashed", [True, False])
def test_both_dropout_forms_keep_the_rate_independently(hashed):
  """Keep rate within 5 sigma of 1 - rate (the hashed form's rounded rate), scaled kept values, and
  neighbours (along either axis) uncorrelated within 5 sigma."""
  rate = 0.1
  x = jnp.ones((256, 512), jnp.float32)
  out = np.asarray(layers.Dropout(rate, hashed=hashed).apply({}, x, False, rngs={"dropout": jax.random.key(3)}))
  kept = out != 0
  n = kept.size
  want = 1 - (layers.dropout_rate_rounded(rate) if hashed else rate)
  assert abs(kept.mean() - want) < 5 * np.sqrt(want * (1 - want) / n)
  np.testing.assert_allclose(out[kept], 1 / want, rtol=1e-6)
  k = kept.astype(np.float64) - kept.mean()
  for a, b in ((k[:, 1:], k[:, :-1]), (k[1:], k[:-1])):
    corr = (a * b).mean() / k.var()
    assert abs(corr) < 5 / np.sqrt(a.size), corr


# ------------------------------------------------------------------------------------------------
# defaults declared once


@pytest.mark.parametrize("name,leak", [("t5_v1_0", 0.1), ("bart", 0.5)])
def test_a_run_from_a_hf_checkpoint_gets_its_architectures_raf_leak(hf_dirs, name, leak):
  """config.model.raf_leak_init is None unless set: a BART run gets BART's 0.5 (the authors' code),
  a T5 run 0.1; a value set in the config wins."""
  import types

  from configs import base
  from srformer_jax import run_setup
  cfg = base.base_config()
  cfg.model.init_from = hf_dirs[name].path
  tok = types.SimpleNamespace(vocab_size=8)  # build_model_config only checks it fits the model
  assert run_setup.build_model_config(cfg, tok)[0].raf_leak_init == leak
  cfg.model.raf_leak_init = 0.3
  assert run_setup.build_model_config(cfg, tok)[0].raf_leak_init == 0.3


def test_an_old_run_config_is_completed_from_the_declared_defaults():
  import json

  import ml_collections

  from configs import default
  from srformer_jax import defaults
  saved = json.loads(default.get_config().to_json_best_effort())
  del saved["model"]["kernels"], saved["train"]["peer_timeout_s"]
  cfg = defaults.with_defaults(ml_collections.ConfigDict(saved))
  assert cfg.model.kernels == "auto" and cfg.train.peer_timeout_s == 30
  assert cfg.model.scratch.d_model == default.get_config().model.scratch.d_model  # kept as saved


def test_every_model_config_field_a_run_sets_is_declared_in_the_defaults():
  """run_setup.model_fields reads config.model directly: each field it passes is declared."""
  from srformer_jax import defaults, run_setup
  cfg = defaults.base_config()
  fields = run_setup.model_fields(cfg)
  assert set(fields) <= {f.name for f in dataclasses.fields(ModelConfig)}
  ModelConfig(arch="t5", vocab_size=8, d_model=8, num_heads=2, d_kv=4, d_ff=8, num_encoder_layers=1,
              num_decoder_layers=1, **fields)  # and the defaults make a valid model


# ------------------------------------------------------------------------------------------------
# what the benchmarks use is public API


def test_trainer_lower_compiles_the_step_the_trainer_runs():
  """Trainer.lower (the benchmarks read its cost and memory analysis) lowers the very step that
  Trainer.step runs: its compiled executable gives the same new state and metrics."""
  import ml_collections

  from srformer_jax import sharding
  from srformer_jax.defaults import train_section
  from srformer_jax.train_lib import Trainer
  from srformer_jax.trainer import make_optimizer
  config = tiny(cross_attention="srformer", segment_size=4)
  tx, schedule = make_optimizer(ml_collections.ConfigDict({"train": train_section(num_steps=10)}))
  trainer = Trainer(build_model(config), tx, schedule, sharding.make_mesh((1, 1, 1)), guard=True)
  ids, mask, dec = batch()
  host = {"input_ids": ids, "attention_mask": mask, "labels": dec, "label_mask": np.ones_like(dec)}
  rng = jax.random.key(0)
  compiled = trainer.lower(trainer.abstract_state(), trainer.shard_batch(host), rng).compile()
  assert compiled.cost_analysis() and compiled.memory_analysis() is not None
  state = trainer.init_state(jax.random.key(1))
  copy = jax.tree.map(jnp.copy, state)
  first_bad = jax.device_put(np.int32(-1), trainer.replicated)
  a, ma = compiled(state, trainer.shard_batch(host), rng, first_bad)
  b, mb = trainer.step(copy, host, rng)
  jax.tree.map(np.testing.assert_array_equal, (a.params, ma["loss"]), (b.params, mb["loss"]))


def test_cross_attention_config_builds_the_costed_module():
  from srformer_jax import cost
  c = cost.cross_attention_config("pooled", q_len=16, d=8, s=4, heads=2)
  assert (c.cross_attention, c.segment_size, c.gen_len, c.num_heads, c.d_kv) == ("pooled", 4, 16, 2, 8)
  assert cost.cross_attention_cost("segmented", 16, 64, 8, 4)["flops"] < cost.cross_attention_cost("full", 16, 64, 8, 4)["flops"]
