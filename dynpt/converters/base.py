"""The interface every real-data converter implements.

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
belongs, a key that is absent, bytes that are not UTF-8) is `Skipped`, and images and
files over `ConvertOptions`' limits are skipped before they are decoded. The helpers
converters share have their own modules: `skips` (`Skip`, `Skipped`), `ids` (integer
parsing, namespaced image ids, the held-out split), `images` (reading images within
the limits, file names confined to their folder) and `raw_files` (finding and parsing
annotation files). Raw files are read through `fs`, so `raw_dir` may be a `gs://` path.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Iterator

from dynpt.converters import fs
from dynpt.converters import images
from dynpt.converters.images import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_IMAGE_PIXELS


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
    return images.check_image(data, where, max_pixels=self.options.max_image_pixels)

  def read_image(self, path: str) -> tuple[bytes, int, int]:
    return images.read_image(path, max_pixels=self.options.max_image_pixels,
                             max_bytes=self.options.max_file_bytes)

  def image_record(self, image_key: str, path: str) -> dict[str, Any]:
    data, width, height = self.read_image(path)
    return {"image/id": image_key, "image/encoded": data, "image/width": width,
            "image/height": height}
