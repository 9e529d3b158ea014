"""The mixture history file, `<run_dir>/mixture_history.jsonl`: its one home.

The file's name, its format, its writer (`MixtureHistory`, the trainer's) and
its reader (`read_history`: `tools/plot_mixture.py`, the study, DoReMi's
reference run) all live here. The trainer writes one line every
`TrainConfig.history_every` steps, so the mixture over time can be plotted
like the paper's Figure 2. Format, one JSON object per line::

  {"step": N, "shares": {task: share}, "counts": {task: n}, "task_loss": {task: L}}

A task with no loss that step (no examples) is written as null (read back as
NaN), keeping every line standard JSON.

In a bucket (no appends there) the lines go to a local copy of the file,
uploaded whole by `sync` (at each checkpoint) and `close` (`dynpt.fs.LocalMirror`):
a run that resumes from a checkpoint finds every line up to it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import numpy as np
from absl import logging

from dynpt import fs

HISTORY_FILENAME = "mixture_history.jsonl"
_KEYS = ("step", "shares", "counts", "task_loss")


def history_path(run_dir: str) -> str:
  """The history file of the run in `run_dir` (a local folder or a bucket)."""
  return fs.join(run_dir, HISTORY_FILENAME)


def history_record(step: int, task_names: Sequence[str], shares: np.ndarray,
                   counts: np.ndarray, task_loss: np.ndarray) -> dict[str, Any]:
  """Builds one JSON-ready history record (one line of the file)."""
  def _num(x: float) -> float | None:
    return None if math.isnan(float(x)) else float(x)
  names = list(task_names)
  return {
      "step": int(step),
      "shares": {t: float(s) for t, s in zip(names, shares)},
      "counts": {t: int(n) for t, n in zip(names, counts)},
      "task_loss": {t: _num(v) for t, v in zip(names, task_loss)},
  }


class MixtureHistory:
  """Writes the history file, one line per `write` (the chief host only).

  Args:
    path: the file (`history_path(run_dir)`), local or in a bucket.
    task_names: the mixture's tasks, in `task_id` order.
    enabled: False on every process but the chief: nothing is written.
  """

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
    """Appends the line of step `step` (`history_record`)."""
    if not self.enabled:
      return
    if self._file is None:
      self._file = open(self._local, "a")
    record = history_record(step, self.task_names, shares, counts, task_loss)
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


def _valid(record: Any) -> bool:
  if not isinstance(record, dict) or any(k not in record for k in _KEYS):
    return False
  if not isinstance(record["step"], int) or isinstance(record["step"], bool):
    return False
  if not all(isinstance(record[k], dict) for k in _KEYS[1:]):
    return False
  return all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
             for v in record["task_loss"].values())


def read_history(path: str) -> tuple[list[dict[str, Any]], int]:
  """Reads a history file, skipping corrupt lines.

  Returns:
    (records sorted by step, number of corrupt lines skipped). Null losses
    are returned as NaN.

  Raises:
    ValueError: naming the file if it is missing, empty, or has no valid line.
  """
  if not fs.isfile(path):
    raise ValueError(f"mixture history file {path} does not exist (the trainer writes it "
                     "during training)")
  records, skipped, lines = [], 0, 0
  with fs.open(path) as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      lines += 1
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        record = None
      if not _valid(record):
        skipped += 1
        logging.warning("%s:%d: skipping corrupt mixture history line", path, lineno)
        continue
      record["task_loss"] = {t: (np.nan if v is None else float(v))
                             for t, v in record["task_loss"].items()}
      records.append(record)
  if lines == 0:
    raise ValueError(f"mixture history file {path} is empty")
  if not records:
    raise ValueError(f"mixture history file {path} has no valid line ({skipped} corrupt)")
  if skipped:
    logging.warning("%s: skipped %d corrupt line(s) of %d", path, skipped, lines)
  records.sort(key=lambda r: r["step"])
  return records, skipped
