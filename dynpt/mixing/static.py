"""Fixed-mixture baselines: uniform, dataset size, temperature-scaled size, user weights.

These never change during training; they exist so Table 4 of the paper can be
reproduced by switching one gin binding. They still go through
`allocate_counts`, so the per-task floor and exact batch sums hold for them
too, and equal remainders rotate with the step (round-robin fairness).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from dynpt.mixing import base
from dynpt.mixing import registry


@registry.register
class UniformSampler(base.Sampler):
  """B/|T| examples of every task (the paper's "uniform sampling")."""

  name = "uniform"

  def shares(self, step: int) -> np.ndarray:
    del step
    return np.full(self.num_tasks, 1.0 / self.num_tasks)


@registry.register
class FixedSampler(base.Sampler):
  """Shares proportional to user weights (any non-negative numbers, not all zero)."""

  name = "fixed"

  def __init__(self, task_names: Sequence[str], global_batch_size: int, *,
               weights: Sequence[float] | Mapping[str, float],
               min_per_task: int = 4):
    super().__init__(task_names, global_batch_size, min_per_task=min_per_task)
    w = self._per_task(weights, "weights")
    if not np.all(np.isfinite(w) & (w >= 0)) or not np.sum(w) > 0:
      raise ValueError(f"{self.name} sampler: weights must be finite, >= 0 and not all "
                       f"zero, got {dict(zip(self.task_names, w.tolist()))}")
    self._shares = w / np.sum(w)

  def shares(self, step: int) -> np.ndarray:
    del step
    return self._shares.copy()


@registry.register
class TemperatureSampler(FixedSampler):
  """T5/mT5 temperature-scaled sizes: share_t proportional to min(n_t, cap)^(1/temperature).

  temperature=1 with no cap is "proportional to dataset size"; larger
  temperatures move towards uniform (mT5's alpha = 1/temperature), so small
  datasets are not drowned out. `size_cap` is T5's artificial dataset size
  limit K for examples-proportional mixing.
  """

  name = "temperature"
  needs = (registry.TASK_SIZES,)

  def __init__(self, task_names: Sequence[str], global_batch_size: int, *,
               task_sizes: Sequence[int] | Mapping[str, int],
               temperature: float = 2.0,
               size_cap: int | None = None,
               min_per_task: int = 4):
    base.Sampler.__init__(self, task_names, global_batch_size, min_per_task=min_per_task)
    sizes = self._per_task(task_sizes, "task_sizes")
    bad = [t for t, n in zip(self.task_names, sizes) if not (np.isfinite(n) and n > 0)]
    if bad:
      raise ValueError(f"{self.name} sampler: task_sizes must be > 0; bad for tasks {bad}")
    if not np.isfinite(temperature) or temperature <= 0:
      raise ValueError(f"{self.name} sampler: temperature must be > 0, got {temperature!r}")
    if size_cap is not None:
      if size_cap <= 0:
        raise ValueError(f"{self.name} sampler: size_cap must be > 0, got {size_cap!r}")
      sizes = np.minimum(sizes, float(size_cap))
    # Log space: sizes of 1e9 to the power 1/T stay exact enough and never overflow.
    log_w = np.log(sizes) / float(temperature)
    w = np.exp(log_w - np.max(log_w))
    self._shares = w / np.sum(w)


@registry.register
class SizeSampler(TemperatureSampler):
  """Shares proportional to dataset size ("sampling by dataset size" in Table 4)."""

  name = "size"

  def __init__(self, task_names: Sequence[str], global_batch_size: int, *,
               task_sizes: Sequence[int] | Mapping[str, int],
               size_cap: int | None = None,
               min_per_task: int = 4):
    super().__init__(task_names, global_batch_size, task_sizes=task_sizes, temperature=1.0,
                     size_cap=size_cap, min_per_task=min_per_task)
