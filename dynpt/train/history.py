"""`mixture_history.jsonl`: the sampler's shares, counts and losses per step.

One JSON object per line: {"step", "shares", "counts", "task_loss"}, each a
{task: value} map, so `tools/plot_mixture.py` can draw the paper's Figure 2
and anyone can analyse the mixture with a few lines of Python.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from dynpt.mixing import history as mixing_history


class MixtureHistory:
  """Appends one line per sampler update (chief host only)."""

  def __init__(self, path: str, task_names: Sequence[str], enabled: bool = True):
    self.path = path
    self.task_names = list(task_names)
    self.enabled = enabled
    self._file = None

  def truncate_after(self, step: int) -> None:
    """Drops lines for steps >= `step` (written after the checkpoint we resume
    from), so a resumed run's history has no duplicates."""
    if not self.enabled:
      return
    kept = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        for line in f:
          try:
            if json.loads(line)["step"] < step:
              kept.append(line if line.endswith("\n") else line + "\n")
          except (ValueError, KeyError, TypeError):
            continue  # A line cut by a kill mid-write.
    with open(self.path, "w") as f:
      f.writelines(kept)
    self._file = open(self.path, "a")

  def write(self, step: int, shares, counts, task_loss) -> None:
    if not self.enabled:
      return
    if self._file is None:
      self._file = open(self.path, "a")
    record = mixing_history.history_record(step, self.task_names, shares,
                                           counts, task_loss)
    self._file.write(json.dumps(record, allow_nan=False) + "\n")
    self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
