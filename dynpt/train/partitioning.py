"""The device mesh and the mapping from logical axis names to mesh axes.

Models name the axes of their parameters and activations logically (`embed`,
`mlp`, `heads`, `vocab`, ...; see docs/model.md). This module is the one place
that maps those names onto a 2-D `(data, model)` mesh, t5x-style, so the same
model runs data-parallel, fully-sharded (fsdp) or model-parallel by changing
one argument.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, ContextManager, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
MODEL = "model"

# Logical names that are split across the `model` mesh axis under model
# parallelism (Megatron-style: column-parallel in, row-parallel out).
_MODEL_PARALLEL_AXES = ("mlp", "heads", "vocab", "joined_kv")
# Logical names that are never sharded (small or awkward to split).
_REPLICATED_AXES = ("kv", "relpos_buckets", "length", "conv_height",
                    "conv_width", "conv_in", "conv_out", "norm", "frames",
                    "visual_positions", "layers")

PARTITION_MODES = ("data_parallel", "fsdp", "model_parallel",
                   "fsdp_model_parallel")


def logical_axis_rules(mode: str = "data_parallel") -> tuple:
  """Returns flax logical-axis rules for a partitioning mode.

  Args:
    mode: `data_parallel` (params replicated, batch split over `data`);
      `fsdp` (params' `embed` dim also split over `data`, ZeRO-3 style);
      `model_parallel` (`mlp`/`heads`/`vocab` split over `model`);
      `fsdp_model_parallel` (both).

  Raises:
    ValueError: naming the mode when it is unknown.
  """
  if mode not in PARTITION_MODES:
    raise ValueError(f"unknown partition mode {mode!r}; known: {PARTITION_MODES}")
  fsdp = mode.startswith("fsdp")
  mp = mode.endswith("model_parallel")
  rules = [("batch", DATA)]
  rules.append(("embed", DATA if fsdp else None))
  for name in _MODEL_PARALLEL_AXES:
    rules.append((name, MODEL if mp else None))
  for name in _REPLICATED_AXES:
    rules.append((name, None))
  return tuple(rules)


def activation_axis_rules(mode: str = "data_parallel") -> tuple:
  """Logical-axis rules for the activations traced inside a step.

  The same mapping as `logical_axis_rules` except for `embed`: under fsdp a
  parameter's `embed` dim is split over `data`, but an activation's `batch` dim
  already holds `data`, and its `embed` dim stays whole (ZeRO-3: weights are
  gathered per layer, activations stay batch-sharded).

  Raises:
    ValueError: naming the mode when it is unknown.
  """
  return tuple((name, None) if name == "embed" else (name, axis)
               for name, axis in logical_axis_rules(mode))


def trace_context(mesh: Mesh, mode: str) -> Callable[[], ContextManager]:
  """A factory of the context a sharded program must be traced in.

  flax's `nn.with_logical_constraint` (in t5.py, vl_model.py, resnet.py) is a
  no-op unless logical-axis rules are bound and an (abstract) mesh is set while
  the program is traced, as t5x's partitioner and big_vision's train.py do. The
  factory is entered inside the traced function (`traced_under_rules`), so the
  constraints take effect wherever and however the function is jitted.
  """
  rules = activation_axis_rules(mode)

  @contextlib.contextmanager
  def context():
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), \
        nn.logical_axis_rules(rules):
      yield

  return context


def traced_under_rules(fn: Callable, mesh: Mesh, mode: str) -> Callable:
  """`fn`, traced under `mesh` and the activation rules of `mode` (jit it after).

  The result keeps `fn`'s name (a `functools.partial`'s function's), which jit
  gives the program: a profile or an HLO dump shows `jit_train_step`.
  """
  context = trace_context(mesh, mode)

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with context():
      return fn(*args, **kwargs)

  named = fn
  while isinstance(named, functools.partial):
    named = named.func
  wrapped.__name__ = wrapped.__qualname__ = getattr(named, "__name__", "traced")
  return wrapped


def create_mesh(num_model_partitions: int = 1,
                devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, model) mesh over all (or the given) devices.

  Raises:
    ValueError: if the device count is not divisible by `num_model_partitions`.
  """
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if num_model_partitions < 1 or n % num_model_partitions:
    raise ValueError(
        f"num_model_partitions={num_model_partitions} does not divide the "
        f"{n} available devices")
  grid = np.asarray(devices).reshape(n // num_model_partitions,
                                     num_model_partitions)
  return Mesh(grid, (DATA, MODEL))


def _spec_for_leaf(leaf: Any, rules, mesh_shape: Mapping[str, int]) -> P:
  if isinstance(leaf, nn.LogicallyPartitioned):
    if not hasattr(leaf.value, "shape"):
      # optax.MaskedNode (no state for frozen params): a subtree without
      # leaves, kept as is so the shardings tree matches the state's.
      return leaf.value
    spec = nn.logical_to_mesh_axes(leaf.names, rules)
    return _drop_indivisible(spec, leaf.value.shape, mesh_shape)
  return P()


def _drop_indivisible(spec: P, shape, mesh_shape: Mapping[str, int]) -> P:
  """Replicates dims whose size the mesh axis does not divide (tiny models)."""
  out = []
  for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axis is not None and dim % mesh_shape[axis]:
      axis = None
    out.append(axis)
  return P(*out)


def param_specs(boxed_params: Any, mesh_shape: Mapping[str, int], rules) -> Any:
  """PartitionSpecs of a (possibly abstract) boxed tree on a mesh of this shape.

  Needs only the mesh's axis sizes, not its devices, so a memory estimate can
  place a model on a mesh larger than this machine (`dynpt.train.memory`).
  """
  return jax.tree.map(lambda x: _spec_for_leaf(x, rules, mesh_shape),
                      boxed_params,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def param_shardings(boxed_params: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a (possibly abstract) boxed param tree.

  Leaves that carry logical names (`nn.LogicallyPartitioned`) are placed by
  `rules`; unnamed leaves are replicated.
  """
  specs = param_specs(boxed_params, mesh.shape, rules)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch arrays are split over `data` on their leading dim."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
