"""Label sources: Open Images labels and boxes, ImageNet-21k, Visual Genome objects.

All three write `objects/label`; Open Images and Visual Genome also write
`objects/bbox` (pixels, xyxy). Open Images labels are the human-verified positives
only (Confidence == 1), which are non-exhaustive by nature: an absent label is not a
negative. Label sources write `labels.txt`, the class names of their written records.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterator

from absl import logging

from dynpt.converters import base
from dynpt.converters import fs
from dynpt.converters import ids
from dynpt.converters import images
from dynpt.converters import img2dataset
from dynpt.converters import raw_files
from dynpt.converters import skips

OI_LABEL_FILES = {
    "train": ("oidv6-train-annotations-human-imagelabels.csv",
              "oidv7-train-annotations-human-imagelabels.csv",
              "train-annotations-human-imagelabels.csv"),
    "validation": ("validation-annotations-human-imagelabels.csv",
                   "oidv6-validation-annotations-human-imagelabels.csv",
                   "oidv7-val-annotations-human-imagelabels.csv"),
}
OI_BOX_FILES = {
    "train": ("oidv6-train-annotations-bbox.csv", "train-annotations-bbox.csv"),
    "validation": ("validation-annotations-bbox.csv",
                   "oidv6-validation-annotations-bbox.csv"),
}
OI_CLASS_FILES = ("oidv7-class-descriptions.csv", "oidv6-class-descriptions.csv",
                  "class-descriptions.csv", "class-descriptions-boxable.csv")
OI_COLUMNS = ["ImageID", "Source", "LabelName", "Confidence"]
OI_BOX_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
# The listing reads the (60M-row) label CSV in byte ranges of this size, in parallel.
OI_CSV_CHUNK_BYTES = 64 << 20


def oi_image_folders(conv: base.Converter, image: str) -> list[str]:
  """Where an Open Images image may be, the official tarball layout first.

  `train_<c>.tar.gz` unpacks to `train_<c>/` holding the train images whose id starts
  with hex digit `c`; `validation.tar.gz` and `test.tar.gz` to `validation/` and
  `test/`. Each is searched under `--image_dir` if given, else under `raw_dir` and
  then `raw_dir/images`; flat folders and `<split>/` are searched last.
  """
  roots = [conv.image_dir] if conv.options.image_dir else [conv.raw_dir, conv.image_dir]
  subdirs = [f"train_{image[:1].lower()}", "validation", "test", "train"]
  return [fs.join(r, d) for r in roots for d in subdirs] + roots


def read_oi_classes(path: str) -> dict[str, str]:
  """Reads `LabelName,DisplayName` rows; the header (v6 and later) is optional."""
  names = {}
  for entry in raw_files.iter_csv(path):
    if isinstance(entry, skips.Skipped):  # Its class's labels are then `unknown_label`.
      logging.warning("%s: %s", entry.where, entry.reason)
      continue
    line, row = entry
    if line == 1 and row[:2] == ["LabelName", "DisplayName"]:
      continue
    if len(row) >= 2:
      names[row[0]] = row[1]
  if not names:
    raise ValueError(f"{path}: no `LabelName,DisplayName` rows")
  return names


def _csv_header(path: str) -> list[str]:
  first = next(raw_files.iter_csv(path), None)
  return [] if first is None or isinstance(first, skips.Skipped) else first[1]


class OpenImagesLabels(base.Converter):
  """Open Images verified image-level labels and boxes -> `objects/label`, `objects/bbox`.

  Rows of the label CSV and the box CSV (optional) are listed in parallel byte ranges
  and grouped per image. A record's labels are its boxes' class names, one per box
  in the box CSV's order, then its other verified labels; `objects/bbox` holds one box
  per box label (so the first `len(objects/bbox)` labels have boxes). An image with
  neither a verified label nor a box is `no_verified_labels`.
  """

  name = "oi"
  splits = ("train", "validation")
  grouped = True
  writes_labels = True

  def list_units(self, split: str) -> list[Any]:
    self._classes = read_oi_classes(
        raw_files.find_file(self.raw_dir, OI_CLASS_FILES, "oi class descriptions"))
    path = raw_files.find_file(self.raw_dir, OI_LABEL_FILES[split], f"oi {split} labels")
    header = _csv_header(path)
    if header[:4] != OI_COLUMNS:
      raise ValueError(f"{path}: expected header {OI_COLUMNS}, got {header}")
    units = [("labels", r, None) for r in raw_files.csv_byte_ranges(path, OI_CSV_CHUNK_BYTES)]
    try:
      box_path = raw_files.find_file(self.raw_dir, OI_BOX_FILES[split], f"oi {split} boxes")
    except FileNotFoundError:
      return units  # Boxes are optional: records then have labels only.
    header = _csv_header(box_path)
    missing = [c for c in OI_BOX_COLUMNS if c not in header]
    if missing:
      raise ValueError(f"{box_path}: missing columns {missing} (header {header})")
    cols = [header.index(c) for c in OI_BOX_COLUMNS]
    return units + [("boxes", r, cols)
                    for r in raw_files.csv_byte_ranges(box_path, OI_CSV_CHUNK_BYTES)]

  def expand_unit(self, split: str, unit: Any) -> Iterator[Any]:
    kind, (path, start, stop), cols = unit
    for entry in raw_files.iter_csv_range(path, start, stop):
      if isinstance(entry, skips.Skipped):
        yield entry
        continue
      where, row = entry
      position = int(where[len(path) + 1:].split(":", 1)[0])
      if position == 0:
        continue  # The header.
      image = row[cols[0]] if kind == "boxes" and len(row) > cols[0] else row[0]
      unsafe = images.unsafe_name(where, "ImageID", f"{image}.jpg")
      if unsafe:
        yield unsafe
        continue
      if kind == "labels":
        if len(row) != 4:
          yield skips.Skipped("malformed_row", where)
          continue
        image, _, label, confidence = row
        try:
          verified = float(confidence) == 1.0
        except ValueError:
          yield skips.Skipped("malformed_row", where)
          continue
        if verified and label not in self._classes:
          yield skips.Skipped("unknown_label", where)
          verified = False
        yield image, ("label", position, self._classes[label] if verified else None)
      else:
        try:
          image, label = row[cols[0]], row[cols[1]]
          x0, x1, y0, y1 = (float(row[c]) for c in cols[2:])
        except (IndexError, ValueError):
          yield skips.Skipped("malformed_row", where)
          continue
        if not all(map(math.isfinite, (x0, x1, y0, y1))):
          yield skips.Skipped("malformed_row", f"{where} (a box coordinate is not finite)")
          continue
        if label not in self._classes:
          yield skips.Skipped("unknown_label", where)
          continue
        yield image, ("box", position, self._classes[label], [x0, y0, x1, y1])

  def combine_group(self, split: str, key: str, parts: list[Any]) -> Any:
    parts = sorted(parts, key=lambda p: (p[0] != "box", p[1]))
    box_labels = [p[2] for p in parts if p[0] == "box"]
    boxes = [p[3] for p in parts if p[0] == "box"]
    names = list(box_labels)
    for p in parts:
      if p[0] == "label" and p[2] is not None and p[2] not in names:
        names.append(p[2])
    if not names:
      return skips.Skipped("no_verified_labels", f"oi image {key}")
    return {"image_id": key, "labels": names, "boxes": boxes}

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    path = images.find_image(oi_image_folders(self, item["image_id"]),
                             [f"{item['image_id']}.jpg"])
    record = self.image_record(ids.image_id("oi", item["image_id"]), path)
    w, h = record["image/width"], record["image/height"]
    boxes = [[x0 * w, y0 * h, x1 * w, y1 * h] for x0, y0, x1, y1 in item["boxes"]]
    return {**record, "objects/label": item["labels"], "objects/bbox": boxes}


def read_words(path: str) -> dict[str, str]:
  """Reads ImageNet `words.txt` (`n01440764\\ttench, Tinca tinca`) -> first name per synset."""
  names = {}
  for entry in raw_files.iter_csv(path, delimiter="\t"):
    if isinstance(entry, skips.Skipped):  # Its synset's images are then `unknown_label`.
      logging.warning("%s: %s", entry.where, entry.reason)
      continue
    _, row = entry
    if len(row) >= 2 and row[0].strip():
      names[row[0].strip()] = row[1].split(",")[0].strip()
  if not names:
    raise ValueError(f"{path}: no `wnid\\tname` rows")
  return names


def _is_wnid(name: str) -> bool:
  return name.startswith("n") and ids.is_number(name[1:])


class ImageNet21k(base.Converter):
  """ImageNet-21k: one `n*.tar` per synset (winter21 release) or class folders.

  The release's synset tars are read directly (headers only when listing, one tar per
  listing unit); `n01440764/*.JPEG` folders work too. They are looked for in
  `image_dir` (default `raw_dir`) and in `winter21_whole/` below it, as the release's
  outer archive unpacks. The label is the synset's first name in `words.txt`. The
  release has no validation split, so a hash-chosen 1/holdout_every of the images is
  held out (`validation`); ids are `in21k:<wnid>/<file stem>`.
  """

  name = "in21k"
  splits = ("train", "validation")
  default_image_subdir = ""
  writes_labels = True
  image_extensions = (".jpeg", ".jpg", ".png")

  def list_units(self, split: str) -> list[Any]:
    self._words = read_words(raw_files.find_file(self.raw_dir, ["words.txt"],
                                                 "in21k synset names"))
    units = []
    for root in (self.image_dir, fs.join(self.image_dir, "winter21_whole")):
      folders = set(fs.subdirs(root))
      for name in fs.listdir(root):
        if name.endswith(".tar") and _is_wnid(name[:-4]):
          units.append(("tar", fs.join(root, name)))
        elif _is_wnid(name) and name in folders:
          units.append(("dir", fs.join(root, name)))
    if not units:
      raise FileNotFoundError(f"in21k: no synset tars (n*.tar) or folders (n*/) in "
                              f"{self.image_dir!r} (see docs/data_real.md)")
    return units

  def expand_unit(self, split: str, unit: tuple[str, str]) -> Iterator[Any]:
    kind, path = unit
    name = os.path.basename(path.rstrip("/"))
    wnid = name[:-4] if kind == "tar" else name
    if kind == "tar":
      members = (m if isinstance(m, skips.Skipped) else
                 (os.path.basename(m[0]), (path, m[1], m[2]))
                 for m in img2dataset.tar_members(path))
    else:
      members = ((n, fs.join(path, n)) for n in fs.listdir(path))
    for member in members:
      if isinstance(member, skips.Skipped):  # Counted in each split that lists the tar.
        yield member
        continue
      fname, source = member
      stem, ext = os.path.splitext(fname)
      if ext.lower() not in self.image_extensions:
        continue
      key = f"{wnid}/{stem}"
      if ids.holdout_split(key, self.options.holdout_every) != split:
        continue
      if wnid not in self._words:
        yield skips.Skipped("unknown_label", f"{path}: {fname} ({wnid} not in words.txt)")
        continue
      item = {"key": key, "label": self._words[wnid]}
      item["member" if kind == "tar" else "path"] = source
      yield item

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    key = ids.image_id("in21k", item["key"])
    if "member" in item:
      data, width, height = self.check_image(
          img2dataset.read_member(item["member"], self.options.max_file_bytes),
          f"{item['member'][0]}:{item['key']}")
      record = {"image/id": key, "image/encoded": data, "image/width": width,
                "image/height": height}
    else:
      record = self.image_record(key, item["path"])
    return {**record, "objects/label": [item["label"]]}


def vg_image_id(meta: dict[str, Any]) -> str:
  """The shared id of a Visual Genome image: COCO id, else Flickr id, else VG id.

  Using the COCO/Flickr ids lets `clean_splits` find VG images that are also COCO
  (VQAv2, RefCOCO) or Flickr30k (SNLI-VE) images; GQA uses the same function.
  """
  if meta.get("coco_id"):
    return ids.image_id("coco", meta["coco_id"])
  if meta.get("flickr_id"):
    return ids.image_id("flickr", meta["flickr_id"])
  return ids.image_id("vg", meta.get("image_id", meta.get("id")))


def read_vg_image_data(path: str) -> dict[int, dict[str, Any]]:
  """Reads `image_data.json` into image_id -> metadata.

  An entry without a usable id is left out with a warning (its images then get
  `vg:<id>` ids instead of shared ones).
  """
  data = raw_files.load_json(path)
  if not isinstance(data, list):
    raise ValueError(f"{path}: expected a json list of image metadata")
  out, bad = {}, []
  for i, m in enumerate(data):
    try:
      out[ids.as_int(m.get("image_id", m.get("id")))] = m
    except (AttributeError, ValueError):
      bad.append(i)
  if bad:
    logging.warning("%s: %d entries without a usable image_id left out, e.g. [%d]", path,
                    len(bad), bad[0])
  return out


class VisualGenome(base.Converter):
  """Visual Genome objects: first name of each object + its box, pixels xyxy.

  No official split: a hash-chosen 1/holdout_every of the images is `validation`.
  """

  name = "vg"
  splits = ("train", "validation")
  default_image_subdir = ""
  writes_labels = True

  def locate(self, split: str) -> dict[str, str]:
    return {"meta": raw_files.find_file(self.raw_dir, ["image_data.json"], "vg image metadata"),
            "objects": raw_files.find_file(self.raw_dir, ["objects.json"], "vg objects")}

  def list_items(self, split: str, unit: dict[str, str]) -> Iterator[Any]:
    meta = read_vg_image_data(unit["meta"])
    objects = raw_files.load_json(unit["objects"])
    if not isinstance(objects, list):
      raise ValueError(f"{unit['objects']}: expected a json list of images")
    for i, entry in enumerate(objects):
      try:
        vg_id = ids.as_int(entry.get("image_id", entry.get("id")))
        objs = list(entry["objects"])
      except (AttributeError, KeyError, TypeError, ValueError):
        yield skips.Skipped("malformed_row", f"{unit['objects']}: [{i}]")
        continue
      if ids.holdout_split(str(vg_id), self.options.holdout_every) != split:
        continue
      labels, boxes = [], []
      for o in objs:
        try:
          names = [n.strip() for n in o.get("names", []) if n.strip()]
          x, y, w, h = (float(o[k]) for k in ("x", "y", "w", "h"))
        except (AttributeError, KeyError, TypeError, ValueError):
          continue
        if names and w > 0 and h > 0 and all(map(math.isfinite, (x, y, w, h))):
          labels.append(names[0])
          boxes.append([x, y, x + w, y + h])
      if not labels:
        yield skips.Skipped("no_objects", f"{unit['objects']}: image_id {vg_id}")
        continue
      m = meta.get(vg_id, {"image_id": vg_id})
      yield {"vg_id": vg_id, "id": vg_image_id(m), "labels": labels, "boxes": boxes}

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    folders = [fs.join(self.image_dir, d) for d in ("VG_100K", "VG_100K_2")]
    path = images.find_image(folders + [self.image_dir], [f"{item['vg_id']}.jpg"])
    record = self.image_record(item["id"], path)
    w, h = record["image/width"], record["image/height"]
    labels, boxes = [], []
    for label, (x0, y0, x1, y1) in zip(item["labels"], item["boxes"]):
      box = [max(x0, 0.0), max(y0, 0.0), min(x1, w), min(y1, h)]  # Clip to the image.
      if box[2] > box[0] and box[3] > box[1]:
        labels.append(label)
        boxes.append(box)
    if not labels:
      raise skips.Skip("no_objects", f"vg image {item['vg_id']}: every box is outside")
    return {**record, "objects/label": labels, "objects/bbox": boxes}
