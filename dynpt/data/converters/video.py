"""Video question answering: MSRVTT-QA, MSVD-QA, iVQA (frames -> `video/frames`).

Videos are read as folders of extracted frames, `<image_dir>/<video>/<frame>.jpg`
(docs/data_real.md gives the ffmpeg command); `num_frames` frames are sampled
uniformly (the centre of each of `num_frames` equal segments, so every video gives
exactly `num_frames` frames, repeating frames of very short videos).
"""

from __future__ import annotations

import collections
import os
import re
from typing import Any

from dynpt.data.converters import base

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _natural_key(name: str) -> list:
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def sample_frames(folder: str, num_frames: int) -> list[str]:
  """Returns `num_frames` uniformly spaced frame paths of a frame folder, in time order."""
  if not os.path.isdir(folder):
    raise base.Skip("missing_video", folder)
  names = sorted((n for n in os.listdir(folder)
                  if os.path.splitext(n)[1].lower() in FRAME_EXTENSIONS), key=_natural_key)
  if not names:
    raise base.Skip("missing_video", f"{folder} holds no frames")
  picks = [int((j + 0.5) * len(names) / num_frames) for j in range(num_frames)]
  return [os.path.join(folder, names[i]) for i in picks]


class VideoQA(base.Converter):
  """Shared record writer: one record per question, frames of the first found folder."""

  splits = ("train", "val", "test")
  default_image_subdir = "frames"
  namespace = ""  # Of `image/id`: `msrvtt:video7010`, `msvd:vid1`, `ivqa:<clip>`.

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    folders = [os.path.join(self.image_dir, v) for v in item["folders"]]
    folder = next((f for f in folders if os.path.isdir(f)), folders[0])
    frames, width, height = [], 0, 0
    for path in sample_frames(folder, self.options.num_frames):
      data, w, h = base.read_image(path)
      frames.append(data)
      width, height = width or w, height or h
    return {"image/id": base.image_id(self.namespace, item["folders"][0]),
            "video/frames": frames, "image/width": width, "image/height": height,
            "question": item["question"], "answers": item["answers"]}


class JsonVideoQA(VideoQA):
  """MSRVTT-QA / MSVD-QA: `<split>_qa.json`, a list of {question, answer, video_id|video}."""

  def video_folders(self, row: dict[str, Any]) -> list[str]:
    """Candidate frame-folder names of a row, the canonical one first."""
    if "video" in row:
      return [str(row["video"])]
    return [str(row["video_id"])]

  def list_items(self, split: str, counts: collections.Counter) -> list[Any]:
    path = base.find_file(self.raw_dir, [f"{split}_qa.json"], f"{self.name} {split}")
    rows = base.load_json(path)
    if not isinstance(rows, list):
      raise ValueError(f"{path}: expected a json list of questions")
    items = []
    for row in rows:
      try:
        items.append({"question": str(row["question"]), "answers": [str(row["answer"])],
                      "folders": self.video_folders(row)})
      except (KeyError, TypeError, ValueError):
        counts["malformed_row"] += 1
    return items


class MSRVTTQA(JsonVideoQA):
  """MSRVTT-QA: `video_id` 7010 is MSRVTT's `video7010`."""

  name = "msrvtt_qa"
  namespace = "msrvtt"

  def video_folders(self, row: dict[str, Any]) -> list[str]:
    if "video" in row:
      return [str(row["video"])]
    return [f"video{int(row['video_id'])}", str(row["video_id"])]


class MSVDQA(JsonVideoQA):
  """MSVD-QA: `video_id` N is `vidN`; `youtube_mapping.txt` maps it to the clip name."""

  name = "msvd_qa"
  namespace = "msvd"

  def list_items(self, split: str, counts: collections.Counter) -> list[Any]:
    self._names = {}
    mapping = os.path.join(self.raw_dir, "youtube_mapping.txt")
    if os.path.exists(mapping):
      with open(mapping, encoding="utf-8") as f:
        for line in f:
          parts = line.split()
          if len(parts) == 2:
            self._names[parts[1]] = parts[0]  # `-4wsuPCjDBc_5_15 vid1`
    return super().list_items(split, counts)

  def video_folders(self, row: dict[str, Any]) -> list[str]:
    if "video" in row:
      return [str(row["video"])]
    vid = f"vid{int(row['video_id'])}"
    return [vid] + ([self._names[vid]] if vid in self._names else [])


class IVQA(VideoQA):
  """iVQA (Just Ask release): `<split>.csv` with video_id, start, end, question,
  answer1..answer5; clips are `<video_id>_<start>_<end>` (else `<video_id>`)."""

  name = "ivqa"
  namespace = "ivqa"
  columns = ("video_id", "start", "end", "question", "answer1", "answer2", "answer3",
             "answer4", "answer5")

  def list_items(self, split: str, counts: collections.Counter) -> list[Any]:
    path = base.find_file(self.raw_dir, [f"{split}.csv"], f"ivqa {split}")
    rows = base.iter_csv(path)
    header = next(rows, [])
    missing = [c for c in self.columns if c not in header]
    if missing:
      raise ValueError(f"{path}: missing columns {missing} (header {header})")
    col = {c: header.index(c) for c in self.columns}
    items = []
    for row in rows:
      if len(row) != len(header):
        counts["malformed_row"] += 1
        continue
      get = {c: row[i].strip() for c, i in col.items()}
      answers = [get[f"answer{k}"] for k in range(1, 6) if get[f"answer{k}"]]
      if not get["video_id"] or not get["question"] or not answers:
        counts["malformed_row"] += 1
        continue
      try:
        start, end = (str(int(float(get[c]))) if get[c] else "" for c in ("start", "end"))
      except ValueError:
        counts["malformed_row"] += 1
        continue
      clip = f"{get['video_id']}_{start}_{end}"
      items.append({"question": get["question"], "answers": answers,
                    "folders": [clip, get["video_id"]]})
    return items
