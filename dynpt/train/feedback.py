"""The mixture feedback: per-task losses -> `sampler.update` -> the next counts.

This is the heart of dynamic pretraining: the losses each task had in one step
decide how many examples each task gets in a later batch. It is kept apart
from the step loop so that its one rule can be read, tested and checkpointed
on its own:

  **The batch of step n is drawn from the sampler after `update` with the
  losses of every step up to n - 1 - `STEPS_IN_FLIGHT` = n-2.**

Why n-2 and not n-1: the batch of step n is assembled on a background thread
while the device runs step n-1 (`STEPS_IN_FLIGHT` = 1 step runs while a batch
is drawn), so step n-1's losses do not exist yet when its counts are needed. The rule is the same whether the jitted step call
returns at once (asynchronous dispatch) or only when the step is done
(synchronous dispatch), and it does not depend on when checkpoints are
written, so a resumed run replays the uninterrupted one exactly.

`MixtureFeedback` enforces the rule itself: `observe(s, ...)` only records a
step's losses; `draw(n)` applies every recorded step up to n-2, in order,
then asks the sampler for step n's composition. Losses recorded but not yet
applied (at most the last two steps) are part of `state_dict()`, so the
checkpoint written after step s holds the sampler as it was when batch s+1
was drawn plus step s's losses.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from dynpt import mixing

# Steps still running when a batch is drawn: the batch of step n is drawn while
# step n-1 runs, so it sees the losses of steps <= n - 1 - STEPS_IN_FLIGHT = n-2.
STEPS_IN_FLIGHT = 1


@dataclasses.dataclass(frozen=True)
class Draw:
  """The mixture of one step's batch, as the sampler gave it.

  Attributes:
    step: the step the batch is for.
    counts: [tasks] int64 examples per task, summing to the global batch.
    shares: [tasks] float64 target shares of the batch (for logs and history).
    loss_weights: [tasks] float32 weight of each task's loss term.
  """
  step: int
  counts: np.ndarray
  shares: np.ndarray
  loss_weights: np.ndarray


def task_losses(task_loss_sum: np.ndarray, task_tokens: np.ndarray) -> np.ndarray:
  """[tasks] mean token cross-entropy per task; NaN for a task without tokens.

  Args:
    task_loss_sum: [tasks] summed token cross-entropy of one step (step metric).
    task_tokens: [tasks] target tokens of each task in that step (step metric).
  """
  sums = np.asarray(task_loss_sum, np.float64)
  tokens = np.asarray(task_tokens, np.float64)
  return np.where(tokens > 0, sums / np.maximum(tokens, 1), np.nan)


class MixtureFeedback:
  """Feeds each step's per-task losses to the sampler, one step late (see module doc).

  Args:
    sampler: a `dynpt.mixing.Sampler`; this object becomes the only caller of
      its `update`.
  """

  def __init__(self, sampler: mixing.Sampler):
    self.sampler = sampler
    self._applied_through = -1  # The last step given to `sampler.update`.
    # Observed, not yet applied: (step, task_loss [tasks], counts [tasks]).
    self._pending: list[tuple[int, np.ndarray, np.ndarray]] = []

  @property
  def observed_through(self) -> int:
    """The last step whose losses were observed (-1 before any)."""
    return self._pending[-1][0] if self._pending else self._applied_through

  def observe(self, step: int, task_loss: np.ndarray, counts: np.ndarray) -> None:
    """Records step `step`'s per-task losses and the counts its batch had.

    Raises:
      ValueError: if `step` does not follow the last observed step, or a
        shape does not match the sampler's tasks.
    """
    step = int(step)
    if step != self.observed_through + 1:
      raise ValueError(f"mixture feedback: losses of step {step} observed after "
                       f"step {self.observed_through}; steps must follow each other")
    loss = np.asarray(task_loss, np.float64)
    count = np.asarray(counts, np.int64)
    want = (self.sampler.num_tasks,)
    if loss.shape != want or count.shape != want:
      raise ValueError(f"mixture feedback: step {step} has task_loss {loss.shape} and "
                       f"counts {count.shape}, expected {want}")
    self._pending.append((step, loss.copy(), count.copy()))

  def draw(self, step: int) -> Draw:
    """The composition of step `step`'s batch, after the updates of steps <= `step` - 2.

    Raises:
      RuntimeError: if the losses of step `step` - 2 were never observed: the
        counts would then depend on when the caller happened to observe them.
    """
    step = int(step)
    applies_through = step - 1 - STEPS_IN_FLIGHT
    if self.observed_through < applies_through:
      raise RuntimeError(f"mixture feedback: the batch of step {step} needs the losses "
                         f"of step {applies_through}, but the last observed step is "
                         f"{self.observed_through}")
    while self._pending and self._pending[0][0] <= applies_through:
      observed, loss, counts = self._pending.pop(0)
      self.sampler.update(observed, loss, task_count=counts)
      self._applied_through = observed
    return Draw(step=step,
                counts=np.asarray(self.sampler.counts(step), np.int64),
                shares=np.asarray(self.sampler.shares(step), np.float64),
                loss_weights=np.asarray(self.sampler.loss_weights(step), np.float32))

  def state_dict(self) -> dict[str, Any]:
    """The sampler's state, the last step applied and the pending losses (JSON-able)."""
    return {
        "sampler": self.sampler.state_dict(),
        "applied_through": np.asarray(self._applied_through, np.int64),
        "pending": [{"step": np.asarray(s, np.int64),
                     # JSON has no NaN; a task without tokens is recorded as -1.
                     "task_loss": np.where(np.isnan(loss), -1.0, loss),
                     "counts": counts} for s, loss, counts in self._pending],
    }

  def load_state_dict(self, state: Mapping[str, Any]) -> None:
    """Restores `state_dict()`'s output, or a bare sampler state.

    A bare sampler state (checkpoints written before this module) is one
    whose last update is already applied: nothing is pending.
    """
    if "sampler" not in state:
      self.sampler.load_state_dict(state)
      self._applied_through = int(np.asarray(state.get("last_step", -1)))
      self._pending = []
      return
    self.sampler.load_state_dict(state["sampler"])
    self._applied_through = int(np.asarray(state["applied_through"]))
    self._pending = []
    for record in state.get("pending") or []:
      loss = np.asarray(record["task_loss"], np.float64)
      self._pending.append((int(np.asarray(record["step"])),
                            np.where(loss < 0, np.nan, loss),
                            np.asarray(record["counts"], np.int64)))
