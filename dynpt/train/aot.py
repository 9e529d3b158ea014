"""Ahead-of-time compilation of the train step for a Cloud TPU slice, on any host.

The TPU compiler ships in `libtpu` and runs on a CPU-only machine:
`jax.experimental.topologies.get_topology_desc` describes the devices a slice
shows JAX (compile-only devices, nothing is allocated), and jitting the step
over a mesh of them gives XLA's own per-device memory and cost analysis of
the very program the trainer would run (MaxText's `train_compile.py` does the
same for its users). `tools/check_config.py --tpu=TYPE` prints it.

* `tpu_slice(name)` maps a Cloud TPU accelerator type as `gcloud` names it
  (`v4-32`, `v5litepod-256`, `v5p-128`, `v6e-64`) to the topology libtpu
  describes: its chips, the devices JAX shows (v4 and v5p run in megacore
  mode, one device per chip; their type names count TensorCores, two per
  chip, so v4-32 is 16 chips), the chips per host, the torus wrap-around, the
  chip's HBM and its bf16 dense peak.
* `compile_train_step` builds the trainer's step with the trainer's own
  functions (`dynpt.train.session.jit_train_step`, `state.state_shardings`,
  the optimizer of `session.make_train_optimizer`, the model of
  `model_setup.model_config` for these devices) on a mesh over the slice's
  devices, and compiles it for the abstract state and batch.
* `collectives(hlo_text)` counts the compiled program's collectives by kind.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from dynpt.models import vl_model
from dynpt.train import model_setup, optim, partitioning
from dynpt.train import session as session_lib
from dynpt.train import state as state_lib
from dynpt.train.config import DataConfig, ModelConfig, TrainConfig

_GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class _Generation:
  prefix: str            # libtpu's topology prefix ("v4", "v5", "v5e", "v6e")
  counts_cores: bool     # type name counts TensorCores (2 per chip), not chips
  chip_config: str       # libtpu chip config: "megacore" (1 device/chip) or "default"
  dims: int              # torus dimensions (3 for v4/v5p, 2 for v5e/v6e)
  single_host_chips: int  # slices up to this many chips are one host
  hbm_gib: float         # HBM per chip
  peak_tflops: float     # bf16 dense peak per chip


# Cloud TPU's published figures per chip.
_GENERATIONS = {
    "v4": _Generation("v4", True, "megacore", 3, 4, 32.0, 275.0),
    "v5p": _Generation("v5", True, "megacore", 3, 4, 95.0, 459.0),
    "v5litepod": _Generation("v5e", False, "default", 2, 8, 16.0, 197.0),
    "v6e": _Generation("v6e", False, "default", 2, 8, 32.0, 918.0),
}
_ALIASES = {"v5e": "v5litepod"}  # also accepted for the v5e family
_TYPE = re.compile(r"^(v\d+[a-z]*)-(\d+)$")
_MAX_CHIPS = 8192


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  """A Cloud TPU slice as JAX sees it.

  Attributes:
    name: the accelerator type (`v4-32`).
    topology_name: libtpu's topology (`v4:2x2x4`).
    chip_config_name: `megacore` (one device per chip) or `default`.
    chips: chips in the slice.
    chips_per_host_bounds: the chips of one host, per torus dimension.
    wrap: whether each torus dimension wraps around.
    hbm_gib: HBM of one chip.
    peak_tflops: bf16 dense peak of one chip.
  """
  name: str
  topology_name: str
  chip_config_name: str
  chips: int
  chips_per_host_bounds: tuple[int, int, int]
  wrap: tuple[bool, bool, bool]
  hbm_gib: float
  peak_tflops: float

  @property
  def hosts(self) -> int:
    return self.chips // math.prod(self.chips_per_host_bounds)


def _shape(chips: int, dims: int) -> list[int]:
  """Cloud TPU's torus shape of a power-of-two slice: 2x2x1, 2x2x2, 2x2x4, 2x4x4,
  4x4x4, 4x4x8, ... (3-D) or 2x2, 2x4, 4x4, 4x8, ... (2-D): each doubling
  doubles the last of the smallest dimensions."""
  if chips == 1:
    return [1] * dims
  shape = [2, 2] + [1] * (dims - 2)
  while math.prod(shape) < chips:
    smallest = min(shape)
    i = max(k for k, s in enumerate(shape) if s == smallest)
    shape[i] *= 2
  return shape


def tpu_slice(name: str) -> TpuSlice:
  """The slice of a Cloud TPU accelerator type (`v4-32`, `v5litepod-256`, `v5p-128`,
  `v6e-64`, ...).

  Raises:
    ValueError: naming the type and what is supported, for anything else.
  """
  known = ("v4-8 .. v4-8192, v5p-8 .. v5p-16384 (TensorCores, 2 per chip), "
           "v5litepod-1/4/8 .. v5litepod-256, v6e-1/4/8 .. v6e-256 (chips); "
           "powers of two")
  m = _TYPE.match(name.strip().lower())
  family = _ALIASES.get(m.group(1), m.group(1)) if m else None
  if not m or family not in _GENERATIONS:
    raise ValueError(f"unknown TPU type {name!r}; known: {known}")
  gen = _GENERATIONS[family]
  count = int(m.group(2))
  chips = count // 2 if gen.counts_cores else count
  limit = _MAX_CHIPS if gen.dims == 3 else 256
  if (gen.counts_cores and count % 2) or chips < 1 or chips & (chips - 1) \
      or chips > limit or (gen.dims == 3 and chips < 4) or chips == 2:
    raise ValueError(f"unknown TPU type {name!r}; known: {known}")
  shape = _shape(chips, gen.dims)
  if chips <= gen.single_host_chips:
    host = tuple(shape) + (1,) * (3 - gen.dims)
  else:
    host = (2, 2, 1)
  if gen.dims == 3:  # A full 4x4x4 cube and larger are tori; smaller slices are not.
    wrap = (all(s % 4 == 0 for s in shape),) * 3
  else:  # v5e/v6e: a dimension of 16 chips wraps around.
    wrap = tuple(s == 16 for s in shape) + (False,)
  return TpuSlice(name=name, topology_name=f"{gen.prefix}:{'x'.join(map(str, shape))}",
                  chip_config_name=gen.chip_config, chips=chips,
                  chips_per_host_bounds=host, wrap=wrap, hbm_gib=gen.hbm_gib,
                  peak_tflops=gen.peak_tflops)


def slice_devices(tpu: TpuSlice) -> list[jax.Device]:
  """The compile-only devices of the slice (needs `libtpu`; no TPU is touched).

  libtpu's multi-process lock file (/tmp/libtpu_lockfile) guards a real TPU
  against two processes; describing a topology drives none, so the lock is
  waived for this process (`ALLOW_MULTIPLE_LIBTPU_LOAD`), which lets the
  check run beside a trainer or a test that loaded libtpu.

  Raises:
    RuntimeError: libtpu is not installed.
  """
  from jax.experimental import topologies

  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=tpu.topology_name,
        chip_config_name=tpu.chip_config_name,
        chips_per_host_bounds=tpu.chips_per_host_bounds, wrap=tpu.wrap)
  except RuntimeError as e:
    if "not installed" in str(e):
      raise RuntimeError("compiling for a TPU needs libtpu: pip install -r "
                         "requirements-test.txt (it pins the version jax[tpu] "
                         "does)") from e
    raise
  return list(desc.devices)


@dataclasses.dataclass(frozen=True)
class Collective:
  count: int
  bytes: int


COLLECTIVE_KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
                    "collective-permute")
# `%name = SHAPE op(` where SHAPE is one array or a tuple; async pairs count at -start.
_OP = re.compile(r"= (.*?) (" + "|".join(COLLECTIVE_KINDS) + r")(-start)?\(")
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|f8e\w+|c64|c128)\[([\d,]*)\]")
_BYTES = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16}


def _array_bytes(text: str) -> list[int]:
  out = []
  for dtype, dims in _ARRAY.findall(text):
    size = _BYTES.get(dtype) or (1 if dtype.startswith("f8") else int(dtype[1:]) // 8)
    out.append(size * math.prod(int(d) for d in dims.split(",") if d))
  return out


def collectives(hlo_text: str) -> dict[str, Collective]:
  """{kind: (ops, bytes)} of the collectives in an HLO module's text.

  Bytes are each op's result on one device (for an all-gather the gathered
  array, for a reduce-scatter the scattered shard); an async `-start` op counts
  once, with its results (the second half of its tuple; a collective-permute's
  two trailing u32 contexts are left out). An op in a loop body counts once,
  however many iterations run it.
  """
  found = {k: [0, 0] for k in COLLECTIVE_KINDS}
  for line in hlo_text.splitlines():
    m = _OP.search(line)
    if not m:
      continue
    shape, kind, start = m.groups()
    sizes = _array_bytes(shape)
    if start and kind == "collective-permute":
      sizes = sizes[1:2]
    elif start and kind in ("all-gather", "reduce-scatter", "all-to-all") and len(sizes) > 1:
      sizes = sizes[len(sizes) // 2:]
    found[kind][0] += 1
    found[kind][1] += sum(sizes)
  return {k: Collective(*v) for k, v in found.items()}


def batch_spec(data_cfg: DataConfig, global_batch_size: int, sharding=None
               ) -> dict[str, jax.ShapeDtypeStruct]:
  """The abstract global batch the loop feeds the step (`pipeline.TaskIterator.take`'s
  model features: uint8 images, int32 tokens, loss weights and task ids)."""
  b, li, lt = global_batch_size, data_cfg.input_length, data_cfg.target_length
  s = data_cfg.image_size
  shapes = {"image": ((b, s, s, 3), jnp.uint8),
            "encoder_input_tokens": ((b, li), jnp.int32),
            "decoder_input_tokens": ((b, lt), jnp.int32),
            "decoder_target_tokens": ((b, lt), jnp.int32),
            "decoder_loss_weights": ((b, lt), jnp.int32),
            "task_id": ((b,), jnp.int32)}
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
          for k, (shape, dtype) in shapes.items()}


class DoesNotFit(Exception):
  """The TPU compiler gave up: the step needs more HBM than the chip has, even after
  XLA's own rematerialization. Holds XLA's message and the compile time."""

  def __init__(self, message: str, compile_seconds: float):
    super().__init__(message)
    self.compile_seconds = compile_seconds

  @property
  def summary(self) -> str:
    """XLA's one-line account ("Used 69.41G of 30.75G hbm. Exceeded ... by ..."), or
    the message's first line."""
    m = re.search(r"Ran out of memory in memory space hbm\.\s*([^\n]+)", str(self))
    return (m.group(1).strip() if m else str(self).splitlines()[0])[:300]


