"""Dynamic difficulty sampling (the paper's Algorithm 1) and its loss-driven baselines.

Each step the trainer reports the per-task mean token cross-entropy. The
samplers here accumulate it over a window of K steps (or smooth it with an
EMA) and, at the end of every window, turn the per-task difficulty L_t into
the batch shares used for the next K steps. Until the first window ends the
mixture is uniform.

* `DynamicSampler` ("dynamic"): S_t = L_t / sum_u L_u (with optional
  temperature and per-task normalisation), floored at `min_per_task`.
* `EasiestSampler` / `HardestSampler` ("easiest", "hardest"): the whole batch
  except the per-task floor goes to the task with the lowest / highest L_t.
* `LossReweightSampler` ("loss_reweight"): a uniform batch, but task t's loss
  term is weighted by |T| * S_t instead of by its sample count.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from dynpt.mixing import allocation
from dynpt.mixing import base
from dynpt.mixing import registry

SMOOTHINGS = ("window", "ema")
NORMALIZATIONS = ("none", "initial")


class DifficultyTracker:
  """Per-task difficulty from a stream of per-step losses; state lives in a dict.

  The tracker itself holds only configuration; all of its memory is in the
  owning sampler's state dict (so it is checkpointed and restored with it).

  Window mode (the paper): L_t is the mean of task t's losses over the last
  completed window of `window` steps. EMA mode: L_t is a bias-corrected
  exponential moving average of the losses (decay `ema_decay`), read out at the
  end of every window, so `window` is then only the refresh period of the
  shares. Steps where a task had no examples (NaN loss) do not count for it; a
  task with no loss in a whole window keeps its previous L_t (in the very first
  window, it gets the mean of the others, a neutral guess).
  """

  def __init__(self, num_tasks: int, *, window: int = 100, smoothing: str = "window",
               ema_decay: float = 0.99, normalize: str = "none",
               loss_scales: np.ndarray | None = None, owner: str = "dynamic"):
    if int(window) != window or window < 1:
      raise ValueError(f"{owner} sampler: window must be a positive integer, got {window!r}")
    if smoothing not in SMOOTHINGS:
      raise ValueError(f"{owner} sampler: unknown smoothing {smoothing!r}; "
                       f"choose from {SMOOTHINGS}")
    if not 0.0 < ema_decay < 1.0:
      raise ValueError(f"{owner} sampler: ema_decay must be in (0, 1), got {ema_decay!r}")
    if normalize not in NORMALIZATIONS:
      raise ValueError(f"{owner} sampler: unknown normalize {normalize!r}; "
                       f"choose from {NORMALIZATIONS}")
    if loss_scales is not None:
      if normalize == "initial":
        raise ValueError(f"{owner} sampler: give either loss_scales or normalize='initial', "
                         "not both")
      if not np.all(np.isfinite(loss_scales) & (loss_scales > 0)):
        raise ValueError(f"{owner} sampler: loss_scales must be finite and > 0, "
                         f"got {np.asarray(loss_scales).tolist()}")
    self.num_tasks = num_tasks
    self.window = int(window)
    self.smoothing = smoothing
    self.ema_decay = float(ema_decay)
    self.normalize = normalize
    self.loss_scales = loss_scales

  def init_state(self) -> base.State:
    n = self.num_tasks
    scales = np.ones(n) if self.loss_scales is None else np.asarray(self.loss_scales, np.float64)
    return {
        "loss_sum": np.zeros(n, np.float64),      # window mode: sum over this window
        "loss_steps": np.zeros(n, np.int64),      # steps with a loss in this window
        "window_steps": np.asarray(0, np.int64),  # steps seen in this window
        "ema": np.zeros(n, np.float64),           # ema mode: uncorrected average
        "ema_steps": np.zeros(n, np.int64),       # steps folded into the EMA
        "difficulty": np.zeros(n, np.float64),    # L_t from the last window
        "num_windows": np.asarray(0, np.int64),   # completed windows
        "loss_scale": scales,                     # per-task normaliser
    }

  def observe(self, state: base.State, loss: np.ndarray, valid: np.ndarray) -> bool:
    """Folds one step's losses in; returns True when this step closed a window."""
    if self.smoothing == "window":
      state["loss_sum"] = state["loss_sum"] + np.where(valid, loss, 0.0)
      state["loss_steps"] = state["loss_steps"] + valid.astype(np.int64)
    else:
      d = self.ema_decay
      state["ema"] = np.where(valid, d * state["ema"] + (1 - d) * np.where(valid, loss, 0.0),
                              state["ema"])
      state["ema_steps"] = state["ema_steps"] + valid.astype(np.int64)
    state["window_steps"] = np.asarray(int(state["window_steps"]) + 1, np.int64)
    if int(state["window_steps"]) < self.window:
      return False

    if self.smoothing == "window":
      seen = state["loss_steps"] > 0
      estimate = state["loss_sum"] / np.maximum(state["loss_steps"], 1)
      state["loss_sum"] = np.zeros_like(state["loss_sum"])
      state["loss_steps"] = np.zeros_like(state["loss_steps"])
    else:
      seen = state["ema_steps"] > 0
      estimate = state["ema"] / (1.0 - self.ema_decay ** np.maximum(state["ema_steps"], 1))
    first = int(state["num_windows"]) == 0
    if first:
      fill = float(np.mean(estimate[seen])) if np.any(seen) else 0.0
      previous = np.full(self.num_tasks, fill)
    else:
      previous = state["difficulty"]
    difficulty = np.where(seen, estimate, previous)
    state["difficulty"] = difficulty
    if first and self.normalize == "initial":
      state["loss_scale"] = np.where(difficulty > 0, difficulty, 1.0)
    state["num_windows"] = np.asarray(int(state["num_windows"]) + 1, np.int64)
    state["window_steps"] = np.asarray(0, np.int64)
    return True

  def has_difficulty(self, state: base.State) -> bool:
    return int(state["num_windows"]) > 0

  def scaled_difficulty(self, state: base.State) -> np.ndarray:
    """[num_tasks] L_t divided by its per-task scale (1 unless normalising)."""
    return state["difficulty"] / state["loss_scale"]

  def shares(self, state: base.State, temperature: float) -> np.ndarray:
    """Difficulty shares after the first window, uniform before it."""
    if not self.has_difficulty(state):
      return np.full(self.num_tasks, 1.0 / self.num_tasks)
    scale = None if self.normalize == "none" and self.loss_scales is None else state["loss_scale"]
    return allocation.difficulty_shares(state["difficulty"], temperature, scale)


