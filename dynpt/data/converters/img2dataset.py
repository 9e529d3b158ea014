"""Indexes the output of img2dataset (webdataset tar shards + parquet metadata).

img2dataset (https://github.com/rom1504/img2dataset) downloads the Conceptual
Captions TSVs into `00000.tar, 00001.tar, ...`, each holding `{key}.jpg`,
`{key}.txt` (the caption) and `{key}.json` (url, caption, key, status, ...), plus one
`{shard}.parquet` per tar with columns `url, caption, key, status` for every row,
including those that failed to download. The key is the row's index in the input
TSV, zero-padded, so records get the same `image/id` as from a folder of images.

Only tar headers are read here: each sample becomes an item holding the byte
offsets of its members, which `read_member` reads back without scanning the tar.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import tarfile
from typing import Any

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def has_img2dataset_output(folder: str) -> bool:
  return bool(glob.glob(os.path.join(folder, "*.tar")))


def read_member(member: tuple[str, int, int]) -> bytes:
  """Reads one tar member given as (tar path, data offset, size)."""
  path, offset, size = member
  with open(path, "rb") as f:
    f.seek(offset)
    return f.read(size)


def index_tars(folder: str, counts: collections.Counter) -> list[dict[str, Any]]:
  """Returns one item per sample with an image: {key, image, txt, json} members.

  Samples without an image are counted as `missing_image`; rows that img2dataset
  reports as not downloaded (parquet `status` != success) as `download_failed`.
  """
  items = []
  for tar_path in sorted(glob.glob(os.path.join(folder, "*.tar"))):
    samples: dict[str, dict[str, Any]] = collections.defaultdict(dict)
    try:
      with tarfile.open(tar_path, "r:") as tar:
        for m in tar:
          if not m.isfile():
            continue
          stem, ext = os.path.splitext(os.path.basename(m.name))
          ext = ext.lower()
          kind = "image" if ext in IMAGE_EXTENSIONS else ext.lstrip(".")
          samples[stem][kind] = (tar_path, m.offset_data, m.size)
    except tarfile.TarError as e:
      raise ValueError(f"{tar_path}: not a readable tar file ({e})") from e
    for key in sorted(samples):
      sample = samples[key]
      if "image" not in sample:
        counts["missing_image"] += 1
        continue
      items.append({"key": key, **sample})
  counts["download_failed"] += count_failed_downloads(folder)
  return items


def count_failed_downloads(folder: str) -> int:
  """Counts parquet metadata rows whose `status` is not `success` (0 if no parquet)."""
  paths = sorted(glob.glob(os.path.join(folder, "*.parquet")))
  if not paths:
    return 0
  import pyarrow.parquet as pq

  failed = 0
  for path in paths:
    try:
      table = pq.read_table(path, columns=["status"])
    except (OSError, ValueError) as e:  # pyarrow's errors derive from these.
      raise ValueError(f"{path}: not img2dataset metadata with a `status` column ({e})") from e
    failed += sum(1 for s in table.column("status").to_pylist() if s != "success")
  return failed


def sample_caption(item: dict[str, Any]) -> str:
  """The caption of an indexed sample: the `.txt` member, else the json's `caption`."""
  if "txt" in item:
    return read_member(item["txt"]).decode("utf-8").strip()
  if "json" in item:
    return str(json.loads(read_member(item["json"])).get("caption") or "").strip()
  return ""
