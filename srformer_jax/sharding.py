"""Logical axis names and their mapping onto the device mesh (data / fsdp / tensor).

Every parameter and the main activations are annotated with *logical* axis names in the model code;
the rules below map them to *mesh* axes. Changing a parallelism strategy means changing the rules,
never the model.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axes used in the model.
BATCH = "batch"
LENGTH = "length"
EMBED = "embed"        # d_model
VOCAB = "vocab"
MLP = "mlp"            # d_ff
HEADS = "heads"
KV = "kv"              # per-head dim
JOINED_KV = "joined_kv"  # heads * d_kv (projection outputs)

# (logical axis, mesh axis or axes). Parameters are sharded FSDP-style on `embed` and tensor-parallel
# on vocab / mlp / heads; activations are sharded over data and fsdp on the batch axis.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (BATCH, ("data", "fsdp")),
    (LENGTH, None),
    (EMBED, "fsdp"),
    (VOCAB, "tensor"),
    (MLP, "tensor"),
    (HEADS, "tensor"),
    (JOINED_KV, "tensor"),
    (KV, None),
)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
  """A mesh with axes (data, fsdp, tensor); one -1 entry takes the remaining devices."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  shape = list(shape)
  if len(shape) != 3:
    raise ValueError(f"mesh shape must have 3 entries (data, fsdp, tensor), got {shape}")
  if shape.count(-1) > 1:
    raise ValueError(f"at most one mesh dimension may be -1, got {shape}")
  known = int(np.prod([d for d in shape if d != -1]))
  if -1 in shape:
    if devices.size % known:
      raise ValueError(f"{devices.size} devices cannot be split into mesh {shape}")
    shape[shape.index(-1)] = devices.size // known
  n = int(np.prod(shape))
  if n > devices.size:
    raise ValueError(f"mesh {tuple(shape)} needs {n} devices, {devices.size} available")
  return Mesh(devices.reshape(-1)[:n].reshape(shape), MESH_AXES)  # a smaller mesh uses the first n


def mesh_context(mesh: Mesh, rules=DEFAULT_RULES) -> contextlib.ExitStack:
  """The mesh and logical axis rules in force while tracing (activation sharding constraints)."""
  stack = contextlib.ExitStack()
  stack.enter_context(jax.sharding.use_mesh(mesh) if hasattr(jax.sharding, "use_mesh") else mesh)
  stack.enter_context(nn.logical_axis_rules(rules))
  return stack


def logical_to_sharding(logical_specs, mesh: Mesh, rules=DEFAULT_RULES):
  """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), mesh_specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_shards(mesh: Mesh, rules=DEFAULT_RULES) -> int:
  """How many ways `rules` split the batch axis over `mesh` (data x fsdp under the default rules)."""
  axes = nn.logical_to_mesh_axes((BATCH,), rules)[0]
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  return int(np.prod([mesh.shape[a] for a in axes]))


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
  """Sharding of a [batch, length] input array."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes((BATCH, LENGTH), rules))


def with_constraint(x, logical_axes: Sequence[str | None]):
  """Annotates an activation with logical axes (a no-op outside a mesh / rules context)."""
  return nn.with_logical_constraint(x, tuple(logical_axes))