@registry.register
class DynamicSampler(base.Sampler):
  """The paper's dynamic difficulty sampler.

  Args:
    task_names: tasks in task-id order.
    global_batch_size: B, the examples in one global batch.
    window: K, steps per accumulation window (100 in the paper).
    min_per_task: per-task floor (4 in the paper), so difficulty stays measurable.
    temperature: S_t proportional to L_t^(1/temperature); 1 is the paper.
    smoothing: "window" (the paper's mean over K steps) or "ema".
    ema_decay: decay of the EMA when smoothing="ema".
    normalize: "none" (raw losses, the paper) or "initial" (each L_t divided by
      that task's loss in the first window, for losses of different ranges).
    loss_scales: fixed per-task loss scales (sequence or name -> value) to
      divide by instead; exclusive with normalize="initial".
  """

  name = "dynamic"

  def __init__(self, task_names: Sequence[str], global_batch_size: int, *,
               window: int = 100, min_per_task: int = 4, temperature: float = 1.0,
               smoothing: str = "window", ema_decay: float = 0.99, normalize: str = "none",
               loss_scales: Sequence[float] | Mapping[str, float] | None = None):
    super().__init__(task_names, global_batch_size, min_per_task=min_per_task)
    if not np.isfinite(temperature) or temperature <= 0:
      raise ValueError(f"{self.name} sampler: temperature must be > 0, got {temperature!r}")
    self.temperature = float(temperature)
    scales = None if loss_scales is None else self._per_task(loss_scales, "loss_scales")
    self.tracker = DifficultyTracker(self.num_tasks, window=window, smoothing=smoothing,
                                     ema_decay=ema_decay, normalize=normalize,
                                     loss_scales=scales, owner=self.name)
    self._state.update(self.tracker.init_state())

  def shares(self, step: int) -> np.ndarray:
    del step  # Shares change only when a window closes, inside `update`.
    return self.tracker.shares(self._state, self.temperature)

  def _observe(self, step: int, loss: np.ndarray, valid: np.ndarray,
               counts: np.ndarray) -> None:
    del step, counts
    self.tracker.observe(self._state, loss, valid)


@registry.register
class EasiestSampler(DynamicSampler):
  """All of the batch but the per-task floor goes to the lowest-loss task."""

  name = "easiest"

  def _pick(self, scaled: np.ndarray) -> int:
    return int(np.argmin(scaled))

  def shares(self, step: int) -> np.ndarray:
    del step
    if not self.tracker.has_difficulty(self._state):
      return np.full(self.num_tasks, 1.0 / self.num_tasks)
    one_hot = np.zeros(self.num_tasks)
    one_hot[self._pick(self.tracker.scaled_difficulty(self._state))] = 1.0
    return one_hot


@registry.register
class HardestSampler(EasiestSampler):
  """All of the batch but the per-task floor goes to the highest-loss task."""

  name = "hardest"

  def _pick(self, scaled: np.ndarray) -> int:
    return int(np.argmax(scaled))


@registry.register
class LossReweightSampler(DynamicSampler):
  """Uniform batch; task t's loss term is weighted by |T| * S_t (mean weight 1).

  `shares` reports the difficulty shares S_t (the tasks' weight in the loss),
  while `counts` stays uniform. The trainer multiplies each example's loss by
  `loss_weights(step)[task_id]`; scaling by |T| keeps the average weight at 1,
  so the learning-rate scale matches the other samplers.
  """

  name = "loss_reweight"

  def counts(self, step: int) -> np.ndarray:
    return allocation.allocate_counts(np.ones(self.num_tasks), self.global_batch_size,
                                      self.min_per_task, tie_break_offset=int(step))

  def loss_weights(self, step: int) -> np.ndarray:
    return (self.shares(step) * self.num_tasks).astype(np.float32)
