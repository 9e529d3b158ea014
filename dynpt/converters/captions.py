"""Caption sources: Conceptual Captions 3M / 12M and Localized Narratives.

Conceptual Captions ship as TSVs of captions and URLs without a header (a
`caption<TAB>url` or `url<TAB>caption` header added for img2dataset is recognised and
is not counted as a row). Users download the images themselves, either with
img2dataset's webdataset output (`*.tar` + `*.parquet`, see `img2dataset.py`; each
tar and parquet is one listing unit) or into a folder of files named by TSV row
(`<row>.jpg`, any sub-folders, zero-padding allowed, as img2dataset's `files` format
writes them; the TSV and each sub-folder are listing units, joined on the row). Both
give `image/id = cc3m:<row>` (resp. `cc12m:<row>`), the 0-based data row of the TSV.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Iterator

from dynpt.converters import base
from dynpt.converters import fs
from dynpt.converters import ids
from dynpt.converters import images
from dynpt.converters import img2dataset
from dynpt.converters import labels
from dynpt.converters import raw_files
from dynpt.converters import skips


def _row_of(name: str) -> int | None:
  stem, ext = os.path.splitext(name)
  if ids.is_number(stem) and ext.lower() in img2dataset.IMAGE_EXTENSIONS:
    return int(stem)
  return None


class ConceptualCaptions(base.Converter):
  """CC3M (`caption\\turl`, one TSV per split) and CC12M (`url\\tcaption`, one TSV)."""

  splits = ("train", "validation")
  # split -> TSV file name; None means "hold out a hash-chosen part of train".
  tsv_files: dict[str, str | None] = {}
  caption_column = 0
  images_per_split = True  # Images live in `<image_dir>/<split>/`.

  def _tsv(self, split: str) -> str:
    name = self.tsv_files.get(split) or self.tsv_files["train"]
    return raw_files.find_file(self.raw_dir, [name], f"{self.name} {split} TSV")

  def _image_folder(self, split: str) -> str:
    return fs.join(self.image_dir, split) if self.images_per_split else self.image_dir

  def _keep(self, row: int, split: str) -> bool:
    if self.tsv_files["validation"]:  # An official validation TSV: keep every row.
      return True
    return ids.holdout_split(str(row), self.options.holdout_every) == split

  def list_units(self, split: str) -> list[Any]:
    """Tars and parquets of img2dataset output, else the TSV and the image sub-folders.

    Sets `grouped`: rows of a TSV are joined with the image files by row number.
    """
    folder = self._image_folder(split)
    if img2dataset.has_img2dataset_output(folder):
      self.grouped = False
      return ([("tar", p) for p in fs.glob(fs.join(folder, "*.tar"))]
              + [("parquet", p) for p in fs.glob(fs.join(folder, "*.parquet"))])
    self.grouped = True
    units: list[Any] = [("tsv", self._tsv(split)), ("files", folder)]
    units += [("tree", fs.join(folder, n)) for n in fs.subdirs(folder)]
    return units

  def expand_unit(self, split: str, unit: tuple[str, str]) -> Iterator[Any]:
    kind, path = unit
    if kind == "tar":
      for sample in img2dataset.index_tar(path):
        if isinstance(sample, skips.Skipped):
          yield sample
        elif not ids.is_number(sample["key"]):
          yield skips.Skipped("malformed_row", f"{path}: key {sample['key']!r}")
        elif self._keep(int(sample["key"]), split):
          yield {"row": int(sample["key"]), "sample": sample}
    elif kind == "parquet":
      for key, status in img2dataset.failed_downloads(path):
        if not ids.is_number(key) or self._keep(int(key), split):
          yield skips.Skipped("download_failed", f"{path}: key {key} ({status})")
    elif kind == "tsv":
      yield from self._tsv_rows(split, path)
    else:  # Image files named by row: directly in the folder, or anywhere below it.
      walk = ([(path, [], fs.listdir(path))] if kind == "files" else fs.walk(path))
      for root, _, names in walk:
        for name in names:
          row = _row_of(name)
          if row is not None and self._keep(row, split):
            yield str(row), {"path": fs.join(root, name)}

  def _tsv_rows(self, split: str, path: str) -> Iterator[Any]:
    rows = raw_files.iter_csv(path, delimiter="\t")
    first = next(rows, None)
    if first is not None and (isinstance(first, skips.Skipped) or sorted(
        f.strip().lower() for f in first[1]) != ["caption", "url"]):
      rows = itertools.chain([first], rows)  # No header (as published): a data row.
    for row, entry in enumerate(rows):
      if not self._keep(row, split):
        continue
      if isinstance(entry, skips.Skipped):  # Not UTF-8: the row keeps its number.
        yield entry
        continue
      line, fields = entry
      if len(fields) != 2 or not fields[self.caption_column].strip():
        yield skips.Skipped("malformed_row", f"{path}:{line}")
        continue
      yield str(row), {"caption": fields[self.caption_column].strip(),
                       "where": f"{path}:{line}"}

  def combine_group(self, split: str, key: str, parts: list[Any]) -> Any:
    caption = next((p for p in parts if "caption" in p), None)
    if caption is None:
      return None  # An image file whose TSV row is malformed (recorded) or absent.
    path = min((p["path"] for p in parts if "path" in p), default=None)
    if path is None:
      return skips.Skipped("missing_image", f"{caption['where']}: no image for row {key}")
    return {"row": int(key), "caption": caption["caption"], "path": path}

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    key = ids.image_id(self.name, item["row"])
    if "sample" in item:
      sample = item["sample"]
      data, width, height = self.check_image(
          img2dataset.read_member(sample["image"], self.options.max_file_bytes),
          f"{sample['image'][0]}:{sample['key']}")
      caption = img2dataset.sample_caption(sample)
      if not caption:
        raise skips.Skip("missing_caption", f"{sample['image'][0]}: key {sample['key']}")
      return {"image/id": key, "image/encoded": data, "image/width": width,
              "image/height": height, "text/captions": [caption]}
    return {**self.image_record(key, item["path"]), "text/captions": [item["caption"]]}


class CC3M(ConceptualCaptions):
  name = "cc3m"
  tsv_files = {"train": "Train_GCC-training.tsv",
               "validation": "Validation_GCC-1.1.0-Validation.tsv"}


class CC12M(ConceptualCaptions):
  name = "cc12m"
  tsv_files = {"train": "cc12m.tsv", "validation": None}
  caption_column = 1
  images_per_split = False


class LocalizedNarratives(base.Converter):
  """Localized Narratives on Open Images: all narratives of an image become its captions.

  Each jsonl file is a listing unit; narratives are grouped per image (in file and
  line order). Images are Open Images files, found as the official tarballs unpack
  (`train_0/` ... `train_f/`, `validation/`, `test/`) under `image_dir` or `raw_dir`
  (see `labels.oi_image_folders`); ids are `oi:<image_id>`, shared with `oi`.
  """

  name = "ln"
  splits = ("train", "validation")
  grouped = True
  jsonl_patterns = {
      "train": ("open_images_train_v6_captions.jsonl",
                "open_images_train_v6_localized_narratives-*.jsonl"),
      "validation": ("open_images_validation_captions.jsonl",
                     "open_images_validation_localized_narratives.jsonl"),
  }

  def list_units(self, split: str) -> list[Any]:
    return raw_files.find_files(self.raw_dir, self.jsonl_patterns[split], f"ln {split}")

  def expand_unit(self, split: str, unit: str) -> Iterator[Any]:
    for row in raw_files.iter_jsonl(unit):
      if isinstance(row, skips.Skipped):
        yield row
        continue
      where, obj = row
      image, caption = obj.get("image_id"), obj.get("caption")
      if not isinstance(image, str) or not isinstance(caption, str) or not caption.strip():
        yield skips.Skipped("malformed_row", f"{where}: no image_id or caption")
        continue
      unsafe = images.unsafe_name(where, "image_id", f"{image}.jpg")
      if unsafe:
        yield unsafe
        continue
      path, line = where.rsplit(":", 1)
      yield image, (path, int(line), caption.strip())

  def combine_group(self, split: str, key: str, parts: list[Any]) -> Any:
    return {"image_id": key, "captions": [c for _, _, c in sorted(parts)]}

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    path = images.find_image(labels.oi_image_folders(self, item["image_id"]),
                             [f"{item['image_id']}.jpg"])
    return {**self.image_record(ids.image_id("oi", item["image_id"]), path),
            "text/captions": item["captions"]}
