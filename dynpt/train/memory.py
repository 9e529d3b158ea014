"""Per-device memory estimate of a training run, before launching it.

A run that does not fit fails only after the slow part of a launch (TPU
creation, data loading, compilation). This module answers "does it fit on
this mesh?" from the configs alone:

* **params, gradients, optimizer state** are exact: their shapes come from
  `jax.eval_shape` of the model init and of the optimizer's `init` (nothing is
  allocated), and their per-device shards from the same logical-axis rules the
  trainer uses (`dynpt.train.partitioning.param_specs`). Gradients are one
  float32 copy of the params, sharded like them.
* **activations** are estimated analytically: the tensors the backward pass
  needs, per example, times the per-device batch (see `activation_bytes`).
  XLA fuses element-wise ops and frees buffers early, so the true peak is
  usually lower; treat the figure as a planning bound, not a measurement.
* **batch** is the input arrays of one step (uint8 images, int32 tokens).

All figures are bytes on one device.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dynpt.models import configs as model_configs
from dynpt.models import vl_model
from dynpt.models.resnet import STAGE_UNITS
from dynpt.train import optim, partitioning

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
_GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
  """Bytes per device of one training configuration.

  Attributes:
    params: the float32 parameters held by one device.
    gradients: one float32 gradient per held parameter.
    optimizer: optimizer state held by one device (AdamW: two moments).
    activations: analytic estimate of what the backward pass keeps.
    batch: the input arrays of one step on one device.
    num_params: total parameter count (unsharded).
    per_device_batch: examples per device.
    mesh_shape: (data, model) axis sizes.
    partition_mode: the `dynpt.train.partitioning` mode.
  """
  params: int
  gradients: int
  optimizer: int
  activations: int
  batch: int
  num_params: int
  per_device_batch: int
  mesh_shape: tuple[int, int]
  partition_mode: str

  @property
  def total(self) -> int:
    return (self.params + self.gradients + self.optimizer + self.activations
            + self.batch)

  def as_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["total"] = self.total
    return out

  def table(self) -> str:
    """A human-readable breakdown (GiB), one line per part."""
    lines = [f"mesh (data={self.mesh_shape[0]}, model={self.mesh_shape[1]}), "
             f"{self.partition_mode}, {self.num_params:,} params, "
             f"{self.per_device_batch} examples per device",
             f"{'part':<12}{'GiB/device':>12}"]
    for name in ("params", "gradients", "optimizer", "activations", "batch",
                 "total"):
      lines.append(f"{name:<12}{getattr(self, name) / _GIB:>12.3f}")
    return "\n".join(lines)


def summary_line(est: MemoryEstimate) -> str:
  """One log line: the total and its parts in GiB per device."""
  parts = ", ".join(f"{k} {getattr(est, k) / _GIB:.3f}" for k in
                    ("params", "gradients", "optimizer", "activations", "batch"))
  return (f"estimated memory per device: {est.total / _GIB:.3f} GiB ({parts}; "
          f"mesh {est.mesh_shape}, {est.partition_mode}, "
          f"{est.per_device_batch} examples/device)")


def _shard_bytes(shape, dtype, spec, mesh_shape: dict[str, int]) -> int:
  """Bytes of one device's shard of an array placed by `spec`."""
  spec = tuple(spec) + (None,) * (len(shape) - len(tuple(spec)))
  elems = 1
  for dim, axis in zip(shape, spec):
    axes = () if axis is None else (axis if isinstance(axis, tuple) else (axis,))
    elems *= -(-dim // math.prod(mesh_shape[a] for a in axes))
  return elems * np.dtype(dtype).itemsize


def _boxed_tree_bytes(boxed: Any, mesh_shape: dict[str, int], rules) -> int:
  """Per-device bytes of a boxed abstract tree under `rules`."""
  specs = partitioning.param_specs(boxed, mesh_shape, rules)
  leaves = jax.tree.leaves(nn.meta.unbox(boxed))
  spec_leaves = jax.tree.leaves(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  if len(leaves) != len(spec_leaves):
    raise ValueError(f"{len(leaves)} arrays but {len(spec_leaves)} partition specs")
  return int(sum(_shard_bytes(x.shape, x.dtype, s, mesh_shape)
                 for x, s in zip(leaves, spec_leaves)))


def _conv_out(size: int, kernel: int, stride: int) -> int:
  pad = (kernel - 1) // 2
  return (size + 2 * pad - kernel) // stride + 1


def _resnet_unit_elements(config: model_configs.ResNetConfig, image_size: int
                          ) -> tuple[int, list[tuple[int, int]]]:
  """(stem elements, [(unit input elements, unit inner elements)]) per image.

  Every conv keeps its input; every GroupNorm its input; every ReLU its
  output: about three tensors of a conv's output size per conv.
  """
  base = int(64 * config.width)
  size = _conv_out(image_size, 7, 2)
  stem = 3 * size * size * base + image_size * image_size * 3
  size = _conv_out(size, 3, 2)
  cin, units = base, []
  for stage, num_units in enumerate(STAGE_UNITS[config.depth]):
    nmid = base * 2 ** stage
    nout = nmid if config.depth == 18 else 4 * nmid
    for unit in range(num_units):
      out = _conv_out(size, 3, 2 if (unit == 0 and stage > 0) else 1)
      inner = 3 * out * out * nout  # last conv, its norm, the residual ReLU
      if cin != nout or out != size:
        inner += 2 * out * out * nout  # projection conv and its norm
      if config.depth == 18:
        inner += 3 * out * out * nmid
      else:
        inner += 3 * size * size * nmid + 3 * out * out * nmid
      units.append((size * size * cin, inner))
      size, cin = out, nout
  return stem, units


def activation_bytes(config: model_configs.VLConfig, per_device_batch: int, *,
                     input_length: int = 32, target_length: int = 32,
                     num_frames: int = 1, model_parallel: int = 1) -> int:
  """Analytic bytes of the activations the backward pass keeps, on one device.

  Per example, at the compute dtype (`config.t5.dtype`):
  - ResNet: about three feature maps of each conv's output size (conv input,
    norm input, ReLU output); with remat only each unit's input plus the
    largest unit's inner tensors (recomputed one unit at a time).
  - T5 layer, per token (h = emb, j = heads*head_dim, m = mlp, n = heads,
    k = keys attended): attention 2h + 4j + 2nk (norm in/out, q/k/v/out,
    softmax probabilities before and after dropout), MLP 2h + 4m (norm
    in/out, wi_0, wi_1, GELU, product); the decoder adds cross-attention over
    the text + visual tokens. With remat only each layer's input (h per
    token) plus one layer's tensors.
  - Logits: target_length x vocab in float32, twice (logits and their
    softmax gradient).
  Tensors split over `model` under model parallelism (j, m, n, vocab) are
  divided by `model_parallel`.
  """
  t5, e = config.t5, _DTYPE_BYTES[config.t5.dtype]
  mp = max(int(model_parallel), 1)
  h, j, m, n = t5.emb_dim, t5.num_heads * t5.head_dim, t5.mlp_dim, t5.num_heads
  li, lt = input_length, target_length
  nv = vl_model.num_visual_tokens(config, num_frames)
  le = li + nv

  def attn(q_len, kv_len):
    return q_len * (2 * h + 2 * j / mp + 2 * n * kv_len / mp) + 2 * kv_len * j / mp

  def mlp(length):
    return length * (2 * h + 4 * m / mp)

  enc_layer = attn(li, li) + mlp(li)
  dec_layer = attn(lt, lt) + attn(lt, le) + mlp(lt)
  if t5.remat:
    text = (t5.num_encoder_layers * li * h + t5.num_decoder_layers * lt * h
            + max(enc_layer, dec_layer))
  else:
    text = t5.num_encoder_layers * enc_layer + t5.num_decoder_layers * dec_layer
  text += 4 * le * h  # embeddings, projected visual tokens, encoder output
  stem, units = _resnet_unit_elements(config.resnet, config.image_size)
  if config.resnet.remat:
    image = stem + sum(u for u, _ in units) + max(i for _, i in units)
  else:
    image = stem + sum(u + i for u, i in units)
  image *= num_frames
  logits = 2 * lt * t5.vocab_size / mp * 4
  return int(per_device_batch * ((text + image) * e + logits))


def batch_bytes(config: model_configs.VLConfig, per_device_batch: int, *,
                input_length: int = 32, target_length: int = 32,
                num_frames: int = 1) -> int:
  """Bytes of one device's input arrays: uint8 images, int32 tokens and ids."""
  image = num_frames * config.image_size ** 2 * 3
  tokens = 4 * (input_length + 3 * target_length + 1)
  return per_device_batch * (image + tokens)


def _check_mesh(global_batch_size: int, mesh_shape) -> tuple[int, int, int]:
  data, model = (int(x) for x in mesh_shape)
  if data < 1 or model < 1:
    raise ValueError(f"mesh_shape must be two positive ints, got {mesh_shape}")
  if global_batch_size % data:
    raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                     f"the {data} data-parallel devices")
  return data, model, global_batch_size // data


def estimate(config: model_configs.VLConfig, *, global_batch_size: int,
             mesh_shape: tuple[int, int], partition_mode: str = "data_parallel",
             input_length: int = 32, target_length: int = 32, num_frames: int = 1,
             optimizer: optax.GradientTransformation | None = None
             ) -> MemoryEstimate:
  """Per-device memory of training `config` on a (data, model) mesh.

  Args:
    config: the model; its `image_size`, `dtype` and `remat` are used.
    global_batch_size: examples per step over all devices.
    mesh_shape: (data, model) axis sizes (need not exist on this machine).
    partition_mode: a `dynpt.train.partitioning.PARTITION_MODES` entry.
    input_length, target_length: text lengths.
    num_frames: frames per example (1 for images).
    optimizer: the optimizer whose state to count (default: dynpt's AdamW).

  Raises:
    ValueError: unknown partition mode, or a batch the mesh does not divide.
  """
  data, model, per_device = _check_mesh(global_batch_size, mesh_shape)
  rules = partitioning.logical_axis_rules(partition_mode)
  axes = {partitioning.DATA: data, partitioning.MODEL: model}
  tx = optimizer or optim.make_optimizer(optim.OptimizerConfig())
  net = vl_model.VLModel(config)
  size = config.image_size
  image = jnp.zeros((1, size, size, 3), jnp.float32)
  tokens = jnp.ones((1, input_length), jnp.int32)
  targets = jnp.ones((1, target_length), jnp.int32)
  boxed = jax.eval_shape(
      lambda rng: net.init(rng, image, tokens, targets)["params"],
      jax.random.PRNGKey(0))
  boxed_opt = jax.eval_shape(tx.init, boxed)
  params = _boxed_tree_bytes(boxed, axes, rules)
  mp = model if partition_mode.endswith("model_parallel") else 1
  return MemoryEstimate(
      params=params, gradients=params,
      optimizer=_boxed_tree_bytes(boxed_opt, axes, rules),
      activations=activation_bytes(config, per_device, input_length=input_length,
                                   target_length=target_length,
                                   num_frames=num_frames, model_parallel=mp),
      batch=batch_bytes(config, per_device, input_length=input_length,
                        target_length=target_length, num_frames=num_frames),
      num_params=int(sum(x.size for x in jax.tree.leaves(nn.meta.unbox(boxed)))),
      per_device_batch=per_device, mesh_shape=(data, model),
      partition_mode=partition_mode)


def estimate_for_state(state: Any, shardings: Any, config: model_configs.VLConfig, *,
                       global_batch_size: int, mesh_shape: tuple[int, int],
                       partition_mode: str, input_length: int = 32,
                       target_length: int = 32, num_frames: int = 1
                       ) -> MemoryEstimate:
  """`estimate` for a state that already exists (the trainer's start-up log).

  Params and optimizer bytes are read from the state's shardings instead of a
  second `eval_shape` of the model.
  """
  data, model, per_device = _check_mesh(global_batch_size, mesh_shape)

  def held(tree, shard_tree) -> int:
    return int(sum(
        math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
        for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shard_tree))))

  params = held(state.params, shardings.params)
  mp = model if partition_mode.endswith("model_parallel") else 1
  return MemoryEstimate(
      params=params, gradients=params,
      optimizer=held(state.opt_state, shardings.opt_state),
      activations=activation_bytes(config, per_device, input_length=input_length,
                                   target_length=target_length,
                                   num_frames=num_frames, model_parallel=mp),
      batch=batch_bytes(config, per_device, input_length=input_length,
                        target_length=target_length, num_frames=num_frames),
      num_params=int(sum(x.size for x in jax.tree.leaves(state.params))),
      per_device_batch=per_device, mesh_shape=(data, model),
      partition_mode=partition_mode)
