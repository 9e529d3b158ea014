"""Adaptive Data Optimization (Jiang et al., 2025): a power law per task, fitted online.

ADO models each task's training loss as a function of the examples of that
task seen so far, L_t(n) = eps_t + beta_t * n^(-alpha_t), refits the curves
every K steps, and samples each task in proportion to how fast its loss is
predicted to fall with more of its data:

  rate_t  = -dL_t/dn = alpha_t * beta_t * n_t^(-alpha_t - 1)
  rho_t   proportional to mu_t * h_t^s * rate_t     (mu: prior, h: credit)
  pi      = gamma2 * rho + (1 - gamma2) * pibar     (pibar: running mean of rho)
  pi      = (1 - |T| delta) * pi + delta            (the floor delta)
  h       = gamma1 * pi + (1 - gamma1) * h

every step once the first fit exists (the prior mu before). The credit term
h (a smoothed history of the policy) damps tasks that only seem to learn
fast because they were sampled a lot; s = 0 turns it off, leaving "prior
times predicted rate of loss decrease".

Differences from the paper's code: the curve is fitted by least squares in
log space with eps found by a grid plus golden-section search (deterministic,
no optimiser restarts), the floor mixes delta of uniform in (exact) instead of
clipping, and n_t counts the task's own examples (the official code advances
every sampled domain by the whole batch). The loss history kept for the fit
is bounded: one point per K-step window (the window's mean loss at the
examples seen then), at most `buffer_size` points; when full, every other
point is dropped and points are recorded half as often, so the buffer always
spans the whole run.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from dynpt.mixing import base
from dynpt.mixing import registry

_GRID = 64          # eps candidates in [0, min loss) before the refinement
_GOLDEN_STEPS = 45  # golden-section iterations: the bracket shrinks by 0.618^45 ~ 4e-10


def _fit_given_eps(log_n: np.ndarray, log_loss: np.ndarray, loss: np.ndarray,
                   eps: float) -> tuple[float, float, float]:
  """Least squares of log(L - eps) on log n; returns (beta, alpha, log-space SSE)."""
  y = np.log(loss - eps)
  x_mean, y_mean = np.mean(log_n), np.mean(y)
  var = np.sum((log_n - x_mean) ** 2)
  slope = np.sum((log_n - x_mean) * (y - y_mean)) / var if var > 0 else 0.0
  alpha = max(-slope, 0.0)  # A loss that grows with data has no decrease to predict.
  log_beta = y_mean + alpha * x_mean
  pred = np.log(eps + np.exp(log_beta - alpha * log_n))
  return math.exp(log_beta), alpha, float(np.sum((log_loss - pred) ** 2))


def _grid_errors(log_n: np.ndarray, log_loss: np.ndarray, loss: np.ndarray,
                 eps: np.ndarray) -> np.ndarray:
  """`_fit_given_eps`'s SSE for every eps of a grid at once: [G] from [P] points."""
  y = np.log(loss[None, :] - eps[:, None])  # [G, P]
  x = log_n - np.mean(log_n)
  var = np.sum(x * x)
  slope = (y @ x) / var if var > 0 else np.zeros(len(eps))
  alpha = np.maximum(-slope, 0.0)
  log_beta = np.mean(y, axis=1) + alpha * np.mean(log_n)
  pred = np.log(eps[:, None] + np.exp(log_beta[:, None] - alpha[:, None] * log_n[None, :]))
  return np.sum((log_loss[None, :] - pred) ** 2, axis=1)


