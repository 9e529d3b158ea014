"""DoReMi's online domain-weight update (Xie et al., 2023), with a recorded reference.

DoReMi trains a small proxy model whose domain weights follow exponentiated
gradient ascent on the excess loss over a reference model:

  alpha' = alpha * exp(eta * lambda),  lambda_t = max(L_t - L_ref_t, 0)
  alpha  = (1 - c) * alpha' / sum(alpha') + c / |T|

(eta = 1 and c = 1e-3 in the paper). Here the weights are the batch shares of
the run itself, updated online, and the reference losses come from an earlier
dynpt run: its `mixture_history.jsonl` records every task's mean loss per
step, so L_ref_t at step s is read from that file and no second model runs
during training.

How this differs from the paper:
* The paper clips the excess per token, against a reference model evaluated
  on the same tokens, and averages the clipped values over the domain's
  tokens in the batch. Here the clip is applied to the task's mean loss minus
  the reference run's mean loss for that task at the same step, on different
  examples: cheaper (no reference forward pass) and noisier, and a task
  whose per-token excess cancels out across tokens counts as 0 here.
* The paper samples the proxy's batches uniformly and reweights the loss by
  alpha, then trains the real model offline on the time-averaged alpha.
  Here alpha is the online sampling mixture; its time average is kept too
  (`average_weights`) for the paper's offline use.
* The paper's proxy and reference are different models. A reference run
  with this run's seed on the uniform mixture replays this run's first
  batch exactly (alpha starts uniform), so the excess is 0 and alpha never
  moves: give the reference run another seed.

Reference loss at step s: linear interpolation between the reference's
recorded steps for that task (records with a null loss are skipped); before
the first record the first value, after the last the last value, as long as
s is within the reference run's recorded range plus one history interval.
Beyond that the reference run was too short and `update` raises, naming the
file. With `window` K > 1 the excess is averaged over K steps before one
update (K = 1, every step, is the paper).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from dynpt import fs
from dynpt.mixing import base
from dynpt.mixing import history
from dynpt.mixing import registry


def doremi_weights(weights: np.ndarray, excess: np.ndarray, eta: float,
                   smoothing: float) -> np.ndarray:
  """One DoReMi step: normalise(weights * exp(eta * excess)) mixed with uniform.

  Args:
    weights: [num_tasks] current domain weights, > 0, summing to 1.
    excess: [num_tasks] clipped excess losses, >= 0.
    eta: step size (> 0).
    smoothing: c in [0, 1), the weight of the uniform mixture.

  Returns:
    [num_tasks] float64 new weights summing to 1, each >= c / num_tasks.
  """
  log_w = np.log(weights) + eta * np.asarray(excess, np.float64)  # Log space: no overflow.
  w = np.exp(log_w - np.max(log_w))
  w = w / np.sum(w)
  return (1.0 - smoothing) * w + smoothing / w.size


class ReferenceLosses:
  """Per-task loss curve of an earlier run, read from its `mixture_history.jsonl`.

  Args:
    path: the reference run directory, or its history file itself.
    task_names: tasks that must all have a recorded loss.

  Raises:
    ValueError: naming the file if it is missing, unreadable, or lacks a task.
  """

  def __init__(self, path: str, task_names: Sequence[str]):
    file = path if fs.isfile(path) else fs.join(path, history.HISTORY_FILENAME)
    try:
      records, _ = history.read_history(file)
    except ValueError as e:
      raise ValueError(f"doremi sampler: reference run: {e}") from e
    self.path = file
    # One row per step; a step written twice (a history copied across a resume) keeps
    # its last line (records are sorted stably by step).
    rows = {r["step"]: r["task_loss"] for r in records}
    all_steps = np.asarray(sorted(rows), np.int64)
    nan = float("nan")
    table = np.asarray([[rows[k].get(t, nan) for t in task_names] for k in all_steps],
                       np.float64).reshape(len(all_steps), len(task_names))  # [steps, tasks]
    recorded = np.isfinite(table)
    missing = [t for t, ok in zip(task_names, recorded.any(axis=0)) if not ok]
    if missing:
      raise ValueError(f"reference run {file} has no recorded loss for tasks {missing}; "
                       "train the reference run on the same mixture")
    self._steps = [all_steps[recorded[:, i]].astype(np.float64)
                   for i in range(len(task_names))]
    self._losses = [table[recorded[:, i], i] for i in range(len(task_names))]
    interval = int(np.min(np.diff(all_steps))) if all_steps.size > 1 else 1
    self.first_step = int(all_steps[0])
    self.last_step = int(all_steps[-1]) + interval - 1  # Covered until the next record.

  def at(self, step: int) -> np.ndarray:
    """[num_tasks] reference loss at `step`.

    Raises:
      ValueError: naming the file when `step` is past the reference run.
    """
    if step > self.last_step:
      raise ValueError(f"reference run {self.path} covers steps up to {self.last_step}, "
                       f"but step {step} needs a reference loss; use a reference run "
                       "at least as long as this one")
    return np.asarray([np.interp(step, s, v) for s, v in zip(self._steps, self._losses)])


@registry.register
class DoReMiSampler(base.Sampler):
  """DoReMi's online excess-loss update against a recorded reference run ("doremi").

  Args:
    task_names: tasks in task-id order.
    global_batch_size: B.
    reference_run_dir: an earlier dynpt run on the same tasks (its directory
      or its `mixture_history.jsonl`), at least as long as this run; the
      paper's reference is trained on the uniform mixture.
    num_steps: optional length of this run, to check at build time that the
      reference covers it (otherwise the first step past it raises).
    eta: step size of the exponentiated update (1.0 in the paper).
    smoothing: c, the uniform mixture weight (1e-3 in the paper).
    window: K, steps whose excess is averaged before one update (1, every
      step, as in the paper).
    min_per_task: per-task floor.
  """

  name = "doremi"
  needs = (registry.REFERENCE_RUN, registry.NUM_STEPS)

  def __init__(self, task_names: Sequence[str], global_batch_size: int, *,
               reference_run_dir: str, num_steps: int | None = None, eta: float = 1.0,
               smoothing: float = 1e-3, window: int = 1, min_per_task: int = 4):
    super().__init__(task_names, global_batch_size, min_per_task=min_per_task)
    if not np.isfinite(eta) or eta <= 0:
      raise ValueError(f"{self.name} sampler: eta must be > 0, got {eta!r}")
    if not 0.0 <= smoothing < 1.0:
      raise ValueError(f"{self.name} sampler: smoothing must be in [0, 1), got {smoothing!r}")
    if int(window) != window or window < 1:
      raise ValueError(f"{self.name} sampler: window must be a positive integer, got {window!r}")
    if not isinstance(reference_run_dir, (str, os.PathLike)) or not str(reference_run_dir):
      raise ValueError(f"{self.name} sampler: reference_run_dir must name an earlier run, "
                       f"got {reference_run_dir!r}")
    self.eta, self.smoothing, self.window = float(eta), float(smoothing), int(window)
    self.reference = ReferenceLosses(os.fspath(reference_run_dir), self.task_names)
    if num_steps is not None and num_steps - 1 > self.reference.last_step:
      raise ValueError(f"{self.name} sampler: reference run {self.reference.path} covers "
                       f"steps up to {self.reference.last_step}, shorter than this run's "
                       f"num_steps={num_steps}; use a reference run at least as long")
    n = self.num_tasks
    self._state.update({
        "weights": np.full(n, 1.0 / n),            # alpha, the current shares
        "weights_sum": np.zeros(n, np.float64),    # sum of alpha over updates
        "excess_sum": np.zeros(n, np.float64),     # clipped excess in this window
        "excess_steps": np.zeros(n, np.int64),     # steps with a loss in this window
        "window_steps": np.asarray(0, np.int64),
        "num_updates": np.asarray(0, np.int64),
    })

  def shares(self, step: int) -> np.ndarray:
    del step  # Weights change only inside `update`.
    return self._state["weights"].copy()

  def average_weights(self) -> np.ndarray:
    """[num_tasks] time average of the weights (the paper's offline output)."""
    k = int(self._state["num_updates"])
    return self.shares(0) if k == 0 else self._state["weights_sum"] / k

  def _observe(self, step: int, loss: np.ndarray, valid: np.ndarray,
               counts: np.ndarray) -> None:
    del counts
    st = self._state
    excess = np.maximum(np.where(valid, loss, 0.0) - self.reference.at(step), 0.0)
    st["excess_sum"] = st["excess_sum"] + np.where(valid, excess, 0.0)
    st["excess_steps"] = st["excess_steps"] + valid.astype(np.int64)
    st["window_steps"] = np.asarray(int(st["window_steps"]) + 1, np.int64)
    if int(st["window_steps"]) < self.window:
      return
    mean_excess = st["excess_sum"] / np.maximum(st["excess_steps"], 1)  # 0 if no loss.
    st["weights"] = doremi_weights(st["weights"], mean_excess, self.eta, self.smoothing)
    st["weights_sum"] = st["weights_sum"] + st["weights"]
    st["num_updates"] = np.asarray(int(st["num_updates"]) + 1, np.int64)
    st["excess_sum"] = np.zeros_like(st["excess_sum"])
    st["excess_steps"] = np.zeros_like(st["excess_steps"])
    st["window_steps"] = np.asarray(0, np.int64)
