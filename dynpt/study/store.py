"""The study's files: per-cell markers and the merged `results.jsonl`.

Layout of a study directory:

  <out_dir>/cells/<cell>/done.json     the cell's rows and timing; written
                                       last and atomically: it exists only
                                       for a finished cell, which is then
                                       never run again
  <out_dir>/cells/<cell>/failed.json   why the last attempt failed (removed
                                       when the cell later succeeds)
  <out_dir>/cells/<cell>/stages/*.json one marker per finished stage, so a
                                       killed cell resumes after its last
                                       finished stage
  <out_dir>/results.jsonl              one row per (cell, downstream task)

Markers are written to a temporary file and renamed, so a reader never sees
half a file, whichever process or machine wrote it. `results.jsonl` is
appended as cells finish and rewritten from the done markers when the report
is made, so that shards run on several machines (their `cells/` copied or
shared) merge into one file with each row once.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterable

from absl import logging

from dynpt import fs

DONE = "done.json"
FAILED = "failed.json"
RESULTS = "results.jsonl"
# Keys every results.jsonl row has (docs/study.md explains each).
ROW_KEYS = ("cell", "sampler", "mixture", "seed", "init", "task", "metric", "value",
            "pretrain_loss", "pretrain_steps", "finetune_steps")


def local_folder(flag: str, path: str) -> str:
  """`path` made absolute; a bucket URL is refused (before anything is written).

  A study's workers (and the transfer check) share their folder through local file
  locks, atomic renames and an appended results file, which an object store does not
  offer: run in a local folder and copy the finished one to the bucket.

  Raises:
    ValueError: naming `flag`, for a `gs://` URL.
  """
  if fs.is_remote(path):
    raise ValueError(f"{flag}={path}: a study runs in a local folder, as does the transfer "
                     "check (their workers share local folders through file locks); copy "
                     "the finished folder to the bucket")
  return os.path.abspath(path)


def cell_dir(out_dir: str, cell_name: str) -> str:
  return os.path.join(out_dir, "cells", cell_name)


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes `obj` as JSON to `path` via a rename, so the file is whole or absent."""
  directory = os.path.dirname(path) or "."
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=1, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_json(path: str) -> Any | None:
  """The JSON in `path`, or None if absent; a damaged file is logged and treated as absent."""
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    logging.warning("ignoring unreadable study marker %s: %s", path, e)
    return None


def is_done(out_dir: str, cell_name: str) -> bool:
  return read_json(os.path.join(cell_dir(out_dir, cell_name), DONE)) is not None


def mark_done(out_dir: str, cell_name: str, record: dict[str, Any]) -> None:
  """Records a finished cell: its done marker, then its rows appended to results.jsonl."""
  directory = cell_dir(out_dir, cell_name)
  write_json_atomic(os.path.join(directory, DONE), record)
  failed = os.path.join(directory, FAILED)
  if os.path.exists(failed):
    os.remove(failed)
  append_rows(os.path.join(out_dir, RESULTS), record["rows"])


def mark_failed(out_dir: str, cell_name: str, record: dict[str, Any]) -> None:
  write_json_atomic(os.path.join(cell_dir(out_dir, cell_name), FAILED), record)


def append_rows(path: str, rows: Iterable[dict[str, Any]]) -> None:
  """Appends rows, each one `write` of a whole line (O_APPEND keeps lines whole)."""
  data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
  if not data:
    return
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    os.write(fd, data.encode())
  finally:
    os.close(fd)


def read_rows(path: str) -> list[dict[str, Any]]:
  """The rows of a jsonl file such as results.jsonl; [] if it does not exist."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _markers(out_dir: str, filename: str) -> dict[str, dict[str, Any]]:
  root = os.path.join(out_dir, "cells")
  if not os.path.isdir(root):
    return {}
  out = {}
  for name in sorted(os.listdir(root)):
    record = read_json(os.path.join(root, name, filename))
    if record is not None:
      out[name] = record
  return out


def done_cells(out_dir: str) -> dict[str, dict[str, Any]]:
  """Cell name -> done record of every finished cell under `out_dir`."""
  return _markers(out_dir, DONE)


def failed_cells(out_dir: str) -> dict[str, dict[str, Any]]:
  """Cell name -> failure record of every cell whose last attempt failed."""
  done = done_cells(out_dir)
  return {k: v for k, v in _markers(out_dir, FAILED).items() if k not in done}


def merge_results(out_dir: str) -> list[dict[str, Any]]:
  """Rewrites results.jsonl from the done markers (each row once); returns the rows."""
  rows = [row for record in done_cells(out_dir).values() for row in record["rows"]]
  rows.sort(key=lambda r: (r["cell"], r["task"]))
  path = os.path.join(out_dir, RESULTS)
  fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp-", suffix=".jsonl")
  with os.fdopen(fd, "w") as f:
    for row in rows:
      f.write(json.dumps(row, sort_keys=True) + "\n")
  os.replace(tmp, path)
  return rows