def fit_power_law(examples: Sequence[float] | np.ndarray,
                  losses: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
  """Fits L(n) = eps + beta * n^(-alpha) in log space.

  eps is searched in [0, min(losses)): a grid, then golden-section search
  around the best grid point; for each eps, log(L - eps) = log beta -
  alpha log n is a linear least-squares problem. alpha is clamped at 0 (no
  predicted decrease) for losses that do not fall.

  Args:
    examples: [P] examples seen, > 0, at least two distinct values.
    losses: [P] losses there, > 0.

  Returns:
    (eps, beta, alpha).

  Raises:
    ValueError: on fewer than 3 points or non-positive or non-finite values.
  """
  n = np.asarray(examples, np.float64)
  loss = np.asarray(losses, np.float64)
  if n.shape != loss.shape or n.ndim != 1 or n.size < 3:
    raise ValueError(f"fit_power_law needs >= 3 (examples, loss) points, got shapes "
                     f"{n.shape} and {loss.shape}")
  if not (np.all(np.isfinite(n) & (n > 0)) and np.all(np.isfinite(loss) & (loss > 0))):
    raise ValueError("fit_power_law: examples and losses must be finite and > 0")
  log_n, log_loss, top = np.log(n), np.log(loss), float(np.min(loss))
  sse = lambda q: _fit_given_eps(log_n, log_loss, loss, q * top)[2]
  grid = np.arange(_GRID) / _GRID  # q = eps / min(loss) in [0, 1).
  errors = _grid_errors(log_n, log_loss, loss, grid * top)
  j = int(np.argmin(errors))
  lo, hi = grid[max(j - 1, 0)], (grid[j + 1] if j + 1 < _GRID else 1.0 - 1e-9)
  ratio = (math.sqrt(5.0) - 1.0) / 2.0
  a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
  fa, fb = sse(a), sse(b)
  for _ in range(_GOLDEN_STEPS):
    if fa <= fb:
      hi, b, fb = b, a, fa
      a = hi - ratio * (hi - lo)
      fa = sse(a)
    else:
      lo, a, fa = a, b, fb
      b = lo + ratio * (hi - lo)
      fb = sse(b)
  best_q = min((errors[j], grid[j]), (fa, a), (fb, b))[1]
  beta, alpha, _ = _fit_given_eps(log_n, log_loss, loss, best_q * top)
  return best_q * top, beta, alpha


def loss_decrease_rate(params: np.ndarray, examples: np.ndarray) -> np.ndarray:
  """[num_tasks] -dL/dn = alpha * beta * n^(-alpha - 1) at n = max(examples, 1).

  Args:
    params: [num_tasks, 3] (eps, beta, alpha) per task.
    examples: [num_tasks] examples seen per task.
  """
  beta, alpha = params[:, 1], params[:, 2]
  return alpha * beta * np.maximum(examples, 1.0) ** (-alpha - 1.0)


def ado_policy_step(pi_bar: np.ndarray, credit: np.ndarray, prior: np.ndarray,
                    rate: np.ndarray, updates: int, *, gamma1: float, gamma2: float,
                    credit_power: float, delta: float):
  """One ADO policy update (pure).

  Args:
    pi_bar: [num_tasks] running mean of rho over the previous updates.
    credit: [num_tasks] h, the smoothed history of the policy.
    prior: [num_tasks] mu, summing to 1.
    rate: [num_tasks] predicted loss decrease per example, >= 0.
    updates: policy updates before this one (0 for the first).
    gamma1, gamma2, credit_power, delta: see `AdoSampler`.

  Returns:
    (pi, pi_bar, credit) after the update; pi sums to 1, each entry >= delta.
  """
  raw = prior * credit ** credit_power * rate
  rho = raw / np.sum(raw) if np.sum(raw) > 0 else prior.copy()
  pi = gamma2 * rho + (1.0 - gamma2) * pi_bar
  pi = pi / np.sum(pi)
  pi = (1.0 - delta * pi.size) * pi + delta
  credit = gamma1 * pi + (1.0 - gamma1) * credit
  weight = 1.0 / (updates + 2.0)  # pi_bar starts as the prior, one "update" of weight 1.
  pi_bar = weight * rho + (1.0 - weight) * pi_bar
  return pi, pi_bar, credit


@registry.register
class AdoSampler(base.Sampler):
  """Jiang et al.'s Adaptive Data Optimization ("ado").

  Args:
    task_names: tasks in task-id order.
    global_batch_size: B.
    window: K, steps per loss point; the curves are refitted every K steps.
    ignore_windows: leading windows not used for fitting (early losses do
      not follow a power law yet).
    buffer_size: most loss points kept per task (>= 4, even).
    prior: mu, per-task prior weights (sequence or name -> weight); uniform
      by default.
    gamma1: smoothing of the credit h (0.1).
    gamma2: weight of the new preference rho in the policy (0.1).
    credit_power: s, the exponent of h (0.5; 0 disables credit assignment).
    delta: the share floor, each task gets at least delta of pi (< 1/|T|).
    min_per_task: per-task floor in examples.
  """

  name = "ado"

  def __init__(self, task_names: Sequence[str], global_batch_size: int, *,
               window: int = 100, ignore_windows: int = 1, buffer_size: int = 32,
               prior: Sequence[float] | Mapping[str, float] | None = None,
               gamma1: float = 0.1, gamma2: float = 0.1, credit_power: float = 0.5,
               delta: float = 0.01, min_per_task: int = 4):
    super().__init__(task_names, global_batch_size, min_per_task=min_per_task)
    n = self.num_tasks
    for key, value, ok in (("window", window, int(window) == window and window >= 1),
                           ("ignore_windows", ignore_windows,
                            int(ignore_windows) == ignore_windows and ignore_windows >= 0),
                           ("buffer_size", buffer_size, int(buffer_size) == buffer_size
                            and buffer_size >= 4 and buffer_size % 2 == 0),
                           ("gamma1", gamma1, 0.0 < gamma1 <= 1.0),
                           ("gamma2", gamma2, 0.0 < gamma2 <= 1.0),
                           ("credit_power", credit_power, 0.0 <= credit_power < math.inf),
                           ("delta", delta, 0.0 <= delta < 1.0 / n)):
      if not ok:
        raise ValueError(f"{self.name} sampler: bad {key}={value!r} (see the AdoSampler "
                         "docstring for the allowed range)")
    mu = np.full(n, 1.0 / n) if prior is None else self._per_task(prior, "prior")
    if not np.all(np.isfinite(mu) & (mu > 0)):
      raise ValueError(f"{self.name} sampler: prior weights must be finite and > 0, "
                       f"got {mu.tolist()}")
    self.prior = mu / np.sum(mu)
    self.window, self.ignore_windows = int(window), int(ignore_windows)
    self.buffer_size = int(buffer_size)
    self.gamma1, self.gamma2 = float(gamma1), float(gamma2)
    self.credit_power, self.delta = float(credit_power), float(delta)
    m = self.buffer_size
    self._state.update({
        "examples_seen": np.zeros(n, np.float64),        # n_t
        "loss_sum": np.zeros(n, np.float64),             # this window
        "loss_steps": np.zeros(n, np.int64),
        "window_steps": np.asarray(0, np.int64),
        "num_windows": np.asarray(0, np.int64),          # windows closed
        "point_examples": np.full((n, m), np.nan),       # fit points (NaN = none)
        "point_loss": np.full((n, m), np.nan),
        "num_points": np.asarray(0, np.int64),           # columns used
        "point_stride": np.asarray(1, np.int64),         # record every stride-th window
        "params": np.full((n, 3), np.nan),               # (eps, beta, alpha); NaN = unfitted
        "pi": self.prior.copy(),
        "pi_bar": self.prior.copy(),
        "credit": self.prior.copy(),
        "policy_updates": np.asarray(0, np.int64),
    })

  def shares(self, step: int) -> np.ndarray:
    del step  # The policy changes only inside `update`.
    return self._state["pi"].copy()

  def fitted_params(self) -> dict[str, tuple[float, float, float] | None]:
    """Task name -> the fitted (eps, beta, alpha), None before its first fit."""
    return {t: (None if np.isnan(p[0]) else tuple(float(x) for x in p))
            for t, p in zip(self.task_names, self._state["params"])}

  def _observe(self, step: int, loss: np.ndarray, valid: np.ndarray,
               counts: np.ndarray) -> None:
    del step
    st = self._state
    st["examples_seen"] = st["examples_seen"] + counts
    st["loss_sum"] = st["loss_sum"] + np.where(valid, loss, 0.0)
    st["loss_steps"] = st["loss_steps"] + valid.astype(np.int64)
    st["window_steps"] = np.asarray(int(st["window_steps"]) + 1, np.int64)
    if int(st["window_steps"]) == self.window:
      self._close_window()
    if np.any(~np.isnan(st["params"][:, 0])):
      self._policy_step()

  def _close_window(self) -> None:
    st = self._state
    index = int(st["num_windows"]) - self.ignore_windows  # this window's index after the ignored
    seen = st["loss_steps"] > 0
    mean = np.where(seen, st["loss_sum"] / np.maximum(st["loss_steps"], 1), np.nan)
    st["num_windows"] = np.asarray(int(st["num_windows"]) + 1, np.int64)
    st["loss_sum"] = np.zeros_like(st["loss_sum"])
    st["loss_steps"] = np.zeros_like(st["loss_steps"])
    st["window_steps"] = np.asarray(0, np.int64)
    if index < 0 or index % int(st["point_stride"]) != 0:
      return
    if int(st["num_points"]) == self.buffer_size:  # Full: keep every other point.
      for key in ("point_examples", "point_loss"):
        kept = st[key][:, ::2]
        st[key] = np.concatenate([kept, np.full_like(kept, np.nan)], axis=1)
      st["num_points"] = np.asarray(self.buffer_size // 2, np.int64)
      st["point_stride"] = np.asarray(2 * int(st["point_stride"]), np.int64)
      if index % int(st["point_stride"]) != 0:
        return
    col = int(st["num_points"])
    ok = seen & (mean > 0)
    st["point_examples"][:, col] = np.where(ok, st["examples_seen"], np.nan)
    st["point_loss"][:, col] = np.where(ok, mean, np.nan)
    st["num_points"] = np.asarray(col + 1, np.int64)
    self._refit()

  def _refit(self) -> None:
    st = self._state
    params = st["params"].copy()
    for t in range(self.num_tasks):
      keep = ~np.isnan(st["point_loss"][t])
      n, loss = st["point_examples"][t, keep], st["point_loss"][t, keep]
      if n.size >= 3 and np.unique(n).size >= 2:
        params[t] = fit_power_law(n, loss)
    st["params"] = params

  def _policy_step(self) -> None:
    st = self._state
    params = st["params"]
    rate = loss_decrease_rate(np.nan_to_num(params), st["examples_seen"])
    unfitted = np.isnan(params[:, 0])
    if np.any(unfitted):  # Optimism for tasks without a curve yet: the fastest known rate.
      rate = np.where(unfitted, np.max(rate[~unfitted]), rate)
    pi, pi_bar, credit = ado_policy_step(
        st["pi_bar"], st["credit"], self.prior, rate, int(st["policy_updates"]),
        gamma1=self.gamma1, gamma2=self.gamma2, credit_power=self.credit_power,
        delta=self.delta)
    st["pi"], st["pi_bar"], st["credit"] = pi, pi_bar, credit
    st["policy_updates"] = np.asarray(int(st["policy_updates"]) + 1, np.int64)
