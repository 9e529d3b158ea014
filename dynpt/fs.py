"""The one file-system layer for the paths a user gives: local folders or buckets.

Any path a user gives dynpt (RUN_DIR, DATA_DIR, INIT_FROM, export and import
folders) may be a local path or an object-store URL (`gs://bucket/dir`,
`s3://...`). Whatever dynpt itself reads, writes, lists, renames or deletes
under such a path goes through this module, never through `os.path`, `open`
or `shutil`. It sits on etils' `epath`, orbax's own file layer: `os` for local
paths; for `gs://`, TensorFlow's `gfile`, or fsspec's `gcsfs` when
`EPATH_USE_TF=false` (what the tests run against a local GCS API server,
`tools/local_gcs.py`). TensorStore, which writes checkpoint arrays, has its
own GCS client (`tensorstore_kvstore`).

An object store is not a disk (docs/scaling.md):
- folders are name prefixes: `makedirs` creates nothing there, and a folder
  exists while some object's name starts with it;
- objects are written whole: a file that grows a line at a time (the mixture
  history, TensorBoard events) is written to a local copy and uploaded at
  each checkpoint and at exit (`LocalMirror`);
- `rename` of a folder copies every object and then deletes the originals:
  its time and requests grow with the folder's bytes and files, and a crash
  midway leaves both copies (never neither);
- nothing can be locked: one trainer per RUN_DIR is the launcher's job.

This module imports nothing from dynpt, JAX or TensorFlow, so every layer may
use it (`.importlinter`).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from typing import IO, Iterator, Sequence

from etils import epath

__all__ = [
    "LocalMirror", "absolute", "basename", "copy", "dirname", "exists", "isdir",
    "isfile", "is_remote", "join", "listdir", "local_copy", "makedirs", "open",
    "read_bytes", "read_text", "remove", "rename", "rmtree", "size",
    "tensorstore_kvstore", "walk_files", "write_bytes", "write_text",
]

_builtin_open = open


def is_remote(path: str | os.PathLike) -> bool:
  """True for an object-store URL (`gs://...`), False for a local path."""
  return "://" in os.fspath(path)


def _str(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  if is_remote(path):
    scheme, rest = path.split("://", 1)
    rest = posixpath.normpath(rest) if rest.strip("/") else ""
    return f"{scheme}://{rest.lstrip('/')}"
  return path


def _path(path: str | os.PathLike) -> epath.Path:
  return epath.Path(_str(path))


def join(path: str | os.PathLike, *parts: str) -> str:
  """`os.path.join` for local paths; `/`-joined URLs for buckets."""
  path = _str(path)
  if not is_remote(path):
    return os.path.join(path, *parts)
  for part in parts:
    path = path.rstrip("/") + "/" + part.strip("/")
  return path


def absolute(path: str | os.PathLike) -> str:
  """An absolute local path (`os.path.abspath`); a URL as it is (normalised)."""
  path = _str(path)
  return path if is_remote(path) else os.path.abspath(path)


def basename(path: str | os.PathLike) -> str:
  path = _str(path)
  return posixpath.basename(path) if is_remote(path) else os.path.basename(path)


def dirname(path: str | os.PathLike) -> str:
  path = _str(path)
  return posixpath.dirname(path) if is_remote(path) else os.path.dirname(path)


def exists(path: str | os.PathLike) -> bool:
  return _path(path).exists()


def isdir(path: str | os.PathLike) -> bool:
  """A local folder, or a bucket prefix under which some object exists."""
  return _path(path).is_dir()


def isfile(path: str | os.PathLike) -> bool:
  return _path(path).is_file()


def size(path: str | os.PathLike) -> int:
  """A file's size in bytes."""
  return int(_path(path).stat().length)


def listdir(path: str | os.PathLike) -> list[str]:
  """The names in a folder (files and sub-folders), sorted."""
  return sorted(p.name for p in _path(path).iterdir())


