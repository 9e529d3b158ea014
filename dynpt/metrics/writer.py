"""Writes evaluation results (one JSON per task) and predictions (JSON lines).

Results go to ``<out_dir>/<task_name>.json`` and predictions to
``<out_dir>/<task_name>.predictions.jsonl``, so a run directory keeps what was
measured and what it was measured on, and a later script can rescore the
predictions with another metric. Paths go through `etils.epath`, so ``out_dir``
may be a local folder or a ``gs://`` bucket (the latter needs TensorFlow or gcsfs).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from absl import logging
from etils import epath


def _to_jsonable(value: Any) -> Any:
  """Plain JSON types for what eval code hands over: numpy values, bytes, tuples."""
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray):
    return _to_jsonable(value.tolist())
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, Mapping):
    return {str(k): _to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_jsonable(v) for v in value]
  return value


def _check_task_name(task_name: str) -> None:
  if not task_name or "/" in task_name or task_name.startswith("."):
    raise ValueError(f"task_name must be a plain file name, got {task_name!r}")


def format_table(results: Mapping[str, Mapping[str, float]]) -> str:
  """A fixed-width table with one row per (task, metric), for the console and logs."""
  rows = [(task, metric, f"{float(value):.4f}")
          for task, metrics in results.items() for metric, value in metrics.items()]
  headers = ("task", "metric", "value")
  widths = [max(len(r[c]) for r in [headers, *rows]) for c in range(3)]
  lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
           "  ".join("-" * w for w in widths)]
  lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
  return "\n".join(lines)


def write_results(results: Mapping[str, float], out_dir: str | epath.PathLike,
                  task_name: str) -> epath.Path:
  """Writes one task's metrics to ``<out_dir>/<task_name>.json``, prints them as a table.

  Args:
    results: metric name -> value (e.g. the output of a ``*_metric_fn``).
    out_dir: folder to write into (created if needed); local or ``gs://``.
    task_name: the seqio task name, used as the file name.

  Returns:
    The path written.
  """
  _check_task_name(task_name)
  path = epath.Path(out_dir) / f"{task_name}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  payload = {"task": task_name, "metrics": _to_jsonable(dict(results))}
  path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
  print(format_table({task_name: results}), flush=True)
  logging.info("Wrote results of %s to %s", task_name, path)
  return path


def dump_predictions(out_dir: str | epath.PathLike, task_name: str,
                     predictions: Sequence[Any], targets: Sequence[Any] | None = None,
                     inputs: Sequence[Any] | None = None,
                     extra: Iterable[Mapping[str, Any]] | None = None) -> epath.Path:
  """Writes ``<out_dir>/<task_name>.predictions.jsonl``, one JSON object per example.

  Each line holds ``index`` and ``prediction``, plus ``target``, ``input`` and any
  per-example ``extra`` fields (e.g. the image id) when given.

  Returns:
    The path written.
  """
  _check_task_name(task_name)
  columns = {"target": targets, "input": inputs}
  for name, column in columns.items():
    if column is not None and len(column) != len(predictions):
      raise ValueError(f"dump_predictions({task_name}): {len(column)} {name}s for "
                       f"{len(predictions)} predictions")
  extras = list(extra) if extra is not None else None
  if extras is not None and len(extras) != len(predictions):
    raise ValueError(f"dump_predictions({task_name}): {len(extras)} extra records for "
                     f"{len(predictions)} predictions")
  lines = []
  for i, pred in enumerate(predictions):
    record: dict[str, Any] = {"index": i, "prediction": pred}
    for name, column in columns.items():
      if column is not None:
        record[name] = column[i]
    if extras is not None:
      record.update(extras[i])
    lines.append(json.dumps(_to_jsonable(record), sort_keys=True))
  path = epath.Path(out_dir) / f"{task_name}.predictions.jsonl"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + ("\n" if lines else ""))
  logging.info("Wrote %d predictions of %s to %s", len(lines), task_name, path)
  return path