@dataclasses.dataclass
class CompiledStep:
  """What the compiler says about one step, per device.

  Attributes:
    arguments, outputs, aliased, temporaries, generated_code: bytes from
      `memory_analysis()` (outputs aliased to donated arguments are in `aliased`).
    flops: `cost_analysis()`'s FLOPs of one device's program.
    collectives: `collectives()` of the compiled HLO.
    compile_seconds: lowering plus compilation.
    num_devices, mesh_shape: the mesh the step was compiled for.
    num_params: parameters of the model.
    lowered, compiled: JAX's `Lowered` (its HLO, `lowered.as_text(dialect='hlo')`,
      holds the activations' `Sharding` custom calls) and `Compiled` (the
      partitioned per-device program, `compiled.as_text()`).
  """
  arguments: int
  outputs: int
  aliased: int
  temporaries: int
  generated_code: int
  flops: float
  collectives: dict[str, Collective]
  compile_seconds: float
  num_devices: int
  mesh_shape: tuple[int, int]
  num_params: int
  lowered: Any = dataclasses.field(repr=False, default=None)
  compiled: Any = dataclasses.field(repr=False, default=None)

  @property
  def total(self) -> int:
    """Peak bytes of one device: live arguments, new outputs, temporaries."""
    return self.arguments + self.outputs - self.aliased + self.temporaries


