"""Caption sources: Conceptual Captions 3M / 12M and Localized Narratives.

Conceptual Captions ship as TSVs of captions and URLs without a header (a
`caption<TAB>url` or `url<TAB>caption` header added for img2dataset is recognised and
is not counted as a row). Users download the images themselves, either into a folder
of files named by TSV row (`<row>.jpg`, any sub-folders, zero-padding allowed, as
img2dataset's `files` format writes them) or with img2dataset's webdataset output
(`*.tar` + `*.parquet`, see `img2dataset.py`). Both give `image/id = cc3m:<row>`
(resp. `cc12m:<row>`), the 0-based data row of the TSV.
"""

from __future__ import annotations

import collections
import glob
import itertools
import os
from typing import Any

from dynpt.data.converters import base
from dynpt.data.converters import img2dataset


def index_row_images(folder: str) -> dict[int, str]:
  """Maps TSV row -> image path for every `<digits>.<ext>` file under `folder`."""
  index = {}
  for root, _, names in os.walk(folder):
    for name in names:
      stem, ext = os.path.splitext(name)
      if stem.isdigit() and ext.lower() in img2dataset.IMAGE_EXTENSIONS:
        index.setdefault(int(stem), os.path.join(root, name))
  return index


class ConceptualCaptions(base.Converter):
  """CC3M (`caption\\turl`, one TSV per split) and CC12M (`url\\tcaption`, one TSV)."""

  splits = ("train", "validation")
  # split -> TSV file name; None means "hold out a hash-chosen part of train".
  tsv_files: dict[str, str | None] = {}
  caption_column = 0
  images_per_split = True  # Images live in `<image_dir>/<split>/`.

  def _tsv(self, split: str) -> str:
    name = self.tsv_files.get(split) or self.tsv_files["train"]
    return base.find_file(self.raw_dir, [name], f"{self.name} {split} TSV")

  def _image_folder(self, split: str) -> str:
    return os.path.join(self.image_dir, split) if self.images_per_split else self.image_dir

  def _keep(self, row: int, split: str) -> bool:
    if self.tsv_files["validation"]:  # An official validation TSV: keep every row.
      return True
    return base.holdout_split(str(row), self.options.holdout_every) == split

  def list_items(self, split: str, counts: collections.Counter) -> list[Any]:
    folder = self._image_folder(split)
    if img2dataset.has_img2dataset_output(folder):
      items = []
      for sample in img2dataset.index_tars(folder, counts):
        if not sample["key"].isdigit():
          counts["malformed_row"] += 1
        elif self._keep(int(sample["key"]), split):
          items.append({"row": int(sample["key"]), "sample": sample})
      return items
    paths = index_row_images(folder)
    rows = base.iter_csv(self._tsv(split), delimiter="\t")
    first = next(rows, None)
    if first is not None and sorted(f.strip().lower() for f in first) != ["caption", "url"]:
      rows = itertools.chain([first], rows)  # No header (as published): a data row.
    items = []
    for row, fields in enumerate(rows):
      if not self._keep(row, split):
        continue
      if len(fields) != 2 or not fields[self.caption_column].strip():
        counts["malformed_row"] += 1
        continue
      items.append({"row": row, "caption": fields[self.caption_column].strip(),
                    "path": paths.get(row)})
    return items

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    key = base.image_id(self.name, item["row"])
    if "sample" in item:
      sample = item["sample"]
      data, width, height = base.check_image(
          img2dataset.read_member(sample["image"]), f"{sample['image'][0]}:{sample['key']}")
      caption = img2dataset.sample_caption(sample)
      if not caption:
        raise base.Skip("missing_caption", f"{self.name} key {sample['key']}")
      return {"image/id": key, "image/encoded": data, "image/width": width,
              "image/height": height, "text/captions": [caption]}
    if item["path"] is None:
      raise base.Skip("missing_image", f"{self.name} row {item['row']}")
    return {**base.image_record(key, item["path"]), "text/captions": [item["caption"]]}


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

  Images are Open Images files `<image_id>.jpg` in `<image_dir>/<oi split>/` or
  `<image_dir>/`; ids are `oi:<image_id>`, shared with the `oi` label source.
  """

  name = "ln"
  splits = ("train", "validation")
  jsonl_patterns = {
      "train": ("open_images_train_v6_captions.jsonl",
                "open_images_train_v6_localized_narratives-*.jsonl"),
      "validation": ("open_images_validation_captions.jsonl",
                     "open_images_validation_localized_narratives.jsonl"),
  }

  def list_items(self, split: str, counts: collections.Counter) -> list[Any]:
    paths = []
    for pattern in self.jsonl_patterns[split]:
      paths = sorted(glob.glob(os.path.join(self.raw_dir, pattern)))
      if paths:
        break
    if not paths:
      raise FileNotFoundError(
          f"ln {split}: none of {list(self.jsonl_patterns[split])} found in "
          f"{self.raw_dir!r} (see docs/data_real.md)")
    captions: dict[str, list[str]] = collections.defaultdict(list)
    for path in paths:
      for obj in base.iter_jsonl(path, counts):
        image, caption = obj.get("image_id"), obj.get("caption")
        if not isinstance(image, str) or not isinstance(caption, str) or not caption.strip():
          counts["malformed_row"] += 1
          continue
        captions[image].append(caption.strip())
    return [{"image_id": k, "captions": v} for k, v in captions.items()]

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    folders = [os.path.join(self.image_dir, s) for s in self.splits] + [self.image_dir]
    path = base.find_image(folders, [f"{item['image_id']}.jpg"])
    return {**base.image_record(base.image_id("oi", item["image_id"]), path),
            "text/captions": item["captions"]}
