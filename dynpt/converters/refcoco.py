"""Referring expressions: RefCOCO, RefCOCO+ (UNC splits) and RefCOCOg (UMD splits).

Reads the layout of https://github.com/lichengunc/refer: `<raw_dir>/<refcoco|refcoco+|
refcocog>/refs(<unc|umd>).p` (a pickle list of refs) and `instances.json` (COCO format)
beside it. One record per sentence; the box is the referred annotation's
`[x, y, w, h]`, written as pixels xyxy. Images are COCO train2014.

The refs files are Python pickles. They are read by `load_refs` through an unpickler
that builds only plain containers, strings and numbers: a pickle that asks for any
other object (which is how a crafted pickle runs code) is refused, naming the file.
"""

from __future__ import annotations

import math
import os
import pickle
from typing import Any, Iterator

from dynpt.converters import base
from dynpt.converters import fs
from dynpt.converters import ids
from dynpt.converters import images
from dynpt.converters import raw_files
from dynpt.converters import skips

# The only globals a refs pickle may name: set types, which Python 2 pickles build by
# calling them on a list. Lists, dicts, tuples, strings and numbers need no global.
_ALLOWED_GLOBALS = frozenset({("builtins", "set"), ("builtins", "frozenset"),
                              ("__builtin__", "set"), ("__builtin__", "frozenset")})


class _PlainUnpickler(pickle.Unpickler):
  """Unpickles plain data only: refuses every global but `_ALLOWED_GLOBALS`."""

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _ALLOWED_GLOBALS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(
        f"refused: the pickle asks for {module}.{name}; a refs file holds only lists, "
        "dicts, strings and numbers, and a crafted pickle runs code this way")

  def persistent_load(self, pid: Any) -> Any:
    raise pickle.UnpicklingError("refused: the pickle asks for a persistent object")


def load_refs(path: str) -> list[dict[str, Any]]:
  """Loads a refs pickle (the official files are Python 2 pickles of byte strings).

  Raises:
    ValueError: naming `path`, for a file that does not unpickle to a list of plain
      data, including one that asks for any other object (never built).
  """
  def load(encoding: str) -> Any:
    with fs.open_file(path, "rb") as f:
      return _PlainUnpickler(f, encoding=encoding).load()

  try:
    try:
      refs = load("ASCII")
    except UnicodeDecodeError:
      refs = load("latin1")  # Python 2 byte strings with non-ASCII characters.
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # Any malformed pickle.
    raise ValueError(f"{path}: not a readable refs pickle ({type(e).__name__}: "
                     f"{e})") from e
  if not isinstance(refs, list):
    raise ValueError(f"{path}: expected a pickled list of refs")
  return refs


def _coco_index(path: str, instances: Any) -> tuple[dict, dict]:
  """(image id -> file name, annotation id -> [x, y, w, h] or None) of instances.json.

  Entries without a usable id are left out; an annotation without a finite `bbox`
  maps to None, so that the refs naming it are skipped one by one.
  """
  if not isinstance(instances, dict):
    raise ValueError(f"{path}: expected a COCO-format json object")
  files, boxes = {}, {}
  for im in instances.get("images") or []:
    if isinstance(im, dict) and isinstance(im.get("file_name"), str):
      try:
        files[ids.as_int(im.get("id"))] = im["file_name"]
      except ValueError:
        continue
  for ann in instances.get("annotations") or []:
    if not isinstance(ann, dict):
      continue
    try:
      ann_id = ids.as_int(ann.get("id"))
    except ValueError:
      continue
    try:
      box = [float(v) for v in ann["bbox"]]
      boxes[ann_id] = box if len(box) == 4 and all(map(math.isfinite, box)) else None
    except (KeyError, TypeError, ValueError):
      boxes[ann_id] = None
  return files, boxes


class RefCOCOBase(base.Converter):
  """Shared reader; subclasses set the folder, refs file and splits."""

  folder = ""
  refs_file = ""
  default_image_subdir = os.path.join("images", "mscoco", "images", "train2014")

  def _path(self, name: str) -> str:
    return raw_files.find_file(fs.join(self.raw_dir, self.folder), [name],
                               f"{self.name} {name}")

  def locate(self, split: str) -> dict[str, str]:
    return {"refs": self._path(self.refs_file), "instances": self._path("instances.json")}

  def list_items(self, split: str, unit: dict[str, str]) -> Iterator[Any]:
    refs_path = unit["refs"]
    refs = load_refs(refs_path)
    files, boxes = _coco_index(unit["instances"], raw_files.load_json(unit["instances"]))
    for i, ref in enumerate(refs):
      where = f"{refs_path}: refs[{i}]"
      try:
        if ref["split"] != split:
          continue
        ann_id, image = ids.as_int(ref["ann_id"]), ids.as_int(ref["image_id"])
        sentences = [str(s["sent"]) for s in ref["sentences"]]
      except (KeyError, TypeError, ValueError):
        yield skips.Skipped("malformed_row", where)
        continue
      if ann_id not in boxes:
        for _ in sentences:
          yield skips.Skipped("missing_annotation", f"{where}: ann_id {ann_id}")
        continue
      if boxes[ann_id] is None:
        for _ in sentences:
          yield skips.Skipped("malformed_annotation",
                              f"{unit['instances']}: ann_id {ann_id} has no finite bbox "
                              f"(for {where})")
        continue
      x, y, w, h = boxes[ann_id]
      file_name = files.get(image, f"COCO_train2014_{image:012d}.jpg")
      unsafe = images.unsafe_name(f"{unit['instances']}: image {image}", "file_name",
                                  file_name)
      if unsafe:
        for _ in sentences:
          yield unsafe
        continue
      for sent in sentences:
        yield {"image": image, "file_name": file_name, "refexp": sent,
               "bbox": [x, y, x + w, y + h]}

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    path = images.find_image([self.image_dir, fs.join(self.raw_dir, "train2014")],
                             [item["file_name"]])
    return {**self.image_record(ids.image_id("coco", item["image"]), path),
            "refexp": item["refexp"], "refexp/bbox": item["bbox"]}


class RefCOCO(RefCOCOBase):
  name = "refcoco"
  folder = "refcoco"
  refs_file = "refs(unc).p"
  splits = ("train", "val", "testA", "testB")


class RefCOCOPlus(RefCOCOBase):
  name = "refcocoplus"
  folder = "refcoco+"
  refs_file = "refs(unc).p"
  splits = ("train", "val", "testA", "testB")


class RefCOCOg(RefCOCOBase):
  name = "refcocog"
  folder = "refcocog"
  refs_file = "refs(umd).p"
  splits = ("train", "val", "test")
