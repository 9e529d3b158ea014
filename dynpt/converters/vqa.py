"""Image question answering and entailment: VQAv2, GQA, SNLI-VE (one record per question)."""

from __future__ import annotations

from typing import Any, Iterator

from dynpt.data import schema
from dynpt.converters import base
from dynpt.converters import fs
from dynpt.converters import ids
from dynpt.converters import images
from dynpt.converters import labels
from dynpt.converters import raw_files
from dynpt.converters import skips

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

  def locate(self, split: str) -> dict[str, str | None]:
    q_names, a_name, _ = VQA_FILES[split]
    return {"questions": raw_files.find_file(self.raw_dir, q_names, f"vqav2 {split} questions"),
            "annotations": a_name and raw_files.find_file(self.raw_dir, [a_name],
                                                          f"vqav2 {split} annotations")}

  def list_items(self, split: str, unit: dict[str, str | None]) -> Iterator[Any]:
    folder = VQA_FILES[split][2]
    q_path, a_path = unit["questions"], unit["annotations"]
    questions = raw_files.load_json(q_path)
    questions = questions.get("questions") if isinstance(questions, dict) else None
    if not isinstance(questions, list):
      raise ValueError(f"{q_path}: expected a `questions` list")
    answers = None
    if a_path:
      answers = {}
      annotations = raw_files.load_json(a_path)
      if not isinstance(annotations, dict) or "annotations" not in annotations:
        raise ValueError(f"{a_path}: expected an `annotations` list")
      if not isinstance(annotations["annotations"], list):
        raise ValueError(f"{a_path}: expected an `annotations` list")
      for i, ann in enumerate(annotations["annotations"]):
        try:
          answers[ann["question_id"]] = [str(a["answer"]) for a in ann["answers"]]
        except (KeyError, TypeError):  # TypeError: not a dict, an unhashable id.
          yield skips.Skipped("malformed_annotation", f"{a_path}: annotations[{i}]")
    for i, q in enumerate(questions):
      try:
        qid, image, text = q["question_id"], ids.as_int(q["image_id"]), str(q["question"])
        hash(qid)
      except (KeyError, TypeError, ValueError):
        yield skips.Skipped("malformed_row", f"{q_path}: questions[{i}]")
        continue
      item = {"image": image, "question": text, "folder": folder}
      if answers is not None:
        if qid not in answers:
          yield skips.Skipped("missing_annotation", f"{q_path}: question_id {qid}")
          continue
        item["answers"] = answers[qid]
      yield item

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    folder = item["folder"]
    path = images.find_image([fs.join(self.image_dir, folder), self.image_dir],
                             [f"COCO_{folder}_{item['image']:012d}.jpg"])
    record = {**self.image_record(ids.image_id("coco", item["image"]), path),
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

  def locate(self, split: str) -> str:
    return raw_files.find_file(self.raw_dir, [self.files[split]], f"gqa {split} questions")

  def list_items(self, split: str, unit: str) -> Iterator[Any]:
    questions = raw_files.load_json(unit)
    if not isinstance(questions, dict):
      raise ValueError(f"{unit}: expected a json object qid -> question")
    meta_path = fs.join(self.raw_dir, "image_data.json")
    meta = labels.read_vg_image_data(meta_path) if fs.exists(meta_path) else {}
    for qid, q in questions.items():
      try:
        image, text, answer = q["imageId"], str(q["question"]), str(q["answer"])
      except (KeyError, TypeError):
        yield skips.Skipped("malformed_row", f"{unit}: question {qid}")
        continue
      if isinstance(image, int) and not isinstance(image, bool):
        image = str(image)
      if not isinstance(image, str):
        yield skips.Skipped("malformed_row", f"{unit}: question {qid}: imageId {image!r}")
        continue
      unsafe = images.unsafe_name(f"{unit}: question {qid}", "imageId", f"{image}.jpg")
      if unsafe:
        yield unsafe
        continue
      if ids.is_number(image):
        key = labels.vg_image_id(meta.get(int(image), {"image_id": image}))
      else:
        key = ids.image_id("gqa", image)
      yield {"image": image, "id": key, "question": text, "answers": [answer]}

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    path = images.find_image([self.image_dir], [f"{item['image']}.jpg"])
    return {**self.image_record(item["id"], path), "question": item["question"],
            "answers": item["answers"]}


class SNLIVE(base.Converter):
  """SNLI-VE jsonl (`Flickr30K_ID`, `sentence2`, `gold_label`) on Flickr30k images.

  The official jsonl spells the key `Flickr30K_ID` (capital K; `Flickr30k_ID` is read
  too). The Flickr30k archive unpacks to `flickr30k-images/` (`flickr30k_images/`, as
  some mirrors name it, is searched as well).
  """

  name = "snli_ve"
  splits = ("train", "val", "test")
  default_image_subdir = "flickr30k-images"
  image_key_names = ("Flickr30K_ID", "Flickr30k_ID")
  files = {"train": "snli_ve_train.jsonl", "val": "snli_ve_dev.jsonl",
           "test": "snli_ve_test.jsonl"}

  def locate(self, split: str) -> str:
    return raw_files.find_file(self.raw_dir, [self.files[split]], f"snli_ve {split}")

  def list_items(self, split: str, unit: str) -> Iterator[Any]:
    for row in raw_files.iter_jsonl(unit):
      if isinstance(row, skips.Skipped):
        yield row
        continue
      where, row = row
      image = next((row[k] for k in self.image_key_names if row.get(k) is not None), None)
      hypothesis, label = row.get("sentence2"), row.get("gold_label")
      if isinstance(image, int) and not isinstance(image, bool):
        image = str(image)
      if not isinstance(image, str) or not isinstance(hypothesis, str):
        yield skips.Skipped("malformed_row", f"{where}: no {self.image_key_names[0]} or sentence2")
      elif unsafe := images.unsafe_name(where, self.image_key_names[0], f"{image}.jpg"):
        yield unsafe
      elif not isinstance(label, str) or label not in schema.LABELS_SNLI:
        yield skips.Skipped("bad_label", f"{where}: gold_label {label!r}")
      else:
        yield {"image": str(image), "hypothesis": hypothesis, "label": label}

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    folders = [self.image_dir]
    if not self.options.image_dir:
      folders.append(fs.join(self.raw_dir, "flickr30k_images"))
    path = images.find_image(folders, [f"{item['image']}.jpg"])
    return {**self.image_record(ids.image_id("flickr", item["image"]), path),
            "hypothesis": item["hypothesis"], "label": item["label"]}
