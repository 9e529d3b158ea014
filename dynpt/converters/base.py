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
  engine records; any other exception of one item is recorded by the engine as
  `unexpected_error` naming the item, so one bad item never ends a conversion.

Raw data is not trusted: a row whose values do not parse (`Infinity` where an id
belongs, a key that is absent, bytes that are not UTF-8) is `Skipped`, a file name
taken from an annotation must stay inside the folder it is looked up in
(`check_name`, `find_image`), and images over `ConvertOptions.max_image_pixels` or
files over `max_file_bytes` are skipped before they are decoded.

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
import os
import zlib
from typing import Any, Iterator, Sequence

from PIL import Image

from dynpt.converters import fs

# Namespaces whose ids are shared between data sets (normalised by `image_id`).
SHARED_NAMESPACES = ("coco", "oi", "flickr", "vg")
# Formats stored as they are; anything else PIL can read is re-encoded as JPEG.
PASSTHROUGH_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG"}
# PIL's own decompression-bomb threshold (89.5 Mpx), which PIL itself only warns
# about below twice its value.
DEFAULT_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS
# No published image or clip of these data sets comes near this; a file this large
# is a mistake (or an attack) that would otherwise be read into memory whole.
DEFAULT_MAX_FILE_BYTES = 256 << 20


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
    max_image_pixels: images with more pixels are skipped (`image_too_large`) before
      they are decoded; default PIL's threshold. PIL itself refuses twice its own
      `Image.MAX_IMAGE_PIXELS`, so larger values stop there.
    max_file_bytes: image and video files (or tar members) larger than this are
      skipped (`file_too_large`) without being read.
  """
  raw_dir: str
  image_dir: str | None = None
  num_frames: int = 8
  holdout_every: int = 1000
  max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
  max_file_bytes: int = DEFAULT_MAX_FILE_BYTES

  def __post_init__(self):
    if not self.raw_dir:
      raise ValueError("raw_dir: give the folder of the data set's raw files")
    for key in ("num_frames", "holdout_every", "max_image_pixels", "max_file_bytes"):
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

  # Image reading with this converter's limits (see `ConvertOptions`).

  def check_image(self, data: bytes, where: str) -> tuple[bytes, int, int]:
    return check_image(data, where, max_pixels=self.options.max_image_pixels)

  def read_image(self, path: str) -> tuple[bytes, int, int]:
    return read_image(path, max_pixels=self.options.max_image_pixels,
                      max_bytes=self.options.max_file_bytes)

  def image_record(self, image_key: str, path: str) -> dict[str, Any]:
    data, width, height = self.read_image(path)
    return {"image/id": image_key, "image/encoded": data, "image/width": width,
            "image/height": height}


# ---------------------------------------------------------------- ids and splits


def is_number(text: str) -> bool:
  """Whether `text` is a non-negative integer in ASCII digits (what `int` reads).

  `str.isdigit` also accepts `①` and `²`, which `int` rejects.
  """
  return text.isascii() and text.isdigit()


def as_int(value: Any) -> int:
  """`int(value)` of an annotation value; raises ValueError for anything else.

  Rejects what `int` would silently accept or fail on in another way: booleans,
  non-integral and non-finite floats (json `Infinity`, `NaN`), non-ASCII digits.
  """
  if isinstance(value, bool):
    raise ValueError(f"not an integer: {value!r}")
  if isinstance(value, int):
    return value
  if isinstance(value, float) and value.is_integer():
    return int(value)
  if isinstance(value, str) and is_number(value.strip()):
    return int(value.strip())
  raise ValueError(f"not an integer: {value!r}"[:200])


def image_id(namespace: str, value: Any) -> str:
  """Returns the canonical `namespace:value` id of an image.

  Numeric namespaces (`coco`, `flickr`, `vg`) drop leading zeros so that
  `COCO_train2014_000000391895.jpg` and image_id 391895 agree; Open Images ids are
  lower-case hex.
  """
  value = str(value).strip()
  if namespace in ("coco", "flickr", "vg") and is_number(value):
    value = str(int(value))
  elif namespace == "oi":
    value = value.lower()
  return f"{namespace}:{value}"


def holdout_split(key: str, holdout_every: int) -> str:
  """Assigns `key` to `validation` or `train` by a stable hash (no official split)."""
  return "validation" if zlib.crc32(key.encode("utf-8")) % holdout_every == 0 else "train"


# ------------------------------------------------------------------------- images


def check_image(data: bytes, where: str,
                max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[bytes, int, int]:
  """Checks that `data` is a decodable image; returns (bytes to store, width, height).

  JPEG and PNG bytes are returned unchanged; other formats PIL reads (GIF, WebP, ...)
  are re-encoded as JPEG so that `tf.io.decode_image` reads every record. The
  image is fully decoded (at 1/8 scale for JPEG, which is fast but still reads the
  whole entropy-coded stream) because `verify()` alone does not notice truncated
  JPEGs, which would only fail later, inside training. Its size is checked from the
  header, before decoding.

  Raises:
    Skip: `image_too_large` (more than `max_pixels`) or `corrupt_image`, naming
      `where`. Any error of PIL's decoders (they raise IndexError, struct.error, ...
      on crafted files) is `corrupt_image`.
  """
  try:
    # PIL only warns between its threshold and twice it; the limit is checked here.
    with Image.open(io.BytesIO(data)) as img:
      width, height = img.size
      if width * height > max_pixels:
        raise Skip("image_too_large", f"{where}: {width}x{height} pixels is more than "
                   f"--max_image_pixels={max_pixels}")
      img.verify()
    with Image.open(io.BytesIO(data)) as img:
      fmt = img.format
      if fmt in PASSTHROUGH_FORMATS:
        if fmt != "PNG":
          img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        img.load()
        return data, width, height
      out = io.BytesIO()
      img.convert("RGB").save(out, format="JPEG", quality=95)
      return out.getvalue(), width, height
  except Skip:
    raise
  except Image.DecompressionBombError as e:
    raise Skip("image_too_large", f"{where}: {e}") from e
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise Skip("corrupt_image", f"{where}: {type(e).__name__}: {e}") from e


def read_file(path: str, what: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
  """Reads a raw image file whole, within the byte limit.

  Raises:
    Skip: `missing_<what>`, `file_too_large` or `unreadable_<what>` naming `path`.
  """
  try:
    size = fs.size(path)
    if size > max_bytes:
      raise Skip("file_too_large", f"{path}: {size} bytes is more than "
                 f"--max_file_bytes={max_bytes}")
    return fs.read_bytes(path)
  except Skip:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if fs.is_missing_error(e):
      raise Skip(f"missing_{what}", path) from e
    if isinstance(e, MemoryError):
      raise
    raise Skip(f"unreadable_{what}", f"{path}: {type(e).__name__}: {e}") from e


def read_image(path: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> tuple[bytes, int, int]:
  """Reads and checks an image file; raises `Skip('missing_image')` if absent."""
  return check_image(read_file(path, "image", max_bytes), path, max_pixels)


def check_name(name: Any) -> str | None:
  """Why a file name taken from an annotation may not be used, or None if it may.

  A name must be a relative path that stays below the folder it is joined to: not
  absolute, no `..` component, no NUL byte, no URL scheme.
  """
  if not isinstance(name, str) or not name.strip():
    return "not a file name"
  if "\0" in name:
    return "holds a NUL byte"
  if os.path.isabs(name) or name.startswith(("/", "\\")) or "://" in name:
    return "is an absolute path"
  if ".." in name.replace("\\", "/").split("/"):
    return "climbs out with `..`"
  return None


def unsafe_name(where: str, field: str, name: Any) -> Skipped | None:
  """`Skipped('unsafe_path')` naming the annotation if `name` may not be used."""
  problem = check_name(name)
  if problem is None:
    return None
  return Skipped("unsafe_path", f"{where}: {field} {str(name)[:200]!r} {problem}")


def confined(folder: str, name: str) -> str:
  """`folder/name`, if it stays inside `folder` once symlinks are resolved.

  Raises:
    Skip: `unsafe_path` naming the file, if `name` is not a plain relative name
      (`check_name`) or the file resolves outside `folder` (a symlink out of it).
  """
  problem = check_name(name)
  if problem is not None:
    raise Skip("unsafe_path", f"{fs.join(folder, str(name))}: {problem}")
  path = fs.join(folder, name)
  if not fs.is_url(path):
    root, real = os.path.realpath(folder), os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
      raise Skip("unsafe_path", f"{path}: resolves to {real}, outside {folder}")
  return path


def find_image(folders: Sequence[str], names: Sequence[str]) -> str:
  """Returns the first existing `folder/name`, confined to its folder (`confined`).

  Raises:
    Skip: `missing_image` if none exists; `unsafe_path` for a name that leaves its
      folder.
  """
  for name in names:
    if check_name(name) is not None:
      confined(folders[0], name)  # Raises `unsafe_path`.
  for folder in folders:
    for name in names:
      if fs.exists(fs.join(folder, name)):
        return confined(folder, name)
  others = len(folders) * len(names) - 1
  raise Skip("missing_image", fs.join(folders[0], names[0])
             + (f" (nor {others} other candidate paths)" if others else ""))


def image_record(image_key: str, path: str) -> dict[str, Any]:
  """Schema fields of one still image read from `path` (default limits)."""
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
