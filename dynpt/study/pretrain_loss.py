"""The pretraining loss of a run, as the paper's Figure 1 measures it: on training batches.

Read from the run's `mixture_history.jsonl`, which records every task's mean
token loss on each step's training batch (unsmoothed cross-entropy), so no
extra evaluation runs. Each task's loss is averaged over the last fraction of
the steps, weighted by its examples in each step (a step without the task
counts nothing); the run's loss is the plain mean over the mixture's tasks,
so a sampler that starves a task is not rewarded for skipping it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence


def training_loss(records: Sequence[Mapping[str, Any]], fraction: float = 0.1) -> tuple[
    float, dict[str, float]]:
  """(mean over tasks, per-task loss) over the last `fraction` of the records.

  Args:
    records: history records (`dynpt.mixing.history.read_history`), in step order.
    fraction: in (0, 1]; at least one record is used.

  Raises:
    ValueError: if no record is given, or a task has no loss in the whole
      history.
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"fraction={fraction}: must be in (0, 1]")
  if not records:
    raise ValueError("no mixture history records: the run trained no step")
  tail = records[-max(1, math.ceil(fraction * len(records))):]
  tasks = list(dict.fromkeys(t for r in records for t in r.get("task_loss", {})))
  per_task = {}
  for task in tasks:
    total = weight = 0.0
    for r in tail:
      loss = r["task_loss"].get(task)
      count = float((r.get("counts") or {}).get(task, 1.0))
      if loss is not None and math.isfinite(loss) and count > 0:
        total, weight = total + count * loss, weight + count
    if weight == 0:  # Starved over the tail: its last recorded loss.
      known = [r["task_loss"][task] for r in records
               if r["task_loss"].get(task) is not None and math.isfinite(r["task_loss"][task])]
      if not known:
        raise ValueError(f"task {task!r} has no recorded training loss")
      per_task[task] = float(known[-1])
    else:
      per_task[task] = total / weight
  if not per_task:
    raise ValueError("the mixture history records no task loss")
  return sum(per_task.values()) / len(per_task), per_task
