"""Finding and parsing raw annotation files: json, jsonl, csv/tsv and byte ranges of csv.

A missing file is a `FileNotFoundError` naming every candidate (before any work
starts); a row that is not UTF-8 or does not parse is `Skipped('malformed_row')`
naming `file:line` (or `file@byte`), and the rows after it are read as usual. Files
are read through `fs`, so they may be on `gs://`.
"""

from __future__ import annotations

import csv
import json
from typing import Any, Iterator, Sequence

from dynpt.converters import fs
from dynpt.converters.skips import Skipped


def find_file(raw_dir: str, candidates: Sequence[str], what: str) -> str:
  """Returns the first of `candidates` present under `raw_dir`.

  Raises:
    FileNotFoundError: naming `what` and every candidate, so users see what to fetch.
  """
  for name in candidates:
    path = fs.join(raw_dir, name)
    if fs.exists(path):
      return path
  raise FileNotFoundError(
      f"{what}: none of {list(candidates)} found in {raw_dir!r} (see docs/data_real.md)")


def find_files(raw_dir: str, patterns: Sequence[str], what: str) -> list[str]:
  """Returns the files of the first glob pattern that matches anything under `raw_dir`."""
  for pattern in patterns:
    paths = fs.glob(fs.join(raw_dir, pattern))
    if paths:
      return paths
  raise FileNotFoundError(
      f"{what}: none of {list(patterns)} found in {raw_dir!r} (see docs/data_real.md)")


def load_json(path: str) -> Any:
  """Loads a json file, naming it in the error if it does not parse."""
  with fs.open_file(path, "rb") as f:
    data = f.read()
  try:
    return json.loads(data.decode("utf-8"))
  except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError.
    raise ValueError(f"{path}: not valid json ({e})") from e


def _decode_line(raw: bytes, where: str) -> str | Skipped:
  """A line of a raw text file as text, or `Skipped` naming it if it is not UTF-8."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    return Skipped("malformed_row", f"{where}: not UTF-8 (byte {e.start})")


def iter_jsonl(path: str) -> Iterator[tuple[str, dict] | Skipped]:
  """Yields (`path:line`, object) of a jsonl file, or `Skipped` for a malformed line."""
  with fs.open_file(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      line = _decode_line(raw, f"{path}:{number}")
      if isinstance(line, Skipped):
        yield line
        continue
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except (ValueError, RecursionError):
        yield Skipped("malformed_row", f"{path}:{number}: not json")
        continue
      if isinstance(obj, dict):
        yield f"{path}:{number}", obj
      else:
        yield Skipped("malformed_row", f"{path}:{number}: not a json object")


def _has_undecodable(fields: list[str]) -> bool:
  return any("\udc80" <= c <= "\udcff" for field in fields for c in field)


def iter_csv(path: str, delimiter: str = ",") -> Iterator[tuple[int, list[str]] | Skipped]:
  """Yields (line number, fields) of a csv/tsv file (no quoting for tsv).

  A row holding bytes that are not UTF-8, or that the csv module cannot parse, is
  `Skipped('malformed_row')` naming `path:line`; the rows after it are read as usual.
  """
  with fs.open_file(path, "rb") as f:
    # Undecodable bytes become lone surrogates, found per row below.
    lines = (raw.decode("utf-8", "surrogateescape") for raw in f)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting)
    line = 1
    while True:
      try:
        fields = next(reader)
      except StopIteration:
        return
      except csv.Error as e:
        yield Skipped("malformed_row", f"{path}:{line}: {e}")
        line = reader.line_num + 1
        continue
      if _has_undecodable(fields):
        yield Skipped("malformed_row", f"{path}:{line}: not UTF-8")
      else:
        yield line, fields
      line = reader.line_num + 1


def csv_byte_ranges(path: str, chunk_bytes: int) -> list[tuple[str, int, int]]:
  """Splits a large line-oriented file into `(path, start, stop)` ranges for listing.

  Each range owns the lines that *start* in `[start, stop)` (see `iter_csv_range`), so
  the ranges cover every line exactly once without reading the file here.
  """
  total = fs.size(path)
  return [(path, start, min(start + chunk_bytes, total))
          for start in range(0, max(total, 1), chunk_bytes)]


def iter_csv_range(path: str, start: int,
                   stop: int) -> Iterator[tuple[str, list[str]] | Skipped]:
  """Yields (`path@byte: line`, fields) of the csv lines that start in `[start, stop)`.

  A line is named by its byte offset and its text (its number would need every line
  before it). Fields are parsed per line, so quoted fields must not hold newlines
  (true of the Open Images CSVs this is used for). A line that is not UTF-8 or not
  csv is `Skipped('malformed_row')` naming its byte offset.
  """
  with fs.open_file(path, "rb") as f:
    pos = start
    if start > 0:
      f.seek(start - 1)
      pos = start - 1 + len(f.readline())  # Skip the line that began before `start`.
    while pos < stop:
      raw = f.readline()
      if not raw:
        break
      offset = pos
      pos += len(raw)
      text = _decode_line(raw, f"{path}@{offset}")
      if isinstance(text, Skipped):
        yield text
        continue
      text = text.rstrip("\r\n")
      if text:
        try:
          fields = next(csv.reader([text]))
        except csv.Error as e:
          yield Skipped("malformed_row", f"{path}@{offset}: {e}")
          continue
        yield f"{path}@{offset}: {text[:200]}", fields
