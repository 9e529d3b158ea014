"""File access for converters: local paths through `os`, URLs through `tf.io.gfile`.

Raw data may sit in a bucket (`gs://...`) when the pipeline runs on Dataflow, so every
converter reads through this module. Local paths take the plain `os` route, which is
several times cheaper per call than gfile and needs no TensorFlow import in the
listing stage; anything with a scheme (`gs://`, `s3://`, `hdfs://`) goes to gfile.
"""

from __future__ import annotations

import glob as _glob
import os
from typing import IO, Iterator


def is_url(path: str) -> bool:
  return "://" in path


def _gfile():
  import tensorflow as tf

  return tf.io.gfile


def join(*parts: str) -> str:
  return os.path.join(*parts)


def open_file(path: str, mode: str = "rb") -> IO:
  """Opens `path` for reading or writing (binary or text, as `mode` says)."""
  if is_url(path):
    return _gfile().GFile(path, mode)
  if "b" in mode:
    return open(path, mode)
  return open(path, mode, encoding="utf-8", newline="" if "r" in mode else None)


def read_bytes(path: str, offset: int = 0, size: int = -1) -> bytes:
  """Reads `size` bytes of `path` from `offset` (all of it by default)."""
  with open_file(path, "rb") as f:
    if offset:
      f.seek(offset)
    return f.read(size) if size >= 0 else f.read()


def is_missing_error(e: BaseException) -> bool:
  """Whether `e` says a file is absent (os: FileNotFoundError; gfile: NotFoundError)."""
  return isinstance(e, (FileNotFoundError, IsADirectoryError)) or (
      type(e).__name__ == "NotFoundError")


def exists(path: str) -> bool:
  return _gfile().exists(path) if is_url(path) else os.path.exists(path)


def listdir(path: str) -> list[str]:
  """Names in folder `path`, sorted (no trailing slashes); [] if it does not exist."""
  if is_url(path):
    if not _gfile().isdir(path):
      return []
    return sorted(n.rstrip("/") for n in _gfile().listdir(path))
  try:
    return sorted(os.listdir(path))
  except (FileNotFoundError, NotADirectoryError):
    return []


def subdirs(path: str) -> list[str]:
  """Names of the folders in `path`, sorted, without a stat call per entry."""
  if is_url(path):
    if not _gfile().isdir(path):
      return []
    return sorted(n.rstrip("/") for n in _gfile().listdir(path) if n.endswith("/"))
  try:
    with os.scandir(path) as entries:
      return sorted(e.name for e in entries if e.is_dir())
  except (FileNotFoundError, NotADirectoryError):
    return []


def glob(pattern: str) -> list[str]:
  return sorted(_gfile().glob(pattern) if is_url(pattern) else _glob.glob(pattern))


def walk(top: str) -> Iterator[tuple[str, list[str], list[str]]]:
  if is_url(top):
    yield from _gfile().walk(top)
  else:
    yield from os.walk(top)


def size(path: str) -> int:
  return _gfile().stat(path).length if is_url(path) else os.path.getsize(path)


def makedirs(path: str) -> None:
  if is_url(path):
    _gfile().makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def rename(src: str, dst: str) -> None:
  """Renames `src` to `dst`, replacing it (atomic on a local file system)."""
  if is_url(src):
    _gfile().rename(src, dst, overwrite=True)
  else:
    os.replace(src, dst)


def remove(path: str) -> None:
  if is_url(path):
    _gfile().remove(path)
  else:
    os.remove(path)


def isdir(path: str) -> bool:
  return _gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def rmtree(path: str) -> None:
  """Removes folder `path` and everything in it; nothing if it does not exist."""
  if is_url(path):
    if _gfile().exists(path):
      _gfile().rmtree(path)
  elif os.path.lexists(path):
    import shutil

    shutil.rmtree(path)


def move_dir(src: str, dst: str) -> None:
  """Renames folder `src` to `dst` (absent). One atomic rename on a local file system;
  object stores have no folders, so there it moves file by file."""
  if not is_url(src):
    os.rename(src, dst)
    return
  g = _gfile()
  for root, _, files in list(g.walk(src)):
    rel = root[len(src):].strip("/")
    target = join(dst, rel) if rel else dst
    g.makedirs(target)
    for name in files:
      g.rename(join(root, name), join(target, name), overwrite=True)
  g.rmtree(src)


def link_or_copy(src: str, dst: str) -> None:
  """Makes `dst` (absent) hold the bytes of `src`: a hard link where possible."""
  if is_url(src) or is_url(dst):
    _gfile().copy(src, dst, overwrite=True)
    return
  try:
    os.link(src, dst)
  except OSError:  # Another device, or a file system without hard links.
    import shutil

    shutil.copyfile(src, dst)
