"""Label sources: Open Images image-level labels, ImageNet-21k, Visual Genome objects.

All three write `objects/label`; Visual Genome also writes `objects/bbox` (pixels,
xyxy). Open Images labels are the human-verified positives only (Confidence == 1),
which are non-exhaustive by nature: an absent label is not a negative.
"""

from __future__ import annotations

import collections
import os
from typing import Any

from dynpt.data.converters import base

OI_LABEL_FILES = {
    "train": ("oidv6-train-annotations-human-imagelabels.csv",
              "oidv7-train-annotations-human-imagelabels.csv",
              "train-annotations-human-imagelabels.csv"),
    "validation": ("validation-annotations-human-imagelabels.csv",
                   "oidv6-validation-annotations-human-imagelabels.csv",
                   "oidv7-val-annotations-human-imagelabels.csv"),
}
OI_CLASS_FILES = ("oidv7-class-descriptions.csv", "oidv6-class-descriptions.csv",
                  "class-descriptions.csv", "class-descriptions-boxable.csv")
OI_COLUMNS = ["ImageID", "Source", "LabelName", "Confidence"]


def read_oi_classes(path: str) -> dict[str, str]:
  """Reads `LabelName,DisplayName` rows; the header (v6 and later) is optional."""
  names = {}
  for i, row in enumerate(base.iter_csv(path)):
    if i == 0 and row[:2] == ["LabelName", "DisplayName"]:
      continue
    if len(row) >= 2:
      names[row[0]] = row[1]
  if not names:
    raise ValueError(f"{path}: no `LabelName,DisplayName` rows")
  return names


class OpenImagesLabels(base.Converter):
  """Open Images image-level labels -> `objects/label` (display names), no boxes."""

  name = "oi"
  splits = ("train", "validation")

  def list_items(self, split: str, counts: collections.Counter) -> list[Any]:
    classes = read_oi_classes(
        base.find_file(self.raw_dir, OI_CLASS_FILES, "oi class descriptions"))
    path = base.find_file(self.raw_dir, OI_LABEL_FILES[split], f"oi {split} labels")
    rows = base.iter_csv(path)
    header = next(rows, None)
    if header is None or header[:4] != OI_COLUMNS:
      raise ValueError(f"{path}: expected header {OI_COLUMNS}, got {header}")
    labels: dict[str, list[str]] = collections.defaultdict(list)
    for row in rows:
      if len(row) != 4:
        counts["malformed_row"] += 1
        continue
      image, _, label, confidence = row
      try:
        verified = float(confidence) == 1.0
      except ValueError:
        counts["malformed_row"] += 1
        continue
      if not verified:
        labels.setdefault(image, [])  # Counted below if it ends with no label at all.
        continue
      if label not in classes:
        counts["unknown_label"] += 1
        labels.setdefault(image, [])
        continue
      if classes[label] not in labels[image]:
        labels[image].append(classes[label])
    items = []
    for image, names in labels.items():
      if names:
        items.append({"image_id": image, "labels": names})
      else:
        counts["no_verified_labels"] += 1
    return items

  def label_names(self, items: list[Any]) -> set[str]:
    return {name for item in items for name in item["labels"]}

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    folders = [os.path.join(self.image_dir, s) for s in self.splits] + [self.image_dir]
    path = base.find_image(folders, [f"{item['image_id']}.jpg"])
    return {**base.image_record(base.image_id("oi", item["image_id"]), path),
            "objects/label": item["labels"]}


def read_words(path: str) -> dict[str, str]:
  """Reads ImageNet `words.txt` (`n01440764\\ttench, Tinca tinca`) -> first name per synset."""
  names = {}
  for row in base.iter_csv(path, delimiter="\t"):
    if len(row) >= 2 and row[0].strip():
      names[row[0].strip()] = row[1].split(",")[0].strip()
  if not names:
    raise ValueError(f"{path}: no `wnid\\tname` rows")
  return names


