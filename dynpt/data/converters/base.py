"""What every real-data converter shares: the converter interface and raw-file helpers.

A converter is split in two so that the engine (`engine.py`) can shard, resume and
parallelise any data set the same way:

* `list_items(split, counts)` reads only the annotation files and returns a
  deterministic list of small, picklable items (one per output record). Malformed
  rows are counted in `counts` under a reason and left out; nothing is decoded yet.
* `make_record(item)` reads the item's image(s), checks that they decode and returns
  one schema record (a dict keyed by `dynpt.data.schema` feature names). Expected
  failures (missing or corrupt image, ...) raise `Skip(reason)`, which the engine
  counts; anything else is a bug and propagates.

Image ids are written in a namespaced form, so that `clean_splits` can match images
shared between data sets (`coco:391895`, `oi:000a1249af2bc5f0`, `flickr:1000092795`,
`vg:2354786`); see `image_id`.
"""

from __future__ import annotations

import abc
import collections
import csv
import dataclasses
import io
import json
import os
import zlib
from typing import Any, Iterator, Sequence

from PIL import Image

# Namespaces whose ids are shared between data sets (normalised by `image_id`).
SHARED_NAMESPACES = ("coco", "oi", "flickr", "vg")
# Formats stored as they are; anything else PIL can read is re-encoded as JPEG.
PASSTHROUGH_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG"}


class Skip(Exception):
  """An input that is left out of the output, counted under `reason`."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(f"{reason}: {detail}" if detail else reason)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
  """Where a converter finds its raw data and how it samples it.

  Attributes:
    raw_dir: folder holding the data set's published files (layout per converter in
      docs/data_real.md).
    image_dir: folder of images or video frame folders; default
      `<raw_dir>/<converter.default_image_subdir>`.
    num_frames: frames sampled uniformly from each video.
    holdout_every: for sources without an official validation split, about one item in
      `holdout_every` (chosen by a hash of its key) goes to `validation`.
  """
  raw_dir: str
  image_dir: str | None = None
  num_frames: int = 8
  holdout_every: int = 1000


class Converter(abc.ABC):
  """Reads one data set's raw format and yields schema records (see module doc)."""

  name: str = ""
  splits: tuple[str, ...] = ()
  default_image_subdir: str = "images"

  def __init__(self, options: ConvertOptions):
    self.options = options
    self.raw_dir = options.raw_dir
    self.image_dir = options.image_dir or os.path.join(
        options.raw_dir, self.default_image_subdir)

  def check_split(self, split: str) -> None:
    if split not in self.splits:
      raise ValueError(
          f"dataset {self.name!r} has no split {split!r}; choose from {self.splits}")

  @abc.abstractmethod
  def list_items(self, split: str, counts: collections.Counter) -> list[Any]:
    """Returns the split's items in a deterministic order; counts malformed rows."""

  @abc.abstractmethod
  def make_record(self, item: Any) -> dict[str, Any]:
    """Returns one schema record for `item`; raises `Skip` for expected failures."""

  def label_names(self, items: list[Any]) -> set[str] | None:
    """Class names of a label source's items (None for other sources).

    The engine writes them to `<dataset>/labels.txt` with the train split, so tasks
    get the label vocabulary without scanning every record
    (`dynpt.data.sources.label_vocabulary`).
    """
    del items
    return None


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
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError as e:
    raise Skip("missing_image", path) from e
  return check_image(data, path)


def find_image(folders: Sequence[str], names: Sequence[str]) -> str:
  """Returns the first existing `folder/name`; raises `Skip('missing_image')`."""
  for folder in folders:
    for name in names:
      path = os.path.join(folder, name)
      if os.path.exists(path):
        return path
  raise Skip("missing_image", f"{list(names)} in {list(folders)}")


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
    path = os.path.join(raw_dir, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(
      f"{what}: none of {list(candidates)} found in {raw_dir!r} (see docs/data_real.md)")


def load_json(path: str) -> Any:
  """Loads a json file, naming it in the error if it does not parse."""
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid json ({e})") from e


def iter_jsonl(path: str, counts: collections.Counter) -> Iterator[dict]:
  """Yields the json objects of a jsonl file; counts unparsable lines as malformed."""
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError:
        counts["malformed_row"] += 1
        continue
      if isinstance(obj, dict):
        yield obj
      else:
        counts["malformed_row"] += 1


def iter_csv(path: str, delimiter: str = ",") -> Iterator[list[str]]:
  """Yields the rows of a csv/tsv file as lists of strings (no quoting for tsv)."""
  with open(path, encoding="utf-8", newline="") as f:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    yield from csv.reader(f, delimiter=delimiter, quoting=quoting)
