"""UniMax (Chung et al., ICLR 2023): uniform over tasks, at most N epochs of each.

UniMax spends a training budget of examples (the paper: characters) as evenly
as it can over the tasks, but never repeats a task's data more than
`max_epochs` (N) times. Tasks are visited from the smallest to the largest;
each gets an equal share of what is left, capped at N times its size, and
what a capped task does not use is shared by the larger tasks after it:

  remaining = budget
  for t in tasks by increasing size:
    b_t = min(remaining / (tasks not yet visited), N * size_t)
    remaining -= b_t
  shares = b / sum(b)

The budget is the run's examples, `num_steps x global_batch_size`. When even
N epochs of every task fall short of it, every task is capped and the shares
are proportional to size (the run then repeats each task more than N times).

This module is also the example to copy for a new sampler: one class that
registers itself (`@registry.register`), says in `needs` what the run must
hand it, checks its options with an error naming them, and computes its
mixture with a pure function tested by hand (`tests/test_mixing_unimax.py`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from dynpt.mixing import base
from dynpt.mixing import registry


def unimax_budgets(sizes: Sequence[float] | np.ndarray, budget: float,
                   max_epochs: float) -> np.ndarray:
  """Examples of each task under UniMax (Chung et al. 2023, Algorithm 1).

  Args:
    sizes: [num_tasks] examples per task, > 0.
    budget: examples the run trains on in all, > 0.
    max_epochs: N, the most epochs of any task, > 0.

  Returns:
    [num_tasks] float64 examples per task, in the order of `sizes`; each at
    most `max_epochs * size`, summing to `budget` unless every task is capped.
  """
  sizes = np.asarray(sizes, np.float64)
  budgets = np.zeros_like(sizes)
  remaining = float(budget)
  order = np.argsort(sizes, kind="stable")  # Smallest first; ties in task order.
  for visited, t in enumerate(order):
    budgets[t] = min(remaining / (len(order) - visited), max_epochs * sizes[t])
    remaining -= budgets[t]
  return budgets


@registry.register
class UniMaxSampler(base.Sampler):
  """UniMax's fixed mixture: uniform over tasks, at most `max_epochs` of each ("unimax").

  Args:
    task_names: tasks in task-id order.
    global_batch_size: B.
    task_sizes: examples per task (sequence or name -> n); a training run
      hands them over (the split of `SamplerConfig.size_split`).
    num_steps: the run's length; a training run hands it over. The budget
      is `num_steps * global_batch_size` examples.
    max_epochs: N, the most epochs of any task's data (1: none repeated).
    min_per_task: per-task floor of every batch.
  """

  name = "unimax"
  needs = (registry.TASK_SIZES, registry.NUM_STEPS)

  def __init__(self, task_names: Sequence[str], global_batch_size: int, *,
               task_sizes: Sequence[int] | Mapping[str, int], num_steps: int,
               max_epochs: float = 1.0, min_per_task: int = 4):
    super().__init__(task_names, global_batch_size, min_per_task=min_per_task)
    sizes = self._per_task(task_sizes, "task_sizes")
    bad = [t for t, n in zip(self.task_names, sizes) if not (np.isfinite(n) and n > 0)]
    if bad:
      raise ValueError(f"{self.name} sampler: task_sizes must be > 0; bad for tasks {bad}")
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
      raise ValueError(f"{self.name} sampler: num_steps must be a positive integer, "
                       f"got {num_steps!r}")
    if not np.isfinite(max_epochs) or max_epochs <= 0:
      raise ValueError(f"{self.name} sampler: max_epochs must be > 0, got {max_epochs!r}")
    self.task_sizes = sizes
    self.max_epochs = float(max_epochs)
    self.budgets = unimax_budgets(sizes, int(num_steps) * self.global_batch_size,
                                  self.max_epochs)
    self._shares = self.budgets / np.sum(self.budgets)

  def epochs(self) -> dict[str, float]:
    """Task name -> epochs of its data the budget allots it (at most `max_epochs`)."""
    return dict(zip(self.task_names, (self.budgets / self.task_sizes).tolist()))

  def shares(self, step: int) -> np.ndarray:
    del step  # A fixed mixture.
    return self._shares.copy()
