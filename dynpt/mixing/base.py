"""The one interface every task sampler implements.

A sampler decides, before each step, how many examples of each task fill the
fixed global batch (`counts`), how each task's loss term is weighted
(`loss_weights`), and learns from the step's per-task losses afterwards
(`update`). Its state is a flat dict of numpy arrays so the trainer can save it
with orbax next to the train state and a resumed run continues the same
mixture exactly.

Call order per step (the trainer's contract)::

  n = sampler.counts(step)             # [num_tasks] ints summing to B
  w = sampler.loss_weights(step)       # [num_tasks] floats, ones by default
  ... train on a task-ordered batch with n[t] rows of task t ...
  sampler.update(step, task_loss)      # before any other state change

Steps passed to `update` must strictly increase; `counts` and `shares` are pure
functions of (state, step) and may be called any number of times.
"""

from __future__ import annotations

import abc
from typing import Mapping, Sequence

import numpy as np

from dynpt.mixing import allocation

State = dict[str, np.ndarray]


class Sampler(abc.ABC):
  """Base class: validation, state handling and count allocation.

  Subclasses define `shares(step)` (the batch mixture) and may override
  `_observe` (learn from a validated step) and `loss_weights`. Everything a
  subclass must remember across steps lives in `self._state` (numpy arrays,
  0-d for scalars), which is what `state_dict` saves. A concrete sampler
  registers with `@registry.register` under its `name` and lists in `needs`
  the options a run hands it (`dynpt.mixing.registry`: task sizes, the run's
  length, a signal, a reference run).
  """

  name: str = "base"
  needs: tuple[str, ...] = ()

  def __init__(self, task_names: Sequence[str], global_batch_size: int, *,
               min_per_task: int = 4):
    names = list(task_names)
    if not names:
      raise ValueError(f"{self.name} sampler: task_names is empty")
    for n in names:
      if not isinstance(n, str) or not n:
        raise ValueError(f"{self.name} sampler: task names must be non-empty strings, got {n!r}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
      raise ValueError(f"{self.name} sampler: duplicate task names {dupes}")
    if isinstance(global_batch_size, bool) or int(global_batch_size) != global_batch_size \
        or global_batch_size <= 0:
      raise ValueError(
          f"{self.name} sampler: global_batch_size must be a positive integer, "
          f"got {global_batch_size!r}")
    if int(min_per_task) != min_per_task or min_per_task < 0:
      raise ValueError(
          f"{self.name} sampler: min_per_task must be a non-negative integer, "
          f"got {min_per_task!r}")
    if global_batch_size < min_per_task * len(names):
      raise ValueError(
          f"{self.name} sampler: global_batch_size {global_batch_size} is smaller than "
          f"min_per_task={min_per_task} x {len(names)} tasks = {min_per_task * len(names)}")
    self.task_names: tuple[str, ...] = tuple(names)
    self.global_batch_size = int(global_batch_size)
    self.min_per_task = int(min_per_task)
    self._state: State = {"last_step": np.asarray(-1, np.int64)}

  @property
  def num_tasks(self) -> int:
    return len(self.task_names)

  # ---- The interface -------------------------------------------------------

  @abc.abstractmethod
  def shares(self, step: int) -> np.ndarray:
    """[num_tasks] float shares of the batch (sum 1) used at `step`, for logging."""

  def counts(self, step: int) -> np.ndarray:
    """[num_tasks] int64 examples per task at `step`, summing to the global batch."""
    return allocation.allocate_counts(self.shares(step), self.global_batch_size,
                                      self.min_per_task, tie_break_offset=int(step))

  def loss_weights(self, step: int) -> np.ndarray:
    """[num_tasks] float32 weight of each task's loss term; ones unless reweighting."""
    del step  # Only loss re-weighting depends on it.
    return np.ones(self.num_tasks, np.float32)

  def update(self, step: int, task_loss: Sequence[float] | np.ndarray,
             task_count: Sequence[int] | np.ndarray | None = None) -> None:
    """Learns from one finished step.

    Args:
      step: the step whose batch produced `task_loss`; must exceed the last one.
      task_loss: [num_tasks] mean token cross-entropy per task in this step
        (globally reduced, so identical on every host). A task with no examples
        (or no target tokens) in the step has no loss: pass NaN for it.
      task_count: optional [num_tasks] examples each task had in this step
        (the counts its batch was drawn with). NaN is accepted exactly where
        it is 0. When omitted, `self.counts(step)` is used, which is why
        `update` must then come before any other state change (such as
        `update_validation`, or the update of the step before, for samplers
        whose mixture moves every step).

    Raises:
      ValueError: naming the step and task for a wrong shape, a negative or
        infinite loss, a NaN loss for a task that had examples, or a step that
        does not increase.
    """
    step = int(step)
    last = int(self._state["last_step"])
    if step <= last:
      raise ValueError(f"{self.name} sampler: update for step {step} but step {last} "
                       "was already applied; steps must increase")
    loss = np.asarray(task_loss, np.float64)
    if loss.shape != (self.num_tasks,):
      raise ValueError(f"{self.name} sampler: task_loss at step {step} has shape {loss.shape}, "
                       f"expected ({self.num_tasks},) in task order {list(self.task_names)}")
    if task_count is None:
      count = self.counts(step)
    else:
      count = np.asarray(task_count)
      if count.shape != (self.num_tasks,) or np.any(count < 0):
        raise ValueError(f"{self.name} sampler: task_count at step {step} must be "
                         f"({self.num_tasks},) non-negative, got {count!r}")
    for t in range(self.num_tasks):
      value = loss[t]
      if np.isnan(value):
        if count[t] != 0:
          raise ValueError(
              f"{self.name} sampler: task_loss for task '{self.task_names[t]}' at step {step} "
              f"is NaN although the task had {int(count[t])} examples")
      elif not np.isfinite(value) or value < 0:
        raise ValueError(
            f"{self.name} sampler: task_loss for task '{self.task_names[t]}' at step {step} "
            f"is {float(value)!r}; losses must be finite and >= 0")
    self._observe(step, loss, ~np.isnan(loss), count.astype(np.int64))
    self._state["last_step"] = np.asarray(step, np.int64)

  def _observe(self, step: int, loss: np.ndarray, valid: np.ndarray,
               counts: np.ndarray) -> None:
    """Hook: learn from a validated step. Default: nothing.

    `loss[~valid]` is NaN; `counts` are the examples each task had in the step
    (`task_count`, else `counts(step)`): samplers that count examples read them
    here rather than calling `counts(step)`, which a trainer that draws the
    next batch before this update may already have moved on from.
    """
    del step, loss, valid, counts

  # ---- State ---------------------------------------------------------------

  def state_dict(self) -> State:
    """Returns a copy of the state: str -> numpy array, an orbax-savable pytree."""
    return {k: np.array(v, copy=True) for k, v in self._state.items()}

  def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
    """Restores a state saved by `state_dict` of a sampler built the same way.

    Raises:
      ValueError: naming the missing, unexpected or mis-shaped key.
    """
    missing = sorted(set(self._state) - set(state))
    extra = sorted(set(state) - set(self._state))
    if missing or extra:
      raise ValueError(f"{self.name} sampler: state keys do not match (missing {missing}, "
                       f"unexpected {extra})")
    restored = {}
    for key, template in self._state.items():
      value = np.asarray(state[key])
      if value.shape != template.shape:
        raise ValueError(f"{self.name} sampler: state key '{key}' has shape {value.shape}, "
                         f"expected {template.shape} ({self.num_tasks} tasks)")
      if value.dtype.kind not in "biuf" or (template.dtype.kind in "biu" and
                                            value.dtype.kind == "f"):
        raise ValueError(f"{self.name} sampler: state key '{key}' has dtype {value.dtype}, "
                         f"expected {template.dtype}")
      restored[key] = value.astype(template.dtype, copy=True)
    self._state = restored

  # ---- Helpers for subclasses ---------------------------------------------

  def _per_task(self, values: Sequence[float] | Mapping[str, float] | np.ndarray,
                what: str) -> np.ndarray:
    """Returns a [num_tasks] float64 array from a sequence or a name->value dict."""
    if isinstance(values, Mapping):
      unknown = sorted(set(values) - set(self.task_names))
      if unknown:
        raise ValueError(f"{self.name} sampler: {what} names unknown tasks {unknown}; "
                         f"known tasks are {list(self.task_names)}")
      missing = [t for t in self.task_names if t not in values]
      if missing:
        raise ValueError(f"{self.name} sampler: {what} is missing tasks {missing}")
      return np.asarray([values[t] for t in self.task_names], np.float64)
    arr = np.asarray(values, np.float64)
    if arr.shape != (self.num_tasks,):
      raise ValueError(f"{self.name} sampler: {what} has shape {arr.shape}, expected "
                       f"({self.num_tasks},) in task order")
    return arr

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(tasks={self.num_tasks}, "
            f"global_batch_size={self.global_batch_size}, min_per_task={self.min_per_task})")
