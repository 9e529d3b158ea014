"""Online Data Mixing (Albalak et al., 2023): an EXP3 bandit over tasks.

Each task is an arm, and its reward is its training loss (a task the model
still gets wrong is worth more data). At round t (t = 1, 2, ...):

  eps_t  = min(1/|T|, sqrt(ln|T| / (|T| t)))          (eps_0 = 1/|T|)
  pi_t   = (1 - |T| eps_t) softmax(eps_{t-1} R) + eps_t
  draw a task from pi_t, train on it, observe its loss L
  R_i   <- a R_i + (1 - a) L / pi_t(i)   for the drawn task i only

The importance weight 1/pi (EXP3's) raises the reward of an arm that is
rarely drawn, so a task that looked easy early is not starved; the moving
average `a` (`reward_decay`) lets the estimate follow a loss that falls during
training; the exploration rate eps decays as in the paper, and every task
keeps at least eps_t of the draws.

Mapping to a fixed global batch B with a per-task floor m: every task gets m
examples (so every loss stays measured, as in the paper's dynamic sampler),
and the remaining F = B - m|T| rows are F independent EXP3 draws from pi_t,
i.e. a multinomial. The draw comes from a generator seeded with (seed, step),
so counts are a pure function of (state, step), identical on every host and
after a resume. Every task that won at least one draw gets the paper's
update with its step loss, L_i / pi_i; tasks not drawn keep their R (their
floor rows still train, but they were not the bandit's choice). With F = 1
this is the paper's bandit exactly; with F > 1 a task is chosen with
probability 1 - (1 - pi_i)^F > pi_i, so 1/pi favours rarely drawn tasks more
than in the single-draw bandit and the mixture stays closer to uniform.
Rounds are steps: the paper updates every step and has no K-step refresh.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dynpt.mixing import base
from dynpt.mixing import registry


def exploration_rate(num_tasks: int, t: int) -> float:
  """eps_t = min(1/K, sqrt(ln K / (K t))), with eps_0 = 1/K."""
  k = int(num_tasks)
  if t <= 0:
    return 1.0 / k
  return min(1.0 / k, math.sqrt(math.log(k) / (k * t)))


def odm_probabilities(reward: np.ndarray, t: int) -> np.ndarray:
  """pi_t = (1 - K eps_t) softmax(eps_{t-1} R) + eps_t for round t >= 1.

  Args:
    reward: [num_tasks] estimated rewards R.
    t: the round (1 for the first step).

  Returns:
    [num_tasks] float64 probabilities summing to 1, each >= eps_t.
  """
  k = reward.size
  eps, eps_prev = exploration_rate(k, t), exploration_rate(k, t - 1)
  z = eps_prev * np.asarray(reward, np.float64)
  w = np.exp(z - np.max(z))
  return (1.0 - k * eps) * w / np.sum(w) + eps


def odm_rewards(reward: np.ndarray, loss: np.ndarray, drawn: np.ndarray,
                probabilities: np.ndarray, decay: float) -> np.ndarray:
  """The reward update of one step: R_i <- a R_i + (1 - a) L_i / pi_i if i was drawn.

  Args:
    reward: [num_tasks] R before the step.
    loss: [num_tasks] mean loss per task this step (any value where drawn is 0).
    drawn: [num_tasks] EXP3 draws each task won this step (beyond the floor).
    probabilities: [num_tasks] pi_t the draws were made with.
    decay: the moving-average factor a in [0, 1).

  Returns:
    [num_tasks] R after the step; unchanged for tasks with no draw.
  """
  chosen = np.asarray(drawn) > 0
  estimate = np.where(chosen, loss, 0.0) / probabilities
  return np.where(chosen, decay * reward + (1.0 - decay) * estimate, reward)


@registry.register
class OnlineDataMixingSampler(base.Sampler):
  """Albalak et al.'s EXP3 online data mixing ("odm").

  Args:
    task_names: tasks in task-id order.
    global_batch_size: B.
    reward_decay: a, the moving average of the reward estimate (0.9).
    seed: seeds the per-step draws (combined with the step).
    min_per_task: per-task floor; the rest of the batch is drawn from pi.
  """

  name = "odm"

  def __init__(self, task_names: Sequence[str], global_batch_size: int, *,
               reward_decay: float = 0.9, seed: int = 0, min_per_task: int = 4):
    super().__init__(task_names, global_batch_size, min_per_task=min_per_task)
    if not 0.0 <= reward_decay < 1.0:
      raise ValueError(f"{self.name} sampler: reward_decay must be in [0, 1), "
                       f"got {reward_decay!r}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
      raise ValueError(f"{self.name} sampler: seed must be a non-negative integer, got {seed!r}")
    self.reward_decay = float(reward_decay)
    self._state.update({
        "reward": np.zeros(self.num_tasks, np.float64),  # R, the estimated rewards
        "rounds": np.asarray(0, np.int64),               # updates applied (t - 1)
        "seed": np.asarray(int(seed), np.int64),
    })

  @property
  def free_rows(self) -> int:
    """Rows of the batch drawn by the bandit (the rest is the per-task floor)."""
    return self.global_batch_size - self.min_per_task * self.num_tasks

  def shares(self, step: int) -> np.ndarray:
    del step  # pi depends on the round, which only `update` advances.
    return odm_probabilities(self._state["reward"], int(self._state["rounds"]) + 1)

  def drawn(self, step: int) -> np.ndarray:
    """[num_tasks] int64 EXP3 draws each task wins at `step` (beyond the floor)."""
    rng = np.random.default_rng([int(self._state["seed"]), int(step)])
    return rng.multinomial(self.free_rows, self.shares(step)).astype(np.int64)

  def counts(self, step: int) -> np.ndarray:
    return self.min_per_task + self.drawn(step)

  def _observe(self, step: int, loss: np.ndarray, valid: np.ndarray,
               counts: np.ndarray) -> None:
    del valid  # A drawn task had examples, so it has a loss.
    drawn = np.maximum(counts - self.min_per_task, 0)  # The rows the bandit chose.
    st = self._state
    st["reward"] = odm_rewards(st["reward"], np.where(drawn > 0, loss, 0.0), drawn,
                               self.shares(step), self.reward_decay)
    st["rounds"] = np.asarray(int(st["rounds"]) + 1, np.int64)
