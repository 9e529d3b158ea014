"""12-in-1's dynamic stop-and-go (DSG) and its curriculum / anti-curriculum variants.

Lu et al. (2020, Algorithm 1) cycle round-robin through the tasks; each task
is either in *go* (trains every iteration) or *stop* (trains only every
`iter_gap` iterations). The validation score of each task, measured once per
task epoch, moves it between the two:

* Converged (go -> stop): two consecutive measurements (`converge_epochs`)
  each fail to improve on the task's best score by more than 0.1%
  (`converge_threshold`, relative).
* Diverged (stop -> go): a measurement is more than 0.5% (`diverge_threshold`,
  relative) worse than the task's best measured score.

Mapping to a fixed global batch B: one dynpt step is one 12-in-1 iteration.
The tasks *active* at step i are those in go plus, when i % iter_gap == 0,
those in stop; B is split evenly among the active tasks (leftover examples
rotate with the step), and inactive tasks get 0 examples. So a stopped task
trains every `iter_gap`-th step, as in the paper, and DSG deliberately breaks
the per-task floor for stopped tasks on the other steps (its signal is the
validation score, not the training loss, so it does not need one). Active
tasks always get at least `min_per_task`, since B >= min_per_task * |T|. If
every task is in stop, all tasks stay active on every step (12-in-1 would
idle; a fixed-size batch cannot).

Validation scores come in through `update_validation(step, scores)`; with
`task_sizes` the sampler also counts examples per task and `validation_due()`
says which tasks finished an epoch since their last score.

`signal="train_loss"` scores a task without an evaluation: when the task
finishes an epoch (`task_sizes` examples since its last score), its score is
its mean training loss over that epoch (lower is better), fed through the
same rule. 12-in-1 scores each task on its validation split; the training
loop has no per-task evaluation inside pretraining, so it builds `dsg` (and
the curricula) with this signal. A training loss measured on examples the
model has not yet trained on (the first epoch) is a held-out loss; on later
epochs it includes memorisation, so a task stops later than by validation.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from dynpt.mixing import allocation
from dynpt.mixing import base
from dynpt.mixing import difficulty
from dynpt.mixing import registry


@registry.register
class StopAndGoSampler(base.Sampler):
  """Round-robin with 12-in-1's dynamic stop-and-go ("dsg").

  Args:
    task_names: tasks in task-id order.
    global_batch_size: B.
    iter_gap: a stopped task trains on steps where step % iter_gap == 0 (4).
    converge_threshold: relative improvement below which an epoch is "bad".
    converge_epochs: consecutive bad epochs that mean converged (2).
    diverge_threshold: relative drop from the best that means diverged.
    higher_is_better: True for accuracy-like scores, False for losses.
    task_sizes: optional examples per task epoch (sequence or name -> n), for
      `validation_due()`.
    signal: where scores come from: "validation" (the caller's
      `update_validation`) or "train_loss" (the task's mean training loss over
      each of its epochs, lower is better; needs `task_sizes`).
    min_per_task: floor for active tasks (checked against B at build time).
  """

  SIGNALS = (registry.VALIDATION, registry.TRAIN_LOSS)

  name = "dsg"
  # A run hands over the sizes that define a task epoch and the signal it feeds.
  needs = (registry.TASK_SIZES, registry.SIGNAL)

  def __init__(self, task_names: Sequence[str], global_batch_size: int, *,
               iter_gap: int = 4, converge_threshold: float = 0.001,
               converge_epochs: int = 2, diverge_threshold: float = 0.005,
               higher_is_better: bool = True,
               task_sizes: Sequence[int] | Mapping[str, int] | None = None,
               signal: str = "validation",
               min_per_task: int = 4):
    super().__init__(task_names, global_batch_size, min_per_task=min_per_task)
    if signal not in self.SIGNALS:
      raise ValueError(f"{self.name} sampler: signal={signal!r}: expected one of "
                       f"{', '.join(self.SIGNALS)}")
    if signal == "train_loss" and task_sizes is None:
      raise ValueError(f"{self.name} sampler: signal='train_loss' needs task_sizes= "
                       "(a task's epoch ends after that many of its examples)")
    if int(iter_gap) != iter_gap or iter_gap < 1:
      raise ValueError(f"{self.name} sampler: iter_gap must be a positive integer, "
                       f"got {iter_gap!r}")
    if int(converge_epochs) != converge_epochs or converge_epochs < 1:
      raise ValueError(f"{self.name} sampler: converge_epochs must be a positive integer, "
                       f"got {converge_epochs!r}")
    for key, value in (("converge_threshold", converge_threshold),
                       ("diverge_threshold", diverge_threshold)):
      if not np.isfinite(value) or value < 0:
        raise ValueError(f"{self.name} sampler: {key} must be finite and >= 0, got {value!r}")
    self.iter_gap = int(iter_gap)
    self.converge_threshold = float(converge_threshold)
    self.converge_epochs = int(converge_epochs)
    self.diverge_threshold = float(diverge_threshold)
    self.signal = signal
    # A loss is better when lower, whatever the validation metric's direction.
    self.higher_is_better = bool(higher_is_better) and signal == "validation"
    self.task_sizes = None
    if task_sizes is not None:
      sizes = self._per_task(task_sizes, "task_sizes")
      if not np.all(np.isfinite(sizes) & (sizes >= 1)):
        raise ValueError(f"{self.name} sampler: task_sizes must be >= 1, got {sizes.tolist()}")
      self.task_sizes = sizes.astype(np.int64)
    n = self.num_tasks
    self._state.update({
        "stopped": np.zeros(n, np.int64),           # 1 = stop mode
        "best": np.full(n, np.nan),                 # best validation score so far
        "bad_epochs": np.zeros(n, np.int64),        # consecutive epochs without improvement
        "examples_seen": np.zeros(n, np.int64),     # training examples per task
        "epochs_validated": np.zeros(n, np.int64),  # task epochs already scored
    })
    if signal == "train_loss":
      self._state.update({
          "epoch_loss_sum": np.zeros(n, np.float64),  # loss x examples, this epoch
          "epoch_examples": np.zeros(n, np.float64),  # examples with a loss, this epoch
      })

  # ---- Batch ---------------------------------------------------------------

  def active(self, step: int) -> np.ndarray:
    """[num_tasks] bool: tasks that train at `step` (go, or stop on a gap step)."""
    go = self._state["stopped"] == 0
    active = go | (int(step) % self.iter_gap == 0)
    return active if np.any(active) else np.ones(self.num_tasks, bool)

  def shares(self, step: int) -> np.ndarray:
    active = self.active(step).astype(np.float64)
    return active / np.sum(active)

  def counts(self, step: int) -> np.ndarray:
    # Inactive tasks get 0; active ones >= min_per_task because B >= floor * |T|.
    return allocation.allocate_counts(self.shares(step), self.global_batch_size, 0,
                                      tie_break_offset=int(step))

  def _observe(self, step: int, loss: np.ndarray, valid: np.ndarray,
               counts: np.ndarray) -> None:
    st = self._state
    st["examples_seen"] = st["examples_seen"] + counts
    if self.signal != "train_loss":
      return
    weight = np.where(valid, counts, 0).astype(np.float64)
    st["epoch_loss_sum"] = st["epoch_loss_sum"] + np.where(valid, loss, 0.0) * weight
    st["epoch_examples"] = st["epoch_examples"] + weight
    due = self.validation_due() & (st["epoch_examples"] > 0)
    if np.any(due):
      mean = st["epoch_loss_sum"] / np.maximum(st["epoch_examples"], 1.0)
      self.update_validation(step, np.where(due, mean, np.nan))  # Updates `st` in place.
      st["epoch_loss_sum"] = np.where(due, 0.0, st["epoch_loss_sum"])
      st["epoch_examples"] = np.where(due, 0.0, st["epoch_examples"])

  def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
    """As `Sampler.load_state_dict`; a state saved before the train-loss signal
    existed (no epoch accumulators) resumes with empty ones."""
    state = dict(state)
    if self.signal == "train_loss":
      for key in ("epoch_loss_sum", "epoch_examples"):
        state.setdefault(key, np.zeros(self.num_tasks, np.float64))
    super().load_state_dict(state)

  # ---- Validation ----------------------------------------------------------

  def validation_due(self) -> np.ndarray:
    """[num_tasks] bool: tasks that completed a task epoch since their last score.

    Raises:
      ValueError: if the sampler was built without `task_sizes`.
    """
    if self.task_sizes is None:
      raise ValueError(f"{self.name} sampler: validation_due() needs task_sizes=")
    return self._state["examples_seen"] // self.task_sizes > self._state["epochs_validated"]

  def modes(self) -> dict[str, str]:
    """Task name -> "go" or "stop", for logging."""
    return {t: ("stop" if s else "go") for t, s in zip(self.task_names, self._state["stopped"])}

  def update_validation(self, step: int,
                        scores: Sequence[float] | Mapping[str, float] | np.ndarray) -> None:
    """Feeds one round of validation scores into the go/stop state machine.

    Args:
      step: the training step the scores were measured at (for messages).
      scores: [num_tasks] in task order, NaN for tasks not measured this time;
        or a dict task name -> score for the measured tasks only.

    Raises:
      ValueError: on an unknown task name, wrong shape or infinite score.
    """
    if isinstance(scores, Mapping):
      unknown = sorted(set(scores) - set(self.task_names))
      if unknown:
        raise ValueError(f"{self.name} sampler: validation scores at step {step} name "
                         f"unknown tasks {unknown}; known tasks are {list(self.task_names)}")
      values = np.asarray([scores.get(t, np.nan) for t in self.task_names], np.float64)
    else:
      values = np.asarray(scores, np.float64)
      if values.shape != (self.num_tasks,):
        raise ValueError(f"{self.name} sampler: validation scores at step {step} have shape "
                         f"{values.shape}, expected ({self.num_tasks},)")
    bad = [t for t, v in zip(self.task_names, values) if np.isinf(v)]
    if bad:
      raise ValueError(f"{self.name} sampler: infinite validation score at step {step} "
                       f"for tasks {bad}")
    st = self._state
    stopped, best, bad_epochs = st["stopped"].copy(), st["best"].copy(), st["bad_epochs"].copy()
    for t in np.flatnonzero(~np.isnan(values)):
      score = values[t]
      if np.isnan(best[t]):
        best[t], bad_epochs[t] = score, 0
        continue
      gain = (score - best[t]) if self.higher_is_better else (best[t] - score)
      rel = gain / max(abs(best[t]), 1e-12)  # > 0 is better than the best so far
      bad_epochs[t] = 0 if rel > self.converge_threshold else bad_epochs[t] + 1
      if gain > 0:
        best[t] = score
      if not stopped[t] and bad_epochs[t] >= self.converge_epochs:
        stopped[t], bad_epochs[t] = 1, 0          # Converged: go -> stop.
      elif stopped[t] and -rel > self.diverge_threshold:
        stopped[t], bad_epochs[t] = 0, 0          # Diverged: stop -> go.
    st["stopped"], st["best"], st["bad_epochs"] = stopped, best, bad_epochs
    if self.task_sizes is not None:
      measured = ~np.isnan(values)
      st["epochs_validated"] = np.where(measured, st["examples_seen"] // self.task_sizes,
                                        st["epochs_validated"])


@registry.register
class CurriculumSampler(StopAndGoSampler):
  """12-in-1's curriculum: train a first group of easy tasks, then all tasks.

  Phases (kept in the state):
    0. Measuring (only without `first_tasks`): uniform batches for `window`
       steps; the `group_size` tasks with the lowest mean loss (the highest for
       "anti_curriculum") become the first group. 12-in-1 ranked by single-task
       convergence speed, which dynpt does not have; training loss is the
       paper's own difficulty measure.
    1. First group: the first group shares the batch evenly; every other task
       keeps `min_per_task` (set it to 0 for 12-in-1's exact "only G1").
    2. All tasks, round-robin (uniform); with `stop_and_go=True`, DSG as in
       `StopAndGoSampler`. Phase 1 ends after `first_phase_steps` steps, or as
       soon as every first-group task has converged by the DSG rule (fed by
       `update_validation`), whichever comes first.

  Args (besides `StopAndGoSampler`'s):
    first_tasks: names of the first group; None to pick it by measured loss.
    group_size: size of the picked first group (default max(1, |T| // 4)).
    first_phase_steps: optional length of phase 1 in steps.
    window: steps of phase 0.
    stop_and_go: use DSG in phase 2.
  """

  name = "curriculum"
  hardest_first = False

  def __init__(self, task_names: Sequence[str], global_batch_size: int, *,
               first_tasks: Sequence[str] | None = None, group_size: int | None = None,
               first_phase_steps: int | None = None, window: int = 100,
               stop_and_go: bool = False, min_per_task: int = 4, **dsg_options):
    super().__init__(task_names, global_batch_size, min_per_task=min_per_task, **dsg_options)
    n = self.num_tasks
    self.group_size = max(1, n // 4) if group_size is None else int(group_size)
    if not 1 <= self.group_size <= n:
      raise ValueError(f"{self.name} sampler: group_size must be in [1, {n}], got {group_size!r}")
    if first_phase_steps is not None and (int(first_phase_steps) != first_phase_steps
                                          or first_phase_steps < 1):
      raise ValueError(f"{self.name} sampler: first_phase_steps must be a positive integer, "
                       f"got {first_phase_steps!r}")
    self.first_phase_steps = None if first_phase_steps is None else int(first_phase_steps)
    self.stop_and_go = bool(stop_and_go)
    self.tracker = difficulty.DifficultyTracker(n, window=window, owner=self.name)
    self._state.update(self.tracker.init_state())
    first = np.zeros(n, np.int64)
    phase = 0
    if first_tasks is not None:
      names = list(first_tasks)
      unknown = sorted(set(names) - set(self.task_names))
      if unknown or not names:
        raise ValueError(f"{self.name} sampler: first_tasks {names} must be a non-empty "
                         f"subset of {list(self.task_names)} (unknown: {unknown})")
      first[[self.task_names.index(t) for t in names]] = 1
      phase = 1
    self._state.update({
        "phase": np.asarray(phase, np.int64),
        "first_group": first,
        "phase_start": np.asarray(0, np.int64),  # first step of phase 1
    })

  def phase(self, step: int) -> int:
    """The phase that `step` trains in (0 measuring, 1 first group, 2 all tasks)."""
    p = int(self._state["phase"])
    if p == 1 and self.first_phase_steps is not None:
      if int(step) >= int(self._state["phase_start"]) + self.first_phase_steps:
        return 2
    return p

  def first_group(self) -> list[str]:
    """Names of the first group (empty while still measuring)."""
    return [t for t, f in zip(self.task_names, self._state["first_group"]) if f]

  def shares(self, step: int) -> np.ndarray:
    p = self.phase(step)
    if p == 1:
      first = self._state["first_group"].astype(np.float64)
      return first / np.sum(first)
    if p == 2 and self.stop_and_go:
      return super().shares(step)
    return np.full(self.num_tasks, 1.0 / self.num_tasks)

  def counts(self, step: int) -> np.ndarray:
    p = self.phase(step)
    if p == 2 and self.stop_and_go:
      return super().counts(step)
    return allocation.allocate_counts(self.shares(step), self.global_batch_size,
                                      self.min_per_task, tie_break_offset=int(step))

  def _observe(self, step: int, loss: np.ndarray, valid: np.ndarray,
               counts: np.ndarray) -> None:
    p = self.phase(step)
    super()._observe(step, loss, valid, counts)
    if p == 0 and self.tracker.observe(self._state, loss, valid):
      order = np.argsort(self._state["difficulty"], kind="stable")
      if self.hardest_first:
        order = np.argsort(-self._state["difficulty"], kind="stable")
      first = np.zeros(self.num_tasks, np.int64)
      first[order[:self.group_size]] = 1
      self._state["first_group"] = first
      self._state["phase_start"] = np.asarray(step + 1, np.int64)
      p = 1
    elif p == 1 and self.phase(step + 1) == 2:
      p = 2
    self._state["phase"] = np.asarray(p, np.int64)

  def update_validation(self, step: int,
                        scores: Sequence[float] | Mapping[str, float] | np.ndarray) -> None:
    """As `StopAndGoSampler.update_validation`; also ends phase 1 once the first
    group has converged."""
    super().update_validation(step, scores)
    first = self._state["first_group"] == 1
    if int(self._state["phase"]) == 1 and np.all(self._state["stopped"][first] == 1):
      self._state["phase"] = np.asarray(2, np.int64)


@registry.register
class AntiCurriculumSampler(CurriculumSampler):
  """12-in-1's anti-curriculum: the hardest (highest-loss) group first, then all."""

  name = "anti_curriculum"
  hardest_first = True
