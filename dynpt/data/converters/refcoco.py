"""Referring expressions: RefCOCO, RefCOCO+ (UNC splits) and RefCOCOg (UMD splits).

Reads the layout of https://github.com/lichengunc/refer: `<raw_dir>/<refcoco|refcoco+|
refcocog>/refs(<unc|umd>).p` (a pickle list of refs) and `instances.json` (COCO format)
beside it. One record per sentence; the box is the referred annotation's
`[x, y, w, h]`, written as pixels xyxy. Images are COCO train2014.

The refs files are Python pickles: only convert files from the official release.
"""

from __future__ import annotations

import collections
import os
import pickle
from typing import Any

from dynpt.data.converters import base


def load_refs(path: str) -> list[dict[str, Any]]:
  """Loads a refs pickle (the official files are Python 2 pickles of byte strings)."""
  def load(encoding: str) -> Any:
    with open(path, "rb") as f:
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
    return base.find_file(os.path.join(self.raw_dir, self.folder), [name],
                          f"{self.name} {name}")

  def list_items(self, split: str, counts: collections.Counter) -> list[Any]:
    refs_path = self._path(self.refs_file)
    refs = load_refs(refs_path)
    instances = base.load_json(self._path("instances.json"))
    if not isinstance(instances, dict):
      raise ValueError(f"{self.name} instances.json: expected a COCO-format json object")
    images = {im["id"]: im for im in instances.get("images", [])}
    boxes = {ann["id"]: ann["bbox"] for ann in instances.get("annotations", [])}
    items = []
    for ref in refs:
      try:
        if ref["split"] != split:
          continue
        ann_id, image = ref["ann_id"], int(ref["image_id"])
        sentences = [s["sent"] for s in ref["sentences"]]
      except (KeyError, TypeError, ValueError):
        counts["malformed_row"] += 1
        continue
      if ann_id not in boxes:
        counts["missing_annotation"] += len(sentences)
        continue
      try:
        x, y, w, h = (float(v) for v in boxes[ann_id])
      except (TypeError, ValueError):
        counts["malformed_annotation"] += len(sentences)
        continue
      file_name = images.get(image, {}).get("file_name", f"COCO_train2014_{image:012d}.jpg")
      for sent in sentences:
        items.append({"image": image, "file_name": file_name, "refexp": str(sent),
                      "bbox": [x, y, x + w, y + h]})
    return items

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    path = base.find_image([self.image_dir, os.path.join(self.raw_dir, "train2014")],
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