class ImageNet21k(base.Converter):
  """ImageNet-21k class folders `n01440764/*.JPEG`; label = the synset's first name.

  The release has no validation split, so a hash-chosen 1/holdout_every of the files
  is held out (`validation`); ids are `in21k:<wnid>/<file stem>`.
  """

  name = "in21k"
  splits = ("train", "validation")
  default_image_subdir = ""

  def list_items(self, split: str, counts: collections.Counter) -> list[Any]:
    words = read_words(base.find_file(self.raw_dir, ["words.txt"], "in21k synset names"))
    items = []
    for wnid in sorted(os.listdir(self.image_dir)):
      folder = os.path.join(self.image_dir, wnid)
      if not (os.path.isdir(folder) and wnid.startswith("n") and wnid[1:].isdigit()):
        continue
      for fname in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(fname)
        if ext.lower() not in (".jpeg", ".jpg", ".png"):
          continue
        key = f"{wnid}/{stem}"
        if base.holdout_split(key, self.options.holdout_every) != split:
          continue
        if wnid not in words:
          counts["unknown_label"] += 1
          continue
        items.append({"key": key, "path": os.path.join(folder, fname),
                      "label": words[wnid]})
    return items

  def label_names(self, items: list[Any]) -> set[str]:
    return {item["label"] for item in items}

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    return {**base.image_record(base.image_id("in21k", item["key"]), item["path"]),
            "objects/label": [item["label"]]}


def vg_image_id(meta: dict[str, Any]) -> str:
  """The shared id of a Visual Genome image: COCO id, else Flickr id, else VG id.

  Using the COCO/Flickr ids lets `clean_splits` find VG images that are also COCO
  (VQAv2, RefCOCO) or Flickr30k (SNLI-VE) images; GQA uses the same function.
  """
  if meta.get("coco_id"):
    return base.image_id("coco", meta["coco_id"])
  if meta.get("flickr_id"):
    return base.image_id("flickr", meta["flickr_id"])
  return base.image_id("vg", meta.get("image_id", meta.get("id")))


def read_vg_image_data(path: str) -> dict[int, dict[str, Any]]:
  """Reads `image_data.json` into image_id -> metadata."""
  data = base.load_json(path)
  if not isinstance(data, list):
    raise ValueError(f"{path}: expected a json list of image metadata")
  return {int(m.get("image_id", m.get("id"))): m for m in data
          if isinstance(m, dict) and m.get("image_id", m.get("id")) is not None}


class VisualGenome(base.Converter):
  """Visual Genome objects: first name of each object + its box, pixels xyxy.

  No official split: a hash-chosen 1/holdout_every of the images is `validation`.
  """

  name = "vg"
  splits = ("train", "validation")
  default_image_subdir = ""

  def list_items(self, split: str, counts: collections.Counter) -> list[Any]:
    meta = read_vg_image_data(
        base.find_file(self.raw_dir, ["image_data.json"], "vg image metadata"))
    objects = base.load_json(
        base.find_file(self.raw_dir, ["objects.json"], "vg objects"))
    items = []
    for entry in objects:
      try:
        vg_id = int(entry.get("image_id", entry.get("id")))
        objs = entry["objects"]
      except (AttributeError, KeyError, TypeError, ValueError):
        counts["malformed_row"] += 1
        continue
      if base.holdout_split(str(vg_id), self.options.holdout_every) != split:
        continue
      labels, boxes = [], []
      for o in objs:
        try:
          names = [n.strip() for n in o.get("names", []) if n.strip()]
          x, y, w, h = (float(o[k]) for k in ("x", "y", "w", "h"))
        except (AttributeError, KeyError, TypeError, ValueError):
          continue
        if names and w > 0 and h > 0:
          labels.append(names[0])
          boxes.append([x, y, x + w, y + h])
      if not labels:
        counts["no_objects"] += 1
        continue
      m = meta.get(vg_id, {"image_id": vg_id})
      items.append({"vg_id": vg_id, "id": vg_image_id(m), "labels": labels,
                    "boxes": boxes})
    return items

  def label_names(self, items: list[Any]) -> set[str]:
    return {name for item in items for name in item["labels"]}

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    folders = [os.path.join(self.image_dir, d) for d in ("VG_100K", "VG_100K_2")]
    path = base.find_image(folders + [self.image_dir], [f"{item['vg_id']}.jpg"])
    record = base.image_record(item["id"], path)
    w, h = record["image/width"], record["image/height"]
    labels, boxes = [], []
    for label, (x0, y0, x1, y1) in zip(item["labels"], item["boxes"]):
      box = [max(x0, 0.0), max(y0, 0.0), min(x1, w), min(y1, h)]  # Clip to the image.
      if box[2] > box[0] and box[3] > box[1]:
        labels.append(label)
        boxes.append(box)
    if not labels:
      raise base.Skip("no_objects", f"vg image {item['vg_id']}: every box is outside")
    return {**record, "objects/label": labels, "objects/bbox": boxes}
