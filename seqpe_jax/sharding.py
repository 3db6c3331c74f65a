"""Device mesh, the logical-axis rule table, and state/batch shardings.

One mesh with axes `('data', 'fsdp', 'tensor')` (Auto axis types, so linen's
logical constraints work). Every parameter and activation carries logical
names (see `layers.py`); `RULES` maps them to mesh axes:

  batch activations     → ('data', 'fsdp')   data parallel over both axes
  param 'embed' dims    → 'fsdp'             FSDP: parameters and optimizer state sharded
  heads / mlp / vocab   → 'tensor'           tensor parallel: heads and MLP width split

A dimension that the mapped mesh axes do not divide is replicated instead
(e.g. a 10-class head under tensor=4), so any mesh works with any model.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from seqpe_jax.errors import ConfigError

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ('act_batch', BATCH_AXES),
    ('act_len', None),
    ('act_embed', None),
    ('act_heads', 'tensor'),
    ('act_mlp', 'tensor'),
    ('act_vocab', 'tensor'),
    # parameters
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('vocab', 'tensor'),
    ('kv', None),
    ('norm', None),
    ('pe_out', None),
    ('pe_qk', None),
)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """Resolves `data/fsdp/tensor` (one may be -1) to sizes multiplying to `num_devices`."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ConfigError(f'at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}')
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f'mesh axes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f'mesh axes {dict(zip(MESH_AXES, sizes))} cannot fill {num_devices} '
                        f'devices ({known} does not divide {num_devices})')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    have = 'is 1 device' if num_devices == 1 else f'are {num_devices} devices'
    raise ConfigError(f'mesh axes {dict(zip(MESH_AXES, sizes))} multiply to {math.prod(sizes)}, '
                      f'but there {have}')
  return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The `('data', 'fsdp', 'tensor')` mesh over `devices` (default: all), Auto axes."""
  if devices is None:
    devices = jax.devices()
    n = int(mesh_cfg.get('num_devices', 0) or 0)
    if n:
      if n > len(devices) or jax.process_count() > 1:
        raise ConfigError(f'mesh.num_devices={n} needs a single host with at least {n} devices '
                          f'(have {len(devices)} on {jax.process_count()} processes)')
      devices = devices[:n]
  devices = list(devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  try:  # topology-aware device order (ICI rings on TPU); plain order on CPU / one GPU host
    return jax.make_mesh(shape, MESH_AXES, axis_types, devices=devices)
  except (ValueError, AssertionError, NotImplementedError):  # a shape the topology cannot tile
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes that do not divide their dimension (replicate that dim instead)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[n] for n in names)
    out.append(axes if names and dim % size == 0 else None)
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def logical_shardings(abstract_boxed_tree, mesh: Mesh, rules=RULES):
  """NamedShardings for a (boxed, abstract) tree: logical names → mesh axes → fitted."""
  specs = nn.get_partition_spec(abstract_boxed_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  # Shapes without `nn.meta.unbox`, which would apply sharding constraints to abstract values.
  is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
  shapes = jax.tree.map(lambda x: (x.value if is_box(x) else x).shape, abstract_boxed_tree,
                        is_leaf=is_box)
  return jax.tree.map(lambda s, shape: NamedSharding(mesh, _fit(s, shape, mesh)), mesh_specs,
                      shapes, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) dim over ('data', 'fsdp'), the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from each process's local slice (multi-host safe)."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), v)
          for k, v in local.items()}


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)
