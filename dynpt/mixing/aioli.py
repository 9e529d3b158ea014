"""Aioli (Chen et al., ICLR 2025): re-estimate how the tasks' losses respond, then mix.

Aioli assumes the linear dynamic mixing law: over a short stretch of
training with mixture p, the losses move as L(s+1) = L(s) - A p, where
A[i, j] is how much training on task j lowers task i's loss. The run is cut
into rounds of `round_steps` steps. Each round starts with LearnParams, a
probe phase of `probe_sweeps` sweeps over the tasks in a seeded random order;
each task in turn trains `probe_steps` steps on a smoothed one-hot mixture
(`one_hot_factor` epsilon on it, (1 - epsilon) / (|T| - 1) on every other
task), and the losses of all tasks are watched. From them A_t is estimated
and the rest of the round trains on

  p_t  proportional to  p_{t-1} * exp(eta * A_t^T 1)

(exponentiated gradient; p_0 uniform), with A_t first shifted to be
non-negative and scaled to sum 1 (`normalize`, the official code's
`aioli_normalize_A`, which its README says to always set). The probe steps
are ordinary training steps of the run: a round of `round_steps` steps
includes its `probe_sweeps x |T| x probe_steps` probe steps.

How A_t is estimated here, and how it differs from the paper:
* The paper measures each task's validation loss at the ends of the probe
  intervals and divides the differences by the smoothed one-hot matrix.
  The training loop runs no validation inside pretraining, so here the
  signal is each step's per-task training loss (computed before the step's
  update: the model after all earlier steps, on examples the model has
  seen at most in an earlier epoch). Every probe step's loss and the loss
  of the first step after the probe phase are fitted by least squares to
  L_i(s) = c_i - sum_j A[i, j] C_j(s), where C_j(s) is the share of task j
  summed over the probe steps before s (from the counts the batches really
  had, floors included). With one step per probe interval and one sweep this
  is the paper's estimate exactly; with more steps it uses every loss, not
  only those at the interval ends, which one step's noisy training loss needs.
* The official code can smooth A_t across rounds with an EMA and start
  from a prior mixture; neither is here (p_0 is uniform, no EMA).
* The trainer draws a batch before the losses of the two steps before it
  are applied (`dynpt.train.feedback`), so the first two steps after a probe
  phase still train on p_{t-1}.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dynpt.mixing import base
from dynpt.mixing import registry


def smoothed_one_hot(num_tasks: int, task: int, one_hot_factor: float) -> np.ndarray:
  """[num_tasks] mixture with `one_hot_factor` on `task`, the rest spread evenly."""
  if num_tasks == 1:
    return np.ones(1)
  p = np.full(num_tasks, (1.0 - one_hot_factor) / (num_tasks - 1))
  p[task] = one_hot_factor
  return p


def estimate_interactions(probe_loss: np.ndarray, probe_shares: np.ndarray) -> np.ndarray:
  """Least-squares A of the linear dynamic law from one probe phase.

  Args:
    probe_loss: [P + 1, T] loss of each task at each probe step and at the
      first step after them (NaN where a task had no loss).
    probe_shares: [P, T] the share of the batch each task had at each probe
      step (counts / B).

  Returns:
    [T, T] A with A[i, j] the drop of task i's loss per step of task j: the
    least-squares (minimum-norm) solution of L_i(s) = c_i - A[i] . C(s),
    C(s) the shares summed over the probe steps before s. A row with fewer
    than two losses is 0.
  """
  num_obs, num_tasks = probe_loss.shape
  cumulative = np.vstack([np.zeros((1, num_tasks)), np.cumsum(probe_shares, axis=0)])
  design = np.hstack([np.ones((num_obs, 1)), -cumulative])  # [P + 1, 1 + T]
  a = np.zeros((num_tasks, num_tasks))
  for i in range(num_tasks):
    rows = np.isfinite(probe_loss[:, i])
    if np.sum(rows) < 2:
      continue
    coef, *_ = np.linalg.lstsq(design[rows], probe_loss[rows, i], rcond=None)
    a[i] = coef[1:]
  return a


def aioli_weights(weights: np.ndarray, interactions: np.ndarray, eta: float,
                  normalize: bool) -> np.ndarray:
  """One Aioli update: normalise(weights * exp(eta * A^T 1)).

  Args:
    weights: [T] current mixture p_{t-1}, > 0, summing to 1.
    interactions: [T, T] the estimated A_t.
    eta: step size.
    normalize: shift A_t so its smallest entry is 0 (when it is negative)
      and scale it to sum 1 first (an A_t of all zeros stays zero).

  Returns:
    [T] float64 p_t summing to 1.
  """
  a = np.asarray(interactions, np.float64)
  if normalize:
    a = a - min(float(np.min(a)), 0.0)
    total = float(np.sum(a))
    a = a / total if total > 0 else np.zeros_like(a)
  log_w = np.log(weights) + eta * np.sum(a, axis=0)  # Log space: no overflow.
  w = np.exp(log_w - np.max(log_w))
  return w / np.sum(w)


@registry.register
class AioliSampler(base.Sampler):
  """Aioli's probe-then-mix rounds on the training loss ("aioli").

  Args:
    task_names: tasks in task-id order.
    global_batch_size: B.
    round_steps: steps per round, probe phase included (the official code's
      `update_steps`, 250 in its scripts).
    probe_steps: steps each task is probed per sweep (`lp_steps`, 4).
    probe_sweeps: sweeps over all tasks per probe phase (`lp_rounds`).
    one_hot_factor: epsilon, the probed task's share of a probe batch
      (1: only that task, beyond the floors).
    eta: step size of the exponentiated update.
    normalize: shift and scale A_t before the update (the official default).
    seed: seeds the probe order of each sweep.
    min_per_task: per-task floor, in probe batches too.
  """

  name = "aioli"

  def __init__(self, task_names: Sequence[str], global_batch_size: int, *,
               round_steps: int = 250, probe_steps: int = 4, probe_sweeps: int = 1,
               one_hot_factor: float = 0.5, eta: float = 0.2, normalize: bool = True,
               seed: int = 0, min_per_task: int = 4):
    super().__init__(task_names, global_batch_size, min_per_task=min_per_task)
    for key, value in (("round_steps", round_steps), ("probe_steps", probe_steps),
                       ("probe_sweeps", probe_sweeps)):
      if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{self.name} sampler: {key} must be a positive integer, "
                         f"got {value!r}")
    if not 0.0 < one_hot_factor <= 1.0:
      raise ValueError(f"{self.name} sampler: one_hot_factor must be in (0, 1], "
                       f"got {one_hot_factor!r}")
    if not np.isfinite(eta) or eta <= 0:
      raise ValueError(f"{self.name} sampler: eta must be > 0, got {eta!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
      raise ValueError(f"{self.name} sampler: seed must be a non-negative integer, "
                       f"got {seed!r}")
    n = self.num_tasks
    self.round_steps, self.probe_steps = int(round_steps), int(probe_steps)
    self.probe_sweeps, self.one_hot_factor = int(probe_sweeps), float(one_hot_factor)
    self.eta, self.normalize, self.seed = float(eta), bool(normalize), int(seed)
    self.probe_length = self.probe_sweeps * n * self.probe_steps
    if self.round_steps <= self.probe_length:
      raise ValueError(
          f"{self.name} sampler: round_steps={round_steps} leaves no step after the "
          f"probe phase of probe_sweeps x tasks x probe_steps = {self.probe_sweeps} x {n} "
          f"x {self.probe_steps} = {self.probe_length} steps; raise round_steps or "
          "lower probe_steps / probe_sweeps")
    self._state.update({
        "weights": np.full(n, 1.0 / n),                              # p_t
        "probe_loss": np.full((self.probe_length + 1, n), np.nan),  # this round's losses
        "probe_round": np.asarray(0, np.int64),     # the round `probe_loss` belongs to
        "fitted_round": np.asarray(-1, np.int64),   # the last round whose A_t was applied
        "interactions": np.full((n, n), np.nan),    # A_t of the last fitted round
    })

  # ---- Schedule (a pure function of the step) ----------------------------

  def probe_order(self, round_index: int, sweep: int) -> np.ndarray:
    """[num_tasks] the order tasks are probed in during one sweep of a round."""
    rng = np.random.default_rng([self.seed, int(round_index), int(sweep)])
    return rng.permutation(self.num_tasks)

  def probe_task(self, step: int) -> int:
    """The task probed at `step`, or -1 when `step` is after its round's probe phase."""
    offset = int(step) % self.round_steps
    if offset >= self.probe_length:
      return -1
    per_sweep = self.num_tasks * self.probe_steps
    order = self.probe_order(int(step) // self.round_steps, offset // per_sweep)
    return int(order[(offset % per_sweep) // self.probe_steps])

  def shares(self, step: int) -> np.ndarray:
    task = self.probe_task(step)
    if task >= 0:
      return smoothed_one_hot(self.num_tasks, task, self.one_hot_factor)
    return self._state["weights"].copy()

  def interactions(self) -> np.ndarray:
    """[T, T] the last estimated A_t (NaN before the first round's probe ends)."""
    return self._state["interactions"].copy()

  # ---- Learning -----------------------------------------------------------

  def _observe(self, step: int, loss: np.ndarray, valid: np.ndarray,
               counts: np.ndarray) -> None:
    del counts  # A probe step's counts are a function of the step (`_probe_shares`).
    st = self._state
    round_index, offset = divmod(step, self.round_steps)
    if round_index != int(st["probe_round"]):  # A new round: forget the last one's losses.
      st["probe_loss"] = np.full_like(st["probe_loss"], np.nan)
      st["probe_round"] = np.asarray(round_index, np.int64)
    if offset <= self.probe_length:
      st["probe_loss"][offset] = np.where(valid, loss, np.nan)
    if offset >= self.probe_length and int(st["fitted_round"]) < round_index:
      a = estimate_interactions(st["probe_loss"], self._probe_shares(round_index))
      st["weights"] = aioli_weights(st["weights"], a, self.eta, self.normalize)
      st["interactions"] = a
      st["fitted_round"] = np.asarray(round_index, np.int64)

  def _probe_shares(self, round_index: int) -> np.ndarray:
    """[P, T] each probe step's counts / B in round `round_index`."""
    first = round_index * self.round_steps
    return np.stack([self.counts(first + o) for o in range(self.probe_length)]
                    ).astype(np.float64) / self.global_batch_size
