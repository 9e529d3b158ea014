"""Softmax-of-loss sampling: shares = softmax(L_t / T) over the windowed losses.

The variant LLM trainers reach for when they make a mixture follow the loss:
where the paper's rule shares the batch in proportion to L_t, this one shares
it in proportion to exp(L_t / T). Only loss *differences* matter (adding a
constant to every L_t changes nothing), so a task 1 nat harder than another
gets e^(1/T) times its share whatever the absolute loss level; the paper's
ratio rule instead flattens as all losses grow. L_t is the paper's window
mean (or its EMA), refreshed every K steps by the same `DifficultyTracker`
as the dynamic sampler, and the per-task floor applies through
`allocate_counts`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dynpt.mixing import base
from dynpt.mixing import difficulty
from dynpt.mixing import registry


def softmax_shares(losses: Sequence[float] | np.ndarray, temperature: float) -> np.ndarray:
  """Returns softmax(losses / temperature) as [num_tasks] float64 shares.

  Args:
    losses: [num_tasks] finite per-task losses (any sign; only differences
      matter).
    temperature: > 0; large values flatten towards uniform, small ones put
      everything on the highest loss.

  Raises:
    ValueError: on a non-finite loss or a bad temperature, naming it.
  """
  x = np.asarray(losses, np.float64)
  if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
    raise ValueError(f"softmax_shares: losses must be a non-empty finite 1-D array, "
                     f"got {x.tolist()}")
  if not np.isfinite(temperature) or temperature <= 0:
    raise ValueError(f"softmax_shares: temperature must be finite and > 0, got {temperature!r}")
  w = np.exp((x - np.max(x)) / float(temperature))  # Shifted first: never overflows.
  return w / np.sum(w)


@registry.register
class SoftmaxSampler(base.Sampler):
  """Shares softmax(L_t / temperature) of the last window's losses ("softmax").

  Args:
    task_names: tasks in task-id order.
    global_batch_size: B.
    window: K, steps per window; shares change only when a window closes and
      are uniform until the first one does.
    min_per_task: per-task floor.
    temperature: T in nats; 1 gives a task 1 nat harder e times the share.
    smoothing: "window" (mean over the window) or "ema" (read out every K).
    ema_decay: EMA decay for smoothing="ema".
  """

  name = "softmax"

  def __init__(self, task_names: Sequence[str], global_batch_size: int, *,
               window: int = 100, min_per_task: int = 4, temperature: float = 1.0,
               smoothing: str = "window", ema_decay: float = 0.99):
    super().__init__(task_names, global_batch_size, min_per_task=min_per_task)
    if not np.isfinite(temperature) or temperature <= 0:
      raise ValueError(f"{self.name} sampler: temperature must be > 0, got {temperature!r}")
    self.temperature = float(temperature)
    self.tracker = difficulty.DifficultyTracker(self.num_tasks, window=window,
                                                smoothing=smoothing, ema_decay=ema_decay,
                                                owner=self.name)
    self._state.update(self.tracker.init_state())

  def shares(self, step: int) -> np.ndarray:
    del step  # Shares change only when a window closes, inside `update`.
    if not self.tracker.has_difficulty(self._state):
      return np.full(self.num_tasks, 1.0 / self.num_tasks)
    return softmax_shares(self._state["difficulty"], self.temperature)

  def _observe(self, step: int, loss: np.ndarray, valid: np.ndarray,
               counts: np.ndarray) -> None:
    del step, counts
    self.tracker.observe(self._state, loss, valid)
