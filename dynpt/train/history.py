"""`mixture_history.jsonl`: the sampler's shares, counts and losses per step.

One JSON object per line: {"step", "shares", "counts", "task_loss"}, each a
{task: value} map, so `tools/plot_mixture.py` can draw the paper's Figure 2
and anyone can analyse the mixture with a few lines of Python.

In a bucket (no appends there) the lines go to a local copy of the file,
uploaded whole by `sync` (at each checkpoint) and `close` (`dynpt.fs.LocalMirror`):
a run that resumes from a checkpoint finds every line up to it.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from dynpt import fs
from dynpt.mixing import history as mixing_history


class MixtureHistory:
  """Appends one line per sampler update (chief host only)."""

  def __init__(self, path: str, task_names: Sequence[str], enabled: bool = True):
    self.path = path
    self.task_names = list(task_names)
    self.enabled = enabled
    self._file = None
    self._mirror = None
    self._local = path
    if enabled:
      self._mirror = fs.LocalMirror(fs.dirname(path) or ".", names=[fs.basename(path)])
      self._local = os.path.join(self._mirror.local, fs.basename(path))

  def truncate_after(self, step: int) -> None:
    """Drops lines for steps >= `step` (written after the checkpoint we resume
    from), so a resumed run's history has no duplicates."""
    if not self.enabled:
      return
    kept = []
    if os.path.exists(self._local):
      with open(self._local) as f:
        for line in f:
          try:
            if json.loads(line)["step"] < step:
              kept.append(line if line.endswith("\n") else line + "\n")
          except (ValueError, KeyError, TypeError):
            continue  # A line cut by a kill mid-write.
    with open(self._local, "w") as f:
      f.writelines(kept)
    self._file = open(self._local, "a")

  def write(self, step: int, shares, counts, task_loss) -> None:
    if not self.enabled:
      return
    if self._file is None:
      self._file = open(self._local, "a")
    record = mixing_history.history_record(step, self.task_names, shares,
                                           counts, task_loss)
    self._file.write(json.dumps(record, allow_nan=False) + "\n")
    self._file.flush()

  def sync(self) -> None:
    """Uploads the file when it lives in a bucket (a no-op on a local disk)."""
    if self._mirror is not None:
      if self._file is not None:
        self._file.flush()
      self._mirror.push()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._mirror is not None:
      self._mirror.close()
      self._mirror = None
