"""benchmarks/cpu_efficiency.py's profile summary: where a compiled step's time goes, by XLA op."""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import cpu_efficiency


def _compiled():
  """A step whose time is mostly one large matmul, beside a scanned loop of small ones."""
  def body(c, x):
    return jnp.tanh(c @ x), None

  def f(a, small, xs):
    c, _ = jax.lax.scan(body, small, xs)
    return (a @ a).sum() + c.sum()

  args = (jnp.asarray(np.random.default_rng(0).normal(size=(384, 384)), jnp.float32),
          jnp.ones((8, 8), jnp.float32), jnp.ones((4, 8, 8), jnp.float32) * 0.1)
  return jax.jit(f).lower(*args).compile(), args


def test_hlo_index_classifies_fusions_by_what_they_compute():
  compiled, _ = _compiled()
  index = cpu_efficiency._hlo_index(compiled.as_text())
  kinds = {name: cpu_efficiency._category(*entry) for name, entry in index.items()}
  assert any(op == "while" for op, _, _ in index.values())
  assert [k for n, k in kinds.items() if index[n][0] == "while"] == ["loop control"]
  assert "matmul" in kinds.values()
  assert cpu_efficiency._category("fusion", ("parameter", "multiply", "add"), "jit(f)/add") == "elementwise"
  assert cpu_efficiency._category("fusion", ("parameter", "reduce"), "x") == "reduce"
  assert cpu_efficiency._category("fusion", ("parameter", "dot", "add"), "x") == "matmul"
  assert cpu_efficiency._category("fusion", ("shift-right-logical", "xor"), "jvp()/dropout/random_bits") \
      == "dropout rng"


def test_profile_summary_counts_self_time_and_sums_to_one():
  compiled, args = _compiled()
  hlo = compiled.as_text()
  prof = cpu_efficiency.profile_summary(lambda: compiled(*args), hlo, steps=3, top=50)
  assert prof["op_ms_per_step"] > 0
  np.testing.assert_allclose(sum(prof["kind_share"].values()), 1.0, rtol=1e-6)
  np.testing.assert_allclose(sum(o["share"] for o in prof["top_ops"]), 1.0, rtol=1e-6)
  assert all(o["op"] in hlo for o in prof["top_ops"])
  # the 384^3 matmul is ~100x the scanned 8x8 ones: most of the op time, more than the loop's own
  assert prof["top_ops"][0]["kind"] == "matmul"
  assert prof["kind_share"]["matmul"] > 0.5
  assert prof["kind_share"].get("loop control", 0.0) < prof["kind_share"]["matmul"]
  assert all(o["ms_per_step"] >= 0 for o in prof["top_ops"])  # a loop's body is not subtracted twice
  assert prof["backward_share"] == 0.0  # no jvp transpose in a forward-only function


def test_hlo_dots_finds_every_matmul_with_its_shapes_and_the_floor_times_them():
  """hlo_dots reads each dot of the optimized module (top level, fused with elementwise work, batched,
  inside a loop body, counted once per trip); matmul_floor times each distinct one alone and counts
  how often it runs."""
  def f(a, b, q, k, xs):
    c, _ = jax.lax.scan(lambda c, x: (jnp.tanh(c @ x), None), jnp.ones((8, 8)), xs)
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k)  # batched, contracting the last axes
    return (jnp.tanh(a @ b) @ b.T).sum() + (a @ b).sum() + scores.sum() + c.sum()

  rng = np.random.default_rng(0)
  args = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((48, 32), (32, 40), (2, 3, 5, 4), (2, 3, 7, 4),
                                                                   (4, 8, 8))]
  hlo = jax.jit(f).lower(*args).compile().as_text()
  dots = cpu_efficiency.hlo_dots(hlo)
  sigs = sorted((d["lhs"], d["rhs"], d["batch"]) for d in dots)
  batched = [d for d in dots if d["batch"] != ((), ())]
  assert len(batched) == 1 and batched[0]["lhs"] == (2, 3, 5, 4) and batched[0]["rhs"] == (2, 3, 7, 4), sigs
  assert batched[0]["contracting"] == ((3,), (3,)) and batched[0]["dtypes"] == ("f32", "f32", "f32")
  assert cpu_efficiency._dot_flops(batched[0]) == 2 * 2 * 3 * 5 * 4 * 7
  assert ((8, 8), (8, 8), ((), ())) in sigs  # the loop body's, run once per step of the scan
  assert [d["runs"] for d in dots if d["lhs"] == (8, 8)] == [4]
  assert all(d["runs"] == 1 for d in dots if d["lhs"] != (8, 8))
  # a @ b appears twice in f: XLA may compute it once; the [48, 40] x [32, 40]^T product is there either way
  assert any(d["lhs"] == (48, 40) and d["rhs"] == (32, 40) or d["lhs"] == (32, 40) and d["rhs"] == (48, 40)
             for d in dots), sigs
  floor = cpu_efficiency.matmul_floor(hlo, repeats=2)
  assert floor["dots"] == len(dots) and floor["runs"] == len(dots) + 3
  assert len(set(sigs)) <= floor["distinct"] <= len(dots)
  assert floor["s"] > 0 and sum(r["count"] for r in floor["slowest"]) <= floor["runs"]
  assert all(r["ms_each"] > 0 and r["flops_per_s"] > 0 for r in floor["slowest"])
