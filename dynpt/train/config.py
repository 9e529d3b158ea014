"""Plain dataclasses that gin binds (library code never imports gin).

A gin file sets their fields (`config.TrainConfig.num_steps = 1000`) and
passes instances to `dynpt.train.loop.train`. `validate_configs` checks every
field of every config (type against its annotation, then range) before any
model is built or step is run, so `NUM_STEPS='three'` or
`checkpoint_every='2'` fail at once with a `ConfigError` naming the key and
the value, not at the first step with a `TypeError` naming neither.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from dynpt import mixing
from dynpt.models import configs as model_configs
from dynpt.models import cpu_kernels as cpu_kernels_lib
from dynpt.train import losses, partitioning


class ConfigError(ValueError):
  """A config field has the wrong type or is out of range; names the key."""


class Open(float):
  """An exclusive bound in a config's `RANGES`."""


# A config dataclass keeps the ranges of its numeric fields beside them, in a class
# attribute `RANGES`: field -> (low, high), both inclusive unless the bound is an `Open`;
# None means unbounded. `check_fields` reads it.


def _matches(value: Any, hint: Any) -> bool:
  """Whether `value` fits the annotation `hint` (the subset configs use)."""
  if hint is Any:
    return True
  origin = typing.get_origin(hint)
  if origin in (typing.Union, types.UnionType):
    return any(_matches(value, h) for h in typing.get_args(hint))
  if hint is type(None):
    return value is None
  if hint is bool:
    return isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if hint is float:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))
  if hint is str:
    return isinstance(value, str)
  if origin is dict or hint is dict:
    return isinstance(value, dict)
  if origin in (tuple, list) or hint in (tuple, list):
    return isinstance(value, (tuple, list))
  return True  # Annotations configs do not use are not checked.


def _describe(hint: Any) -> str:
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    return " or ".join(_describe(h) for h in typing.get_args(hint))
  if hint is type(None):
    return "None"
  if hint is float:
    return "a finite number"
  return getattr(hint, "__name__", str(hint))


def check_fields(cfg: Any) -> None:
  """Checks each field of the dataclass `cfg` against its type and range.

  Raises:
    ConfigError: `'<Class>.<field>=<value>: expected ...'` for the first bad
      field.
  """
  cls = type(cfg)
  hints = typing.get_type_hints(cls)
  ranges = getattr(cls, "RANGES", {})
  for field in dataclasses.fields(cfg):
    value = getattr(cfg, field.name)
    key = f"{cls.__name__}.{field.name}={value!r}"
    if not _matches(value, hints[field.name]):
      raise ConfigError(f"{key}: expected {_describe(hints[field.name])}, "
                        f"got {type(value).__name__}")
    if field.name not in ranges or value is None:
      continue
    low, high = ranges[field.name]
    if low is not None and (value < low or
                            (isinstance(low, Open) and value == low)):
      op = ">" if isinstance(low, Open) else ">="
      raise ConfigError(f"{key}: must be {op} {low:g}")
    if high is not None and (value > high or
                             (isinstance(high, Open) and value == high)):
      op = "<" if isinstance(high, Open) else "<="
      raise ConfigError(f"{key}: must be {op} {high:g}")


def validate_configs(*cfgs: Any) -> None:
  """`check_fields` on each config, then its own `validate()` if it has one.

  Called first thing by `loop.train` (and export), before any data is read
  or model built.
  """
  for cfg in cfgs:
    check_fields(cfg)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
      validate()


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the examples come from and their fixed shapes."""
  RANGES = {
      "input_length": (1, None), "target_length": (1, None),
      "image_size": (1, None), "max_damaged_fraction": (0.0, 1.0)}
  mixture: str = "dynpt_24"  # A registered mixture, or comma-separated tasks.
  data_dir: str | None = None  # Default: $DYNPT_DATA_DIR, else data/toy.
  vocabulary_path: str | None = None  # Default: the shipped toy vocabulary.
  input_length: int = 32
  target_length: int = 32
  image_size: int = 224
  split: str = "train"
  seed: int = 0
  # Damaged TFRecord shards: the records after the damage are skipped (and
  # logged); more than this fraction of a task's split lost fails the run.
  max_damaged_fraction: float = 0.01

  @property
  def sequence_length(self) -> dict[str, int]:
    return {"inputs": self.input_length, "targets": self.target_length}


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Which sampler (`dynpt.mixing.make_sampler` name) and its options."""
  name: str = mixing.DEFAULT_SAMPLER
  options: dict[str, Any] = dataclasses.field(default_factory=dict)
  size_split: str = "train"  # Split counted for size-based samplers.


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A named model size plus overrides (see `dynpt.models.configs`)."""
  RANGES = {"dropout_rate": (0.0, Open(1.0))}
  name: str = "tiny"
  dtype: str | None = None
  remat: bool | None = None
  dropout_rate: float | None = None
  # T5 sizes of an imported checkpoint that no named size has (its export_info.json
  # `t5_overrides`); None: the named size's.
  t5_overrides: dict[str, int] | None = None
  # BiT's pre-activation ResNet v2 trunk (`ResNetConfig.preactivation`), as an import of
  # the BiT-M release records in its export_info.json; False: the v1.5 trunk.
  resnet_preactivation: bool = False
  # The XLA:CPU kernels of `dynpt.models.cpu_kernels`: 'on', 'off', or 'auto' (on exactly
  # when the mesh's devices are CPUs). Params and function are the same either way.
  cpu_kernels: str = "auto"
  # Where the visual tokens meet the text (`VLConfig.visual_fusion`): 'decoder', the
  # paper's late fusion, or 'encoder' (early fusion, for miniatures: docs/study.md).
  visual_fusion: str = "decoder"

  def validate(self) -> None:
    check_fields(self)
    if self.visual_fusion not in model_configs.VISUAL_FUSIONS:
      raise ConfigError(f"ModelConfig.visual_fusion={self.visual_fusion!r}: expected one "
                        f"of {', '.join(model_configs.VISUAL_FUSIONS)}")
    if self.cpu_kernels not in cpu_kernels_lib.MODES:
      raise ConfigError(f"ModelConfig.cpu_kernels={self.cpu_kernels!r}: expected one of "
                        f"{', '.join(cpu_kernels_lib.MODES)}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The run: length, batch, loss, partitioning, checkpoints, logging."""
  RANGES = {
      "num_steps": (1, None), "global_batch_size": (1, None),
      "num_model_partitions": (1, None), "checkpoint_every": (0, None),
      "keep_checkpoints": (1, None), "log_every": (1, None),
      "history_every": (1, None), "label_smoothing": (0.0, Open(1.0))}
  run_dir: str = "runs/default"
  num_steps: int = 1000
  global_batch_size: int = 96
  seed: int = 0
  label_smoothing: float = 0.1
  loss_normalization: str = "tokens"
  partition_mode: str = "data_parallel"
  num_model_partitions: int = 1
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  async_checkpoints: bool = True
  log_every: int = 50
  history_every: int = 1
  progress_bar: bool = True

  def validate(self) -> None:
    check_fields(self)
    if self.loss_normalization not in losses.LOSS_NORMALIZATIONS:
      raise ConfigError(
          f"TrainConfig.loss_normalization={self.loss_normalization!r}; known: "
          f"{losses.LOSS_NORMALIZATIONS}")
    if self.partition_mode not in partitioning.PARTITION_MODES:
      raise ConfigError(
          f"TrainConfig.partition_mode={self.partition_mode!r}; known: "
          f"{partitioning.PARTITION_MODES}")