def makedirs(path: str | os.PathLike) -> None:
  """Creates a local folder and its parents; nothing on an object store."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def open(path: str | os.PathLike, mode: str = "r") -> IO:  # pylint: disable=redefined-builtin
  """A file object on either kind of path (whole-object writes on a bucket)."""
  if not is_remote(path):
    return _builtin_open(path, mode)
  return _path(path).open(mode)


def read_bytes(path: str | os.PathLike) -> bytes:
  return _path(path).read_bytes()


def read_text(path: str | os.PathLike) -> str:
  return _path(path).read_text()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes a whole file; readers see the old or the new content, never a part.

  Locally through a temporary file renamed over the target (its folder is
  created); on an object store one upload replaces the object.
  """
  path = _str(path)
  if is_remote(path):
    _path(path).write_bytes(data)
    return
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Copies one file, between any two kinds of path (overwrites `dst`)."""
  if not is_remote(src) and not is_remote(dst):
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    shutil.copyfile(src, dst)
    return
  if not is_remote(dst):
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
  with open(src, "rb") as source, open(dst, "wb") as target:
    shutil.copyfileobj(source, target, 1 << 20)


def remove(path: str | os.PathLike) -> None:
  """Deletes one file."""
  _path(path).unlink()


def rmtree(path: str | os.PathLike) -> None:
  """Deletes a folder and everything under it (every object under a prefix)."""
  if is_remote(path):
    if isdir(path):
      _path(path).rmtree()
    return
  shutil.rmtree(path)


def walk_files(top: str | os.PathLike) -> list[str]:
  """Every file under `top`, as sorted paths relative to it (`/`-separated)."""
  top = _str(top)
  if not is_remote(top):
    found = []
    for folder, _, names in os.walk(top):
      rel = os.path.relpath(folder, top)
      found += [name if rel == "." else posixpath.join(rel.replace(os.sep, "/"), name)
                for name in names]
    return sorted(found)
  if not isdir(top):
    return []
  # Backends differ in how they spell the folders they yield (gcsfs drops
  # `gs://`), so each is re-rooted by its path below the bucket.
  root = top.split("://", 1)[1].rstrip("/")
  found = []
  for folder, _, names in _path(top).walk():
    below = os.fspath(folder).split("://", 1)[-1].lstrip("/").rstrip("/")
    if below.startswith("gs/") and not root.startswith("gs/"):
      below = below[len("gs/"):]  # epath spells gs://b as /gs/b.
    rel = below[len(root):].strip("/")
    found += [posixpath.join(rel, name) if rel else name for name in names]
  return sorted(found)


def rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Moves a file or folder to `dst`, which must not exist.

  Locally a rename (atomic within one file system). On an object store each
  object is copied, then the originals are deleted: time and requests grow
  with the folder's size, and a crash midway leaves both copies.
  """
  src, dst = _str(src), _str(dst)
  if exists(dst):
    raise FileExistsError(f"cannot move {src} to {dst}: {dst} exists")
  if not is_remote(src) and not is_remote(dst):
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    shutil.move(src, dst)
    return
  if isfile(src):
    copy(src, dst)
    remove(src)
    return
  for rel in walk_files(src):
    copy(join(src, rel), join(dst, rel))
  rmtree(src)


def tensorstore_kvstore(path: str | os.PathLike) -> dict:
  """TensorStore's key-value store spec for a folder: `file` or `gcs`."""
  path = _str(path)
  if path.startswith("gs://"):
    bucket, _, below = path[len("gs://"):].partition("/")
    return {"driver": "gcs", "bucket": bucket, "path": below.rstrip("/") + "/"}
  if is_remote(path):
    raise ValueError(f"{path}: TensorStore reads folders on local disks or gs:// only")
  return {"driver": "file", "path": os.path.abspath(path)}


@contextlib.contextmanager
def local_copy(path: str | os.PathLike) -> Iterator[str]:
  """A local path holding `path`'s file for the block (a local path: itself).

  For libraries that only open local files (gin's config parser).
  """
  path = _str(path)
  if not is_remote(path):
    yield path
    return
  with tempfile.TemporaryDirectory(prefix="dynpt-fs-") as tmp:
    local = os.path.join(tmp, basename(path))
    copy(path, local)
    yield local


class LocalMirror:
  """A local folder standing for a folder that may be in a bucket.

  For files written a little at a time (an object store has no appends): a
  writer uses `local`, and `push()` uploads the files that changed since the
  last push, whole. For a local `path`, `local` is `path` itself and
  pushing does nothing.

  Args:
    path: the folder (local or a URL).
    names: only these files of it (default: every file below it).
    pull: download the folder's files into `local` first (a resumed run
      continues them).
  """

  def __init__(self, path: str | os.PathLike, names: Sequence[str] | None = None,
               pull: bool = True):
    self.path = _str(path)
    self.names = None if names is None else list(names)
    self._pushed: dict[str, tuple[int, int]] = {}
    self._tmp = None
    if not is_remote(self.path):
      self.local = self.path
      return
    self._tmp = tempfile.mkdtemp(prefix="dynpt-mirror-")
    self.local = self._tmp
    if pull:
      for rel in self._remote_files():
        copy(join(self.path, rel), os.path.join(self.local, rel))
      self._pushed = self._local_stats()

  @property
  def remote(self) -> bool:
    return self._tmp is not None

  def _remote_files(self) -> list[str]:
    if self.names is None:
      return walk_files(self.path)
    return [n for n in self.names if exists(join(self.path, n))]

  def _local_stats(self) -> dict[str, tuple[int, int]]:
    stats = {}
    for rel in walk_files(self.local):
      if self.names is None or rel in self.names:
        st = os.stat(os.path.join(self.local, rel))
        stats[rel] = (st.st_size, st.st_mtime_ns)
    return stats

  def push(self) -> list[str]:
    """Uploads the files changed since the last push; returns their names."""
    if not self.remote:
      return []
    changed = []
    for rel, stat in self._local_stats().items():
      if self._pushed.get(rel) != stat:
        copy(os.path.join(self.local, rel), join(self.path, rel))
        self._pushed[rel] = stat
        changed.append(rel)
    return changed

  def close(self) -> None:
    """Pushes, then removes the local copy."""
    if self.remote:
      try:
        self.push()
      finally:
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None
