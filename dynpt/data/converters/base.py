"""What every real-data converter shares: the converter interface and raw-file helpers.

A converter is split in three so that the engine (`engine.py`, an Apache Beam
pipeline) can list, shard, resume and parallelise any data set the same way:

* `list_units(split)` runs on the driver and returns a short list of picklable
  listing units (annotation files, tar files, synset folders, byte ranges of a large
  CSV). It only checks that the data set's files are there, so that a missing file
  is a one-line error before any work starts.
* `expand_unit(split, unit)` runs in parallel on the workers and yields the unit's
  items: small picklable dicts, one per output record, or `Skipped` for rows left
  out (a malformed row names its file and line). Converters whose items gather rows
  from several units (all captions of an image, all labels and boxes of an image)
  set `grouped = True`: `expand_unit` then yields `(group_key, part)` pairs and
  `combine_group(split, key, parts)` makes the item.
* `make_record(item)` reads the item's image(s) or video, checks that they decode
  and returns one schema record (a dict keyed by `dynpt.data.schema` feature names).
  Expected failures (missing or corrupt image, ...) raise `Skip(reason)`, which the
  engine records; anything else is a bug and propagates.

Image ids are written in a namespaced form, so that `clean_splits` can match images
shared between data sets (`coco:391895`, `oi:000a1249af2bc5f0`, `flickr:1000092795`,
`vg:2354786`); see `image_id`. Raw files are read through `fs`, so `raw_dir` may be
a `gs://` path.
"""

from __future__ import annotations

import abc
import csv
import dataclasses
import io
import json
import zlib
from typing import Any, Iterator, Sequence

from PIL import Image

from dynpt.data.converters import fs

# Namespaces whose ids are shared between data sets (normalised by `image_id`).
SHARED_NAMESPACES = ("coco", "oi", "flickr", "vg")
# Formats stored as they are; anything else PIL can read is re-encoded as JPEG.
PASSTHROUGH_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG"}


class Skip(Exception):
  """An input that is left out of the output, recorded under `reason`."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A listed row or file that is left out: why, and where (file, `file:line`, key)."""
  reason: str
  where: str


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
  """Where a converter finds its raw data and how it samples it.

  Attributes:
    raw_dir: folder holding the data set's published files (layout per converter in
      docs/data_real.md); a local path or a `gs://` URL.
    image_dir: folder of images, image tars, videos or video frame folders; default
      `<raw_dir>/<converter.default_image_subdir>`.
    num_frames: frames sampled uniformly from each video.
    holdout_every: for sources without an official validation split, about one item in
      `holdout_every` (chosen by a hash of its key) goes to `validation`.
  """
  raw_dir: str
  image_dir: str | None = None
  num_frames: int = 8
  holdout_every: int = 1000

  def __post_init__(self):
    if not self.raw_dir:
      raise ValueError("raw_dir: give the folder of the data set's raw files")
    for key in ("num_frames", "holdout_every"):
      if getattr(self, key) < 1:
        raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")


class Converter(abc.ABC):
  """Reads one data set's raw format and yields schema records (see module doc)."""

  name: str = ""
  splits: tuple[str, ...] = ()
  default_image_subdir: str = "images"
  grouped: bool = False
  # Label sources write the class names of their written records to `labels.txt`.
  writes_labels: bool = False

  def __init__(self, options: ConvertOptions):
    self.options = options
    self.raw_dir = options.raw_dir
    self.image_dir = options.image_dir or fs.join(
        options.raw_dir, self.default_image_subdir)

  def check_split(self, split: str) -> None:
    if split not in self.splits:
      raise ValueError(
          f"dataset {self.name!r} has no split {split!r}; choose from {self.splits}")

  def list_units(self, split: str) -> list[Any]:
    """Returns the split's listing units; by default one, `locate(split)`."""
    return [self.locate(split)]

  def locate(self, split: str) -> Any:
    """Finds the split's annotation files (raising if absent): the one listing unit."""
    raise NotImplementedError(f"{type(self).__name__} defines neither locate nor list_units")

  def expand_unit(self, split: str, unit: Any) -> Iterator[Any]:
    """Yields the items (or `(key, part)` pairs if `grouped`) and `Skipped` of a unit."""
    return self.list_items(split, unit)

  def list_items(self, split: str, unit: Any) -> Iterator[Any]:
    """Yields the items and `Skipped` rows of the single unit `locate(split)` found."""
    raise NotImplementedError(f"{type(self).__name__} defines neither list_items nor "
                              "expand_unit")

  def combine_group(self, split: str, key: str, parts: list[Any]) -> Any:
    """For `grouped` converters: the item (or `Skipped`, or None to drop) of a group."""
    raise NotImplementedError(f"{type(self).__name__} is not grouped")

  @abc.abstractmethod
  def make_record(self, item: Any) -> dict[str, Any]:
    """Returns one schema record for `item`; raises `Skip` for expected failures."""


