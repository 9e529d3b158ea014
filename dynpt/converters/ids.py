"""Ids and splits of raw data: integer parsing, canonical image ids, the held-out split.

Image ids are written in a namespaced form, so that `clean_splits` can match images
shared between data sets (`coco:391895`, `oi:000a1249af2bc5f0`, `flickr:1000092795`,
`vg:2354786`); see `image_id`.
"""

from __future__ import annotations

import zlib
from typing import Any

# Namespaces whose ids are shared between data sets (normalised by `image_id`).
SHARED_NAMESPACES = ("coco", "oi", "flickr", "vg")


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