def compile_train_step(train_cfg: TrainConfig, data_cfg: DataConfig,
                       optimizer_cfg: optim.OptimizerConfig, model_cfg: ModelConfig, *,
                       devices: Sequence[jax.Device], vocab_size: int, num_tasks: int,
                       frozen_patterns: tuple[str, ...] = ()) -> CompiledStep:
  """Compiles the trainer's step (`session.build_session`'s) for a mesh over `devices`.

  Same model (resolved for these devices), optimizer, state shardings, logical-axis
  rules, batch sharding and donation as a run of these configs; the state and the
  batch are abstract, so nothing is allocated.

  Raises:
    ValueError: naming the setting, when the mesh does not divide the batch.
    DoesNotFit: the compiler ran out of HBM (XLA refuses such a program).
  """
  t0 = time.perf_counter()
  mesh = partitioning.create_mesh(train_cfg.num_model_partitions, devices=devices)
  data_devices = mesh.shape[partitioning.DATA]
  if train_cfg.global_batch_size % data_devices:
    raise ValueError(
        f"TrainConfig.global_batch_size={train_cfg.global_batch_size} must be divisible "
        f"by the {data_devices} data-parallel devices")
  model = vl_model.VLModel(model_setup.model_config(
      model_cfg, vocab_size, data_cfg.image_size, devices))
  rules = partitioning.logical_axis_rules(train_cfg.partition_mode)
  optimizer_cfg, tx = session_lib.make_train_optimizer(optimizer_cfg, train_cfg,
                                                       frozen_patterns)
  init_fn = model_setup.init_params_fn(model, data_cfg)
  abstract, shardings = state_lib.state_shardings(init_fn, tx, mesh, rules,
                                                  train_cfg.seed)
  train_step = session_lib.jit_train_step(model, num_tasks, train_cfg, optimizer_cfg,
                                          mesh, shardings)
  batch = batch_spec(data_cfg, train_cfg.global_batch_size,
                     partitioning.batch_sharding(mesh))
  weights = jax.ShapeDtypeStruct((num_tasks,), jnp.float32,
                                 sharding=partitioning.replicated(mesh))
  lowered = train_step.lower(abstract, batch, weights)
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    raise DoesNotFit(str(e), time.perf_counter() - t0) from None
  seconds = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0] if cost else {}
  hlo = compiled.as_text()
  return CompiledStep(
      arguments=int(ma.argument_size_in_bytes), outputs=int(ma.output_size_in_bytes),
      aliased=int(ma.alias_size_in_bytes), temporaries=int(ma.temp_size_in_bytes),
      generated_code=int(ma.generated_code_size_in_bytes),
      flops=float((cost or {}).get("flops", 0.0)), collectives=collectives(hlo),
      compile_seconds=seconds, num_devices=len(devices),
      mesh_shape=(data_devices, mesh.shape[partitioning.MODEL]),
      num_params=state_lib.count_params(abstract.params),
      lowered=lowered, compiled=compiled)