# ---------------------------------------------------------------- ids and splits


def image_id(namespace: str, value: Any) -> str:
  """Returns the canonical `namespace:value` id of an image.

  Numeric namespaces (`coco`, `flickr`, `vg`) drop leading zeros so that
  `COCO_train2014_000000391895.jpg` and image_id 391895 agree; Open Images ids are
  lower-case hex.
  """
  value = str(value).strip()
  if namespace in ("coco", "flickr", "vg") and value.isdigit():
    value = str(int(value))
  elif namespace == "oi":
    value = value.lower()
  return f"{namespace}:{value}"


def holdout_split(key: str, holdout_every: int) -> str:
  """Assigns `key` to `validation` or `train` by a stable hash (no official split)."""
  return "validation" if zlib.crc32(key.encode("utf-8")) % holdout_every == 0 else "train"


# ------------------------------------------------------------------------- images


def check_image(data: bytes, where: str) -> tuple[bytes, int, int]:
  """Checks that `data` is a decodable image; returns (bytes to store, width, height).

  JPEG and PNG bytes are returned unchanged; other formats PIL reads (GIF, WebP, ...)
  are re-encoded as JPEG so that `tf.io.decode_image` reads every record. The
  image is fully decoded (at 1/8 scale for JPEG, which is fast but still reads the
  whole entropy-coded stream) because `verify()` alone does not notice truncated
  JPEGs, which would only fail later, inside training.

  Raises:
    Skip: `corrupt_image` naming `where`.
  """
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.verify()
    with Image.open(io.BytesIO(data)) as img:
      fmt = img.format
      width, height = img.size
      if fmt in PASSTHROUGH_FORMATS:
        if fmt != "PNG":
          img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        img.load()
        return data, width, height
      out = io.BytesIO()
      img.convert("RGB").save(out, format="JPEG", quality=95)
      return out.getvalue(), width, height
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise Skip("corrupt_image", f"{where}: {e}") from e


def read_image(path: str) -> tuple[bytes, int, int]:
  """Reads and checks an image file; raises `Skip('missing_image')` if absent."""
  try:
    data = fs.read_bytes(path)
  except Exception as e:  # pylint: disable=broad-except
    if fs.is_missing_error(e):
      raise Skip("missing_image", path) from e
    raise
  return check_image(data, path)


def find_image(folders: Sequence[str], names: Sequence[str]) -> str:
  """Returns the first existing `folder/name`; raises `Skip('missing_image')`."""
  for folder in folders:
    for name in names:
      path = fs.join(folder, name)
      if fs.exists(path):
        return path
  others = len(folders) * len(names) - 1
  raise Skip("missing_image", fs.join(folders[0], names[0])
             + (f" (nor {others} other candidate paths)" if others else ""))


def image_record(image_key: str, path: str) -> dict[str, Any]:
  """Schema fields of one still image read from `path`."""
  data, width, height = read_image(path)
  return {"image/id": image_key, "image/encoded": data, "image/width": width,
          "image/height": height}


# ---------------------------------------------------------------------- raw files


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
  with fs.open_file(path, "r") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid json ({e})") from e


def iter_jsonl(path: str) -> Iterator[tuple[str, dict] | Skipped]:
  """Yields (`path:line`, object) of a jsonl file, or `Skipped` for a malformed line."""
  with fs.open_file(path, "r") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError:
        yield Skipped("malformed_row", f"{path}:{number}: not json")
        continue
      if isinstance(obj, dict):
        yield f"{path}:{number}", obj
      else:
        yield Skipped("malformed_row", f"{path}:{number}: not a json object")


def iter_csv(path: str, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
  """Yields (line number, fields) of a csv/tsv file (no quoting for tsv)."""
  with fs.open_file(path, "r") as f:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
    line = 1
    for fields in reader:
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


def iter_csv_range(path: str, start: int, stop: int) -> Iterator[tuple[str, list[str]]]:
  """Yields (`path@byte: line`, fields) of the csv lines that start in `[start, stop)`.

  A line is named by its byte offset and its text (its number would need every line
  before it). Fields are parsed per line, so quoted fields must not hold newlines
  (true of the Open Images CSVs this is used for).
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
      text = raw.decode("utf-8").rstrip("\r\n")
      if text:
        yield f"{path}@{offset}: {text[:200]}", next(csv.reader([text]))
