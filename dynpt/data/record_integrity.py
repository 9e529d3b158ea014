"""Finds where a TFRecord file is damaged, so a reader can stop just before.

A TFRecord file is a sequence of frames::

  uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)

TensorFlow's reader fails the whole pipeline at the first bad frame
(`DataLossError: corrupted record at 11182`) and cannot skip it. `scan_file`
walks the frames, checks both checksums and returns how many records come
before the damage (`readable`): reading exactly those with
`TFRecordDataset(path).take(readable)` never touches the damage, so a run can
use the file's good prefix deterministically. When the damaged frame's
length is intact, the frames after it are counted too (`lost` is exact);
when the length itself is damaged the rest of the file cannot be framed and
`lost` is estimated from its size.
"""

from __future__ import annotations

import dataclasses
import math
import struct

import google_crc32c

_HEADER = 12  # uint64 length + uint32 crc.
_FOOTER = 4
_MASK_DELTA = 0xA282EAD8


def masked_crc(data: bytes) -> int:
  """TFRecord's masked CRC32-C of `data`."""
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  """One TFRecord frame holding `data` (what `tf.io.TFRecordWriter` writes)."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc(length)) + data
          + struct.pack("<I", masked_crc(data)))


@dataclasses.dataclass(frozen=True)
class Damage:
  """Where and how a file is damaged.

  Attributes:
    path: the file.
    readable: records before the damage (readable as usual).
    lost: records from the damage to the end (estimated when `exact` is
      False).
    exact: whether `lost` was counted frame by frame.
    offset: byte offset of the first damaged frame.
    reason: what is wrong there, in words.
  """
  path: str
  readable: int
  lost: int
  exact: bool
  offset: int
  reason: str

  def describe(self) -> str:
    lost = f"{self.lost}" if self.exact else f"about {self.lost}"
    return (f"{self.path}: {self.reason} at byte {self.offset} (record "
            f"{self.readable}); its first {self.readable} records are used, "
            f"the remaining {lost} skipped")


def scan_bytes(data: bytes, path: str = "<bytes>") -> tuple[int, Damage | None]:
  """(number of records, damage or None) of a TFRecord file's contents."""
  offset, count, sizes = 0, 0, 0
  damage_at, reason = None, None
  while offset < len(data):
    header = data[offset:offset + _HEADER]
    if len(header) < _HEADER:
      damage_at, reason = offset, "truncated frame header"
      break
    length_bytes = header[:8]
    (length,) = struct.unpack("<Q", length_bytes)
    (length_crc,) = struct.unpack("<I", header[8:])
    if masked_crc(length_bytes) != length_crc:
      damage_at, reason = offset, "corrupted record length"
      break
    end = offset + _HEADER + length + _FOOTER
    if end > len(data):
      damage_at, reason = offset, "truncated record"
      break
    payload = data[offset + _HEADER:offset + _HEADER + length]
    (data_crc,) = struct.unpack("<I", data[end - _FOOTER:end])
    if masked_crc(payload) != data_crc:
      damage_at, reason = offset, "corrupted record data (checksum mismatch)"
      break
    offset, count, sizes = end, count + 1, sizes + (end - offset)
  if damage_at is None:
    return count, None
  lost, exact = _count_after(data, damage_at, reason)
  if not exact:
    mean = sizes / count if count else float(len(data) - damage_at)
    lost = max(1, math.ceil((len(data) - damage_at) / max(mean, 1.0)))
  return count, Damage(path, count, lost, exact, damage_at, reason)


def _count_after(data: bytes, offset: int, reason: str) -> tuple[int, bool]:
  """Frames from the damaged one (included) to the end, when framing holds."""
  if reason != "corrupted record data (checksum mismatch)":
    return 0, False
  lost = 0
  while offset < len(data):
    header = data[offset:offset + _HEADER]
    if (len(header) < _HEADER
        or masked_crc(header[:8]) != struct.unpack("<I", header[8:])[0]):
      return lost, False
    (length,) = struct.unpack("<Q", header[:8])
    offset += _HEADER + length + _FOOTER
    lost += 1
  return lost, offset == len(data)


def scan_file(path: str) -> tuple[int, Damage | None]:
  """`scan_bytes` of a file (local or any filesystem TensorFlow reads)."""
  import tensorflow as tf  # Only for gs:// and friends; local files too.

  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  return scan_bytes(data, path)
