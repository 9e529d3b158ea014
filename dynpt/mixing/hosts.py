"""Which rows of the global, task-ordered batch each host fills.

The global batch of B rows is ordered by task: task 0's counts[0] examples,
then task 1's, and so on. Host h owns global rows [h * B/H, (h + 1) * B/H), the
rows its devices hold under the data-parallel sharding. Every host computes the
same `counts` (from globally reduced losses), so these pure functions give
each host its share of every task without any communication, and the hosts'
shares tile the global batch exactly.

Example, counts = [3, 5], 2 hosts (B = 8, 4 rows each)::

  rows:    0 1 2 | 3 4 5 6 7
  task:    0 0 0 | 1 1 1 1 1
  host 0 takes task 0 examples [0, 3) and task 1 examples [0, 1)
  host 1 takes task 0 examples [3, 3) and task 1 examples [1, 5)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _check(counts: Sequence[int] | np.ndarray, num_hosts: int) -> tuple[np.ndarray, int]:
  """Validates counts and host count; returns (counts int64, rows per host)."""
  c = np.asarray(counts)
  if c.ndim != 1 or c.size == 0 or c.dtype.kind not in "iu" or np.any(c < 0):
    raise ValueError(f"counts must be a non-empty 1-D array of non-negative ints, got {c!r}")
  if int(num_hosts) != num_hosts or num_hosts < 1:
    raise ValueError(f"num_hosts must be a positive integer, got {num_hosts!r}")
  total = int(np.sum(c))
  if total % int(num_hosts):
    raise ValueError(f"global batch size {total} (sum of counts) is not divisible by "
                     f"num_hosts={num_hosts}")
  return c.astype(np.int64), total // int(num_hosts)


def task_row_ranges(counts: Sequence[int] | np.ndarray) -> np.ndarray:
  """[num_tasks, 2] global [start, stop) rows of each task in the task-ordered batch."""
  c, _ = _check(counts, 1)
  stops = np.cumsum(c)
  return np.stack([stops - c, stops], axis=1)


def host_counts(counts: Sequence[int] | np.ndarray, num_hosts: int) -> np.ndarray:
  """[num_hosts, num_tasks] examples of each task that each host fills.

  Each row sums to B / num_hosts and the columns sum to `counts`.

  Raises:
    ValueError: if B is not divisible by num_hosts, or counts are bad.
  """
  c, per_host = _check(counts, num_hosts)
  ranges = task_row_ranges(c)                                  # [tasks, 2]
  host_start = np.arange(int(num_hosts))[:, None] * per_host   # [hosts, 1]
  lo = np.maximum(ranges[None, :, 0], host_start)              # [hosts, tasks]
  hi = np.minimum(ranges[None, :, 1], host_start + per_host)   # [hosts, tasks]
  return np.maximum(hi - lo, 0)


def host_slices(counts: Sequence[int] | np.ndarray, num_hosts: int,
                host_index: int) -> np.ndarray:
  """[num_tasks, 2] task-local [start, stop) of the examples this host takes.

  Index k of task t is the task's k-th example in this step (global row
  `task_row_ranges(counts)[t, 0] + k`). A task this host takes nothing of gets
  an empty range (start == stop). Lengths equal `host_counts(...)[host_index]`.

  Raises:
    ValueError: on bad counts, host count, or host_index out of range.
  """
  c, per_host = _check(counts, num_hosts)
  if int(host_index) != host_index or not 0 <= host_index < num_hosts:
    raise ValueError(f"host_index must be in [0, {num_hosts}), got {host_index!r}")
  ranges = task_row_ranges(c)
  row_lo, row_hi = int(host_index) * per_host, (int(host_index) + 1) * per_host
  lo = np.clip(row_lo, ranges[:, 0], ranges[:, 1])
  hi = np.clip(row_hi, ranges[:, 0], ranges[:, 1])
  return np.stack([lo - ranges[:, 0], hi - ranges[:, 0]], axis=1)


def host_task_ids(counts: Sequence[int] | np.ndarray, num_hosts: int,
                  host_index: int) -> np.ndarray:
  """[B / num_hosts] int32 `task_id` of each of this host's rows, in row order."""
  sl = host_slices(counts, num_hosts, host_index)
  return np.repeat(np.arange(sl.shape[0], dtype=np.int32), sl[:, 1] - sl[:, 0])