# Below this fraction of a chip's HBM to spare, the report says the fit is tight: XLA's
# figure leaves out the TPU runtime's own reservations, and compilers move by a few GiB.
TIGHT_FRACTION = 0.1


def report(step: CompiledStep, tpu: TpuSlice, estimate_total: int | None = None) -> str:
  """The per-chip table `tools/check_config.py --tpu` prints."""
  hbm = tpu.hbm_gib * _GIB
  lines = [f"XLA (TPU compiler) per chip, {tpu.name} ({tpu.topology_name}, "
           f"{step.num_devices} devices, {tpu.hosts} hosts), mesh (data="
           f"{step.mesh_shape[0]}, model={step.mesh_shape[1]}):",
           f"  {'arguments':<14}{step.arguments / _GIB:>9.3f} GiB",
           f"  {'temporaries':<14}{step.temporaries / _GIB:>9.3f} GiB",
           f"  {'outputs':<14}{(step.outputs - step.aliased) / _GIB:>9.3f} GiB "
           "(not aliased to donated arguments)",
           f"  {'total':<14}{step.total / _GIB:>9.3f} GiB of {tpu.hbm_gib:g} GiB HBM "
           f"({100 * step.total / hbm:.0f}%)"]
  if estimate_total is not None:
    off = (estimate_total - step.total) / step.total if step.total else 0.0
    lines.append(f"  {'estimate':<14}{estimate_total / _GIB:>9.3f} GiB analytic "
                 f"(memory.estimate; {100 * off:+.0f}% vs XLA)")
  per_chip = step.flops
  lines.append(f"  {'FLOPs/step':<14}{per_chip:>9.3e} per chip, "
               f"{per_chip * step.num_devices:.3e} per slice; at the "
               f"{tpu.peak_tflops:g} TFLOP/s bf16 peak >= "
               f"{per_chip / (tpu.peak_tflops * 1e12) * 1e3:.1f} ms")
  lines.append("  collectives in the compiled step (ops in a loop body count once):")
  for kind, c in step.collectives.items():
    lines.append(f"    {kind:<20}{c.count:>6} ops {c.bytes / 2 ** 20:>12.1f} MiB")
  lines.append(f"  compile time  {step.compile_seconds:.1f} s")
  fits = step.total <= hbm
  lines.append(f"{'fits' if fits else 'does NOT fit'} in {tpu.hbm_gib:g} GiB per chip")
  spare = hbm - step.total
  if fits and spare < TIGHT_FRACTION * hbm:
    lines.append(f"  tight: {spare / _GIB:.2f} GiB ({100 * spare / hbm:.0f}%) to spare; the "
                 "runtime's own buffers or another XLA version may not fit: a larger slice "
                 "(fewer examples per chip) leaves room")
  return "\n".join(lines)


def fits(step: CompiledStep, tpu: TpuSlice) -> bool:
  return step.total <= tpu.hbm_gib * _GIB
