"""The mixture history file: one JSON object per sampler update.

The trainer appends a record to `<run_dir>/mixture_history.jsonl` after every
`sampler.update`, so the mixture over time can be plotted like the paper's
Figure 2 (`tools/plot_mixture.py`). Format, one line per update::

  {"step": N, "shares": {task: share}, "counts": {task: n}, "task_loss": {task: L}}

A task with no loss that step (no examples) is written as null (read back as
NaN), keeping every line standard JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np
from absl import logging

from dynpt import fs

HISTORY_FILENAME = "mixture_history.jsonl"
_KEYS = ("step", "shares", "counts", "task_loss")


def history_record(step: int, task_names: Sequence[str], shares: np.ndarray,
                   counts: np.ndarray, task_loss: np.ndarray) -> dict[str, Any]:
  """Builds one JSON-ready history record (the trainer writes one per update)."""
  def _num(x: float) -> float | None:
    return None if math.isnan(float(x)) else float(x)
  names = list(task_names)
  return {
      "step": int(step),
      "shares": {t: float(s) for t, s in zip(names, shares)},
      "counts": {t: int(n) for t, n in zip(names, counts)},
      "task_loss": {t: _num(v) for t, v in zip(names, task_loss)},
  }


def append_record(path: str, record: dict[str, Any]) -> None:
  """Appends one record as a line (the file is created if missing; local files
  only: the trainer's history in a bucket goes through `dynpt.train.history`)."""
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(record, allow_nan=False) + "\n")


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
