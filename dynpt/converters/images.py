"""Reading raw images safely: size limits, full decoding, names confined to their folder.

Raw data is not trusted: a file name taken from an annotation must stay inside the
folder it is looked up in (`check_name`, `confined`, `find_image`), and images over
`max_pixels` or files over `max_bytes` are skipped before they are decoded. Files are
read through `fs`, so they may be on `gs://`.
"""

from __future__ import annotations

import io
import os
from typing import Any, Sequence

from PIL import Image

from dynpt.converters import fs
from dynpt.converters.skips import Skip, Skipped

# Formats stored as they are; anything else PIL can read is re-encoded as JPEG.
PASSTHROUGH_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG"}
# PIL's own decompression-bomb threshold (89.5 Mpx), which PIL itself only warns
# about below twice its value.
DEFAULT_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS
# No published image or clip of these data sets comes near this; a file this large
# is a mistake (or an attack) that would otherwise be read into memory whole.
DEFAULT_MAX_FILE_BYTES = 256 << 20


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
