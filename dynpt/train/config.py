"""Plain dataclasses that gin binds (library code never imports gin).

A gin file sets their fields (`config.TrainConfig.num_steps = 1000`) and
passes instances to `dynpt.train.loop.train`. Validation happens in
`validate()`, before any model is built or step is run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dynpt.train import losses, partitioning


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the examples come from and their fixed shapes."""
  mixture: str = "dynpt_24"  # A registered mixture, or comma-separated tasks.
  data_dir: str | None = None  # Default: $DYNPT_DATA_DIR, else data/toy.
  vocabulary_path: str | None = None  # Default: the shipped toy vocabulary.
  input_length: int = 32
  target_length: int = 32
  image_size: int = 224
  split: str = "train"
  seed: int = 0

  @property
  def sequence_length(self) -> dict[str, int]:
    return {"inputs": self.input_length, "targets": self.target_length}


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Which sampler (`dynpt.mixing.make_sampler` name) and its options."""
  name: str = "dynamic"
  options: dict[str, Any] = dataclasses.field(default_factory=dict)
  size_split: str = "train"  # Split counted for size-based samplers.


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A named model size plus overrides (see `dynpt.models.configs`)."""
  name: str = "tiny"
  dtype: str | None = None
  remat: bool | None = None
  dropout_rate: float | None = None
  # T5 sizes of an imported checkpoint that no named size has (its export_info.json
  # `t5_overrides`); None: the named size's.
  t5_overrides: dict[str, int] | None = None


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The run: length, batch, loss, partitioning, checkpoints, logging."""
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
    if self.loss_normalization not in losses.LOSS_NORMALIZATIONS:
      raise ValueError(
          f"TrainConfig.loss_normalization={self.loss_normalization!r}; known: "
          f"{losses.LOSS_NORMALIZATIONS}")
    if self.partition_mode not in partitioning.PARTITION_MODES:
      raise ValueError(
          f"TrainConfig.partition_mode={self.partition_mode!r}; known: "
          f"{partitioning.PARTITION_MODES}")
    for name in ("num_steps", "global_batch_size", "log_every",
                 "history_every", "keep_checkpoints", "num_model_partitions"):
      if getattr(self, name) < 1:
        raise ValueError(f"TrainConfig.{name} must be >= 1, got "
                         f"{getattr(self, name)}")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"TrainConfig.label_smoothing must be in [0, 1), got "
                       f"{self.label_smoothing}")
