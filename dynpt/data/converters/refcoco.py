"""Referring expressions: RefCOCO, RefCOCO+ (UNC splits) and RefCOCOg (UMD splits).

Reads the layout of https://github.com/lichengunc/refer: `<raw_dir>/<refcoco|refcoco+|
refcocog>/refs(<unc|umd>).p` (a pickle list of refs) and `instances.json` (COCO format)
beside it. One record per sentence; the box is the referred annotation's
`[x, y, w, h]`, written as pixels xyxy. Images are COCO train2014.

The refs files are Python pickles: only convert files from the official release.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Iterator

from dynpt.data.converters import base
from dynpt.data.converters import fs


def load_refs(path: str) -> list[dict[str, Any]]:
  """Loads a refs pickle (the official files are Python 2 pickles of byte strings)."""
  def load(encoding: str) -> Any:
    with fs.open_file(path, "rb") as f:
      return pickle.load(f, encoding=encoding)

  try:
    try:
      refs = load("ASCII")
    except UnicodeDecodeError:
      refs = load("latin1")  # Python 2 byte strings with non-ASCII characters.
  except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
    raise ValueError(f"{path}: not a readable refs pickle ({e})") from e
  if not isinstance(refs, list):
    raise ValueError(f"{path}: expected a pickled list of refs")
  return refs


class RefCOCOBase(base.Converter):
  """Shared reader; subclasses set the folder, refs file and splits."""

  folder = ""
  refs_file = ""
  default_image_subdir = os.path.join("images", "mscoco", "images", "train2014")

  def _path(self, name: str) -> str:
    return base.find_file(fs.join(self.raw_dir, self.folder), [name],
                          f"{self.name} {name}")

  def locate(self, split: str) -> dict[str, str]:
    return {"refs": self._path(self.refs_file), "instances": self._path("instances.json")}

  def list_items(self, split: str, unit: dict[str, str]) -> Iterator[Any]:
    refs_path = unit["refs"]
    refs = load_refs(refs_path)
    instances = base.load_json(unit["instances"])
    if not isinstance(instances, dict):
      raise ValueError(f"{unit['instances']}: expected a COCO-format json object")
    images = {im["id"]: im for im in instances.get("images", [])}
    boxes = {ann["id"]: ann["bbox"] for ann in instances.get("annotations", [])}
    for i, ref in enumerate(refs):
      where = f"{refs_path}: refs[{i}]"
      try:
        if ref["split"] != split:
          continue
        ann_id, image = ref["ann_id"], int(ref["image_id"])
        sentences = [s["sent"] for s in ref["sentences"]]
      except (KeyError, TypeError, ValueError):
        yield base.Skipped("malformed_row", where)
        continue
      if ann_id not in boxes:
        for _ in sentences:
          yield base.Skipped("missing_annotation", f"{where}: ann_id {ann_id}")
        continue
      try:
        x, y, w, h = (float(v) for v in boxes[ann_id])
      except (TypeError, ValueError):
        for _ in sentences:
          yield base.Skipped("malformed_annotation", f"{where}: ann_id {ann_id}")
        continue
      file_name = images.get(image, {}).get("file_name", f"COCO_train2014_{image:012d}.jpg")
      for sent in sentences:
        yield {"image": image, "file_name": file_name, "refexp": str(sent),
               "bbox": [x, y, x + w, y + h]}

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    path = base.find_image([self.image_dir, fs.join(self.raw_dir, "train2014")],
                           [item["file_name"]])
    return {**base.image_record(base.image_id("coco", item["image"]), path),
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
