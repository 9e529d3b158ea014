"""Image question answering and entailment: VQAv2, GQA, SNLI-VE (one record per question)."""

from __future__ import annotations

import collections
import os
from typing import Any

from dynpt.data import schema
from dynpt.data.converters import base
from dynpt.data.converters import labels

# split -> (questions file candidates, annotations file or None, COCO image folder).
VQA_FILES = {
    "train": (("v2_OpenEnded_mscoco_train2014_questions.json",),
              "v2_mscoco_train2014_annotations.json", "train2014"),
    "val": (("v2_OpenEnded_mscoco_val2014_questions.json",),
            "v2_mscoco_val2014_annotations.json", "val2014"),
    "test": (("v2_OpenEnded_mscoco_test-dev2015_questions.json",
              "v2_OpenEnded_mscoco_test2015_questions.json"), None, "test2015"),
}


class VQAv2(base.Converter):
  """VQAv2: questions json joined with annotations json on `question_id`.

  `answers` holds the 10 human answers; the test split has questions only.
  Images `<image_dir>/<train2014|val2014|test2015>/COCO_<folder>_%012d.jpg`.
  """

  name = "vqav2"
  splits = ("train", "val", "test")
  default_image_subdir = ""

  def list_items(self, split: str, counts: collections.Counter) -> list[Any]:
    q_names, a_name, folder = VQA_FILES[split]
    q_path = base.find_file(self.raw_dir, q_names, f"vqav2 {split} questions")
    questions = base.load_json(q_path)
    questions = questions.get("questions") if isinstance(questions, dict) else None
    if not isinstance(questions, list):
      raise ValueError(f"{q_path}: expected a `questions` list")
    answers = None
    if a_name:
      a_path = base.find_file(self.raw_dir, [a_name], f"vqav2 {split} annotations")
      answers = {}
      annotations = base.load_json(a_path)
      if not isinstance(annotations, dict) or "annotations" not in annotations:
        raise ValueError(f"{a_path}: expected an `annotations` list")
      for ann in annotations["annotations"]:
        try:
          answers[ann["question_id"]] = [str(a["answer"]) for a in ann["answers"]]
        except (KeyError, TypeError):
          counts["malformed_annotation"] += 1
    items = []
    for q in questions:
      try:
        qid, image, text = q["question_id"], int(q["image_id"]), str(q["question"])
      except (KeyError, TypeError, ValueError):
        counts["malformed_row"] += 1
        continue
      item = {"image": image, "question": text, "folder": folder}
      if answers is not None:
        if qid not in answers:
          counts["missing_annotation"] += 1
          continue
        item["answers"] = answers[qid]
      items.append(item)
    return items

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    folder = item["folder"]
    path = base.find_image([os.path.join(self.image_dir, folder), self.image_dir],
                           [f"COCO_{folder}_{item['image']:012d}.jpg"])
    record = {**base.image_record(base.image_id("coco", item["image"]), path),
              "question": item["question"]}
    if "answers" in item:
      record["answers"] = item["answers"]
    return record


class GQA(base.Converter):
  """GQA balanced questions (`{qid: {imageId, question, answer, ...}}`).

  GQA images are Visual Genome images; if VG's `image_data.json` is in `raw_dir`
  the ids are the same shared ids the `vg` converter writes (COCO/Flickr), else
  `vg:<imageId>`. The `test` split is `testdev` (the public evaluation set).
  """

  name = "gqa"
  splits = ("train", "val", "test")
  files = {"train": "train_balanced_questions.json", "val": "val_balanced_questions.json",
           "test": "testdev_balanced_questions.json"}

  def list_items(self, split: str, counts: collections.Counter) -> list[Any]:
    path = base.find_file(self.raw_dir, [self.files[split]], f"gqa {split} questions")
    questions = base.load_json(path)
    if not isinstance(questions, dict):
      raise ValueError(f"{path}: expected a json object qid -> question")
    meta_path = os.path.join(self.raw_dir, "image_data.json")
    meta = labels.read_vg_image_data(meta_path) if os.path.exists(meta_path) else {}
    items = []
    for q in questions.values():
      try:
        image, text, answer = str(q["imageId"]), str(q["question"]), str(q["answer"])
      except (KeyError, TypeError):
        counts["malformed_row"] += 1
        continue
      if image.isdigit():
        key = labels.vg_image_id(meta.get(int(image), {"image_id": image}))
      else:
        key = base.image_id("gqa", image)
      items.append({"image": image, "id": key, "question": text, "answers": [answer]})
    return items

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    path = base.find_image([self.image_dir], [f"{item['image']}.jpg"])
    return {**base.image_record(item["id"], path), "question": item["question"],
            "answers": item["answers"]}


class SNLIVE(base.Converter):
  """SNLI-VE jsonl (`Flickr30k_ID`, `sentence2`, `gold_label`) on Flickr30k images."""

  name = "snli_ve"
  splits = ("train", "val", "test")
  default_image_subdir = "flickr30k_images"
  files = {"train": "snli_ve_train.jsonl", "val": "snli_ve_dev.jsonl",
           "test": "snli_ve_test.jsonl"}

  def list_items(self, split: str, counts: collections.Counter) -> list[Any]:
    path = base.find_file(self.raw_dir, [self.files[split]], f"snli_ve {split}")
    items = []
    for row in base.iter_jsonl(path, counts):
      image, hypothesis, label = (row.get("Flickr30k_ID"), row.get("sentence2"),
                                  row.get("gold_label"))
      if image is None or not isinstance(hypothesis, str):
        counts["malformed_row"] += 1
      elif label not in schema.LABELS_SNLI:
        counts["bad_label"] += 1
      else:
        items.append({"image": str(image), "hypothesis": hypothesis, "label": label})
    return items

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    path = base.find_image([self.image_dir], [f"{item['image']}.jpg"])
    return {**base.image_record(base.image_id("flickr", item["image"]), path),
            "hypothesis": item["hypothesis"], "label": item["label"]}
