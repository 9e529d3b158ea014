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
"""

from __future__ import annotations

import collections
import json
import os
import tarfile
from typing import Any, Iterator

from dynpt.data.converters import base
from dynpt.data.converters import fs

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def has_img2dataset_output(folder: str) -> bool:
  return bool(fs.glob(fs.join(folder, "*.tar")))


def read_member(member: list | tuple) -> bytes:
  """Reads one tar member given as (tar path, data offset, size)."""
  path, offset, size = member
  return fs.read_bytes(path, offset, size)


def tar_members(tar_path: str) -> Iterator[tuple[str, int, int]]:
  """Yields (member name, data offset, size) of a tar's files, reading headers only."""
  try:
    with fs.open_file(tar_path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
      for m in tar:
        if m.isfile():
          yield m.name, m.offset_data, m.size
  except tarfile.TarError as e:
    raise ValueError(f"{tar_path}: not a readable tar file ({e})") from e


def index_tar(tar_path: str) -> Iterator[dict[str, Any] | base.Skipped]:
  """Yields one sample per key with an image: {key, image, txt, json} members.

  Samples without an image are `Skipped('missing_image')`.
  """
  samples: dict[str, dict[str, Any]] = collections.defaultdict(dict)
  for name, offset, size in tar_members(tar_path):
    stem, ext = os.path.splitext(os.path.basename(name))
    ext = ext.lower()
    kind = "image" if ext in IMAGE_EXTENSIONS else ext.lstrip(".")
    samples[stem][kind] = (tar_path, offset, size)
  for key in sorted(samples):
    sample = samples[key]
    if "image" not in sample:
      yield base.Skipped("missing_image", f"{tar_path}: key {key} has no image")
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
  """The caption of an indexed sample: the `.txt` member, else the json's `caption`."""
  if "txt" in item:
    return read_member(item["txt"]).decode("utf-8").strip()
  if "json" in item:
    return str(json.loads(read_member(item["json"])).get("caption") or "").strip()
  return ""
