"""Pure mixture math: difficulty shares and exact integer batch counts.

These two functions are the whole of the paper's rate update (Section 3.1,
Algorithm 1) once the per-task losses are known; every sampler in
`dynpt.mixing` is a thin stateful wrapper around them. They are pure numpy so
that every host, given the same globally reduced losses, computes bit-identical
counts without talking to the others.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _as_float_vector(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
  """Returns `values` as a 1-D float64 array, or raises naming `what`."""
  arr = np.asarray(values, dtype=np.float64)
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(f"{what} must be a non-empty 1-D array, got shape {arr.shape}")
  return arr


def check_losses(losses: Sequence[float] | np.ndarray, what: str = "losses") -> np.ndarray:
  """Validates per-task losses: finite and non-negative.

  Args:
    losses: one loss per task.
    what: name used in the error message (e.g. "task_loss at step 7").

  Returns:
    The losses as a float64 array.

  Raises:
    ValueError: naming the first bad task index and value.
  """
  arr = _as_float_vector(losses, what)
  bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0))
  if bad.size:
    i = int(bad[0])
    raise ValueError(f"{what}: task {i} has loss {float(arr[i])!r}; losses must be finite and >= 0")
  return arr


def difficulty_shares(accumulated_losses: Sequence[float] | np.ndarray,
                      temperature: float = 1.0,
                      normalize: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
  """Turns per-task difficulty (loss) into batch shares, S_t = L_t / sum_u L_u.

  The paper samples each task in proportion to its current loss, so harder
  tasks get more of the batch. Two generalisations the paper asks for:
  a temperature (S_t proportional to L_t^(1/temperature); 1 is the paper,
  large values flatten towards uniform, small values sharpen towards the
  hardest task), and a per-task normalisation for losses with different
  ranges (L_t is divided by a per-task reference scale before sharing).

  Args:
    accumulated_losses: [num_tasks] per-task loss over the window (a mean or
      a sum over the same number of steps; only ratios matter). Finite, >= 0.
    temperature: > 0.
    normalize: optional [num_tasks] positive reference scale per task (for
      example each task's loss in the first window, or a user-given range);
      None uses the raw losses, as in the paper.

  Returns:
    [num_tasks] float64 shares summing to 1. All-zero losses give uniform
    shares (no task is harder than another).

  Raises:
    ValueError: on a bad loss, temperature or scale, naming it.
  """
  losses = check_losses(accumulated_losses, "accumulated_losses")
  if not np.isfinite(temperature) or temperature <= 0:
    raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
  if normalize is not None:
    scale = _as_float_vector(normalize, "normalize")
    if scale.shape != losses.shape:
      raise ValueError(f"normalize has shape {scale.shape}, losses have {losses.shape}")
    if not np.all(np.isfinite(scale) & (scale > 0)):
      raise ValueError(f"normalize scales must be finite and > 0, got {scale.tolist()}")
    losses = losses / scale
  if not np.any(losses > 0):
    return np.full(losses.shape, 1.0 / losses.size)
  # Log space keeps L^(1/T) finite for small temperatures; log(0) = -inf -> 0.
  with np.errstate(divide="ignore"):
    log_l = np.log(losses)
  weights = np.exp((log_l - np.max(log_l)) / temperature)
  return weights / np.sum(weights)


def allocate_counts(shares: Sequence[float] | np.ndarray,
                    batch_size: int,
                    min_per_task: int = 4,
                    tie_break_offset: int = 0) -> np.ndarray:
  """Splits a global batch into exact per-task example counts.

  Task t gets about shares[t] * batch_size examples, but never fewer than
  `min_per_task` (the paper keeps 4 so every task's difficulty stays
  measurable). Tasks whose proportional count falls below the floor get the
  floor; the rest of the batch is split among the others in proportion to
  their shares, repeating until no one is below the floor. Largest-remainder
  rounding makes the counts sum exactly to `batch_size`.

  Args:
    shares: [num_tasks] non-negative weights (normalised here; need not sum
      to 1 exactly).
    batch_size: the global batch size B.
    min_per_task: per-task floor, >= 0; B must be >= min_per_task * num_tasks.
    tie_break_offset: rotates which task wins a tie in the rounding (samplers
      pass the step, so equal shares take turns at the leftover examples,
      round-robin, instead of always favouring task 0).

  Returns:
    [num_tasks] int64 counts summing to `batch_size`.

  Raises:
    ValueError: naming the bad shares, batch size or floor.
  """
  s = _as_float_vector(shares, "shares")
  if not np.all(np.isfinite(s) & (s >= 0)) or not np.sum(s) > 0:
    raise ValueError(f"shares must be finite, >= 0 and not all zero, got {s.tolist()}")
  if int(batch_size) != batch_size or batch_size <= 0:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
  if int(min_per_task) != min_per_task or min_per_task < 0:
    raise ValueError(f"min_per_task must be a non-negative integer, got {min_per_task!r}")
  batch_size, min_per_task, n = int(batch_size), int(min_per_task), s.size
  if batch_size < min_per_task * n:
    raise ValueError(
        f"batch_size {batch_size} is too small for min_per_task={min_per_task} x "
        f"{n} tasks (needs >= {min_per_task * n})")
  s = s / np.sum(s)

  floored = np.zeros(n, dtype=bool)
  while True:
    free = batch_size - min_per_task * int(np.sum(floored))
    ideal = np.zeros(n)
    open_share = np.sum(s[~floored])
    ideal[~floored] = free * s[~floored] / open_share
    newly = ~floored & (ideal < min_per_task)
    if not np.any(newly):
      break
    floored |= newly

  counts = np.where(floored, min_per_task, np.floor(ideal)).astype(np.int64)
  leftover = batch_size - int(np.sum(counts))
  if leftover:
    remainder = np.where(floored, -1.0, ideal - np.floor(ideal))  # [num_tasks]
    # Rank by remainder (desc), ties by position after rotating by the offset.
    rotated_pos = (np.arange(n) - int(tie_break_offset)) % n
    order = np.lexsort((rotated_pos, -remainder))
    counts[order[:leftover]] += 1
  return counts
