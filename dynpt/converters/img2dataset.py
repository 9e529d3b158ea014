"""Indexes the output of img2dataset (webdataset tar shards + parquet metadata).

img2dataset (https://github.com/rom1504/img2dataset) downloads the Conceptual
Captions TSVs into `00000.tar, 00001.tar, ...`, each holding `{key}.jpg`,
`{key}.txt` (the caption) and `{key}.json` (url, caption, key, status, ...), plus one
`{shard}.parquet` per tar with columns `url, caption, key, status` for every row,
including those that failed to download. The key is the row's index in the input
TSV, zero-padded, so records get the same `image/id` as from a folder of images.

Only tar headers are read here (each tar is one listing unit of the pipeline): each
sample becomes an item holding the byte offsets of its members, which `read_member`
reads back without scanning the tar.

Tars are checked while they are listed (`tar_members`, also used for the ImageNet-21k
synset tars): Python's `tarfile` takes a damaged header for the end of the archive and
would silently drop every member after it, so headers are read past damage, and
every damaged stretch (a header whose checksum fails, bytes that are no header, a
member that ends past the end of the file) is `Skipped('damaged_archive')` naming the
tar and the byte offset.
"""

from __future__ import annotations

import collections
import json
import os
import tarfile
from typing import Any, Iterator

from dynpt.converters import fs
from dynpt.converters import images
from dynpt.converters import skips

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def has_img2dataset_output(folder: str) -> bool:
  return bool(fs.glob(fs.join(folder, "*.tar")))


def read_member(member: list | tuple,
                max_bytes: int = images.DEFAULT_MAX_FILE_BYTES) -> bytes:
  """Reads one tar member given as (tar path, data offset, size).

  Raises:
    Skip: `file_too_large` over `max_bytes`, `damaged_archive` if the tar is shorter.
  """
  path, offset, size = member
  if size > max_bytes:
    raise skips.Skip("file_too_large", f"{path}@{offset}: {size} bytes is more than "
                     f"--max_file_bytes={max_bytes}")
  data = fs.read_bytes(path, offset, size)
  if len(data) != size:
    raise skips.Skip("damaged_archive", f"{path}@{offset}: member of {size} bytes "
                     f"holds only {len(data)}")
  return data


def _nonzero_at(f, start: int, stop: int) -> int | None:
  """The offset of the first non-zero byte of `f` in [start, stop), or None."""
  f.seek(start)
  pos = start
  while pos < stop:
    chunk = f.read(min(1 << 20, stop - pos))
    if not chunk:
      return None
    stripped = chunk.lstrip(b"\0")
    if stripped:
      return pos + len(chunk) - len(stripped)
    pos += len(chunk)
  return None


def tar_members(tar_path: str) -> Iterator[tuple[str, int, int] | skips.Skipped]:
  """Yields (member name, data offset, size) of a tar's files, reading headers only.

  Damage does not end the listing early and is never silent: `tarfile` reads on past
  a bad header (`ignore_zeros`, block by block, to the next sound header); each
  stretch it passed that is not zero padding, and each member whose data would end
  past the end of the file, is `Skipped('damaged_archive')` naming `tar_path@offset`.
  """
  total = fs.size(tar_path)
  with fs.open_file(tar_path, "rb") as f:
    try:
      tar = tarfile.open(fileobj=f, mode="r:", ignore_zeros=True)
    except tarfile.TarError as e:
      raise ValueError(f"{tar_path}: not a readable tar file ({e})") from e
    expected = 0  # Where the next header should start.
    while True:
      try:
        m = tar.next()
      except tarfile.TarError as e:  # Its data ends past the end of the file.
        if expected <= total:
          yield skips.Skipped("damaged_archive", f"{tar_path}@{tar.offset}: {e}")
        return
      tar.members.clear()  # Listing only: keep no index of a large tar.
      end = total if m is None else m.offset
      if expected < end:
        bad = _nonzero_at(f, expected, end)
        if bad is not None:
          what = ("bytes that are no tar header (a damaged header?)" if m is not None
                  else "bytes after the last sound header")
          yield skips.Skipped("damaged_archive",
                              f"{tar_path}@{bad}: {end - bad} {what}")
      if m is None:
        return
      expected = tar.offset
      if m.offset_data + m.size > total:
        yield skips.Skipped("damaged_archive",
                            f"{tar_path}@{m.offset}: member {m.name!r} of {m.size} bytes "
                            f"ends past the end of the file ({total} bytes)")
      elif m.isfile():
        yield m.name, m.offset_data, m.size


def index_tar(tar_path: str) -> Iterator[dict[str, Any] | skips.Skipped]:
  """Yields one sample per key with an image: {key, image, txt, json} members.

  Samples without an image are `Skipped('missing_image')`.
  """
  samples: dict[str, dict[str, Any]] = collections.defaultdict(dict)
  for member in tar_members(tar_path):
    if isinstance(member, skips.Skipped):
      yield member
      continue
    name, offset, size = member
    stem, ext = os.path.splitext(os.path.basename(name))
    ext = ext.lower()
    kind = "image" if ext in IMAGE_EXTENSIONS else ext.lstrip(".")
    samples[stem][kind] = (tar_path, offset, size)
  for key in sorted(samples):
    sample = samples[key]
    if "image" not in sample:
      yield skips.Skipped("missing_image", f"{tar_path}: key {key} has no image")
      continue
    yield {"key": key, **sample}


def failed_downloads(parquet_path: str) -> Iterator[tuple[str, str]]:
  """Yields (key, status) of the rows img2dataset did not download (status != success)."""
  import pyarrow.parquet as pq

  try:
    with fs.open_file(parquet_path, "rb") as f:
      table = pq.read_table(f, columns=["key", "status"])
  except (OSError, ValueError, KeyError) as e:  # pyarrow's errors derive from these.
    raise ValueError(f"{parquet_path}: not img2dataset metadata with `key` and `status` "
                     f"columns ({e})") from e
  for key, status in zip(table.column("key").to_pylist(),
                         table.column("status").to_pylist()):
    if status != "success":
      yield str(key), str(status)


def sample_caption(item: dict[str, Any]) -> str:
  """The caption of an indexed sample: the `.txt` member, else the json's `caption`.

  Raises:
    Skip: `malformed_caption` for a member that is not UTF-8 (or not a json object).
  """
  try:
    if "txt" in item:
      return read_member(item["txt"]).decode("utf-8").strip()
    if "json" in item:
      meta = json.loads(read_member(item["json"]).decode("utf-8"))
      return str(meta.get("caption") or "").strip()
  except (ValueError, AttributeError, RecursionError) as e:
    member = item.get("txt") or item["json"]
    raise skips.Skip("malformed_caption", f"{member[0]}@{member[1]}: {e}") from e
  return ""
