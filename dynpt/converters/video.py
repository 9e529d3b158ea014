"""Video question answering: MSRVTT-QA, MSVD-QA, iVQA (videos -> `video/frames`).

Videos are read as published, decoded with PyAV (its wheel carries FFmpeg):
MSRVTT's `TrainValVideo/video<N>.mp4` and `TestVideo/video<N>.mp4`, MSVD's
`YouTubeClips/<youtube name>.avi`, iVQA's `video/<video_id>_<start>_<end>.<ext>`.
Folders of extracted frames, `<image_dir>/<video>/<frame>.jpg`, are read too (and
preferred when both exist). Either way `num_frames` frames are sampled uniformly: the
centre of each of `num_frames` equal segments, so every video gives exactly
`num_frames` frames (repeating frames of very short videos). Decoded frames are
stored as JPEG.

The video files are indexed once per split when the annotations are listed (one
folder listing each), so each item carries the path of its video; annotations only
name videos, so they cannot point outside those folders. Container metadata that is
not UTF-8 (a title in Latin-1, ...) is read with replacement characters: it is not
stored, and the video decodes as usual.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any, Iterator

from dynpt.converters import base
from dynpt.converters import fs
from dynpt.converters import ids
from dynpt.converters import images
from dynpt.converters import raw_files
from dynpt.converters import skips

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")
FRAME_JPEG_QUALITY = 90


def _natural_key(name: str) -> list:
  return [int(t) if ids.is_number(t) else t for t in re.split(r"([0-9]+)", name)]


def uniform_indices(total: int, num_frames: int) -> list[int]:
  """Indices of `num_frames` frames out of `total`: the centres of equal segments."""
  return [min(total - 1, int((j + 0.5) * total / num_frames)) for j in range(num_frames)]


def sample_frame_folder(folder: str, num_frames: int) -> list[str]:
  """Returns `num_frames` uniformly spaced frame paths of a frame folder, in time order."""
  names = sorted((n for n in fs.listdir(folder)
                  if n.lower().endswith(FRAME_EXTENSIONS)), key=_natural_key)
  if not names:
    raise skips.Skip("missing_video", f"{folder} holds no frames")
  return [fs.join(folder, names[i]) for i in uniform_indices(len(names), num_frames)]


def _open_video(path: str, max_bytes: int = images.DEFAULT_MAX_FILE_BYTES):
  import av

  try:
    size = fs.size(path)
  except Exception as e:  # pylint: disable=broad-except
    if fs.is_missing_error(e):
      raise skips.Skip("missing_video", path) from e
    raise skips.Skip("unreadable_video", f"{path}: {type(e).__name__}: {e}") from e
  if size > max_bytes:
    raise skips.Skip("file_too_large", f"{path}: {size} bytes is more than "
                     f"--max_file_bytes={max_bytes}")
  try:
    return av.open(fs.open_file(path, "rb") if fs.is_url(path) else path,
                   metadata_errors="replace")
  except av.error.FFmpegError as e:
    if fs.is_missing_error(e):
      raise skips.Skip("missing_video", path) from e
    raise skips.Skip("corrupt_video", f"{path}: {e}") from e
  except (UnicodeError, ValueError, OSError) as e:
    raise skips.Skip("corrupt_video", f"{path}: {type(e).__name__}: {e}") from e


def _count_frames(path: str, max_bytes: int) -> int:
  """Frames of the first video stream: the header's count, else counted packets."""
  with _open_video(path, max_bytes) as container:
    if not container.streams.video:
      raise skips.Skip("corrupt_video", f"{path}: no video stream")
    stream = container.streams.video[0]
    if stream.frames > 0:
      return stream.frames
    return sum(1 for packet in container.demux(stream) if packet.size)


def sample_video(path: str, num_frames: int, max_bytes: int = images.DEFAULT_MAX_FILE_BYTES,
                 max_pixels: int = images.DEFAULT_MAX_IMAGE_PIXELS
                 ) -> tuple[list[bytes], int, int]:
  """Decodes `num_frames` uniformly sampled frames of a video file as JPEG bytes.

  Returns:
    (frames, width, height).

  Raises:
    Skip: `missing_video`, `corrupt_video`, `file_too_large` or `image_too_large`
      (frames over `max_pixels`) naming the file.
  """
  import av

  total = _count_frames(path, max_bytes)
  if total <= 0:
    raise skips.Skip("corrupt_video", f"{path}: no frames")
  picks = uniform_indices(total, num_frames)
  wanted, decoded, last = set(picks), {}, None
  try:
    with _open_video(path, max_bytes) as container:
      stream = container.streams.video[0]
      if stream.width * stream.height > max_pixels:
        raise skips.Skip("image_too_large", f"{path}: frames of {stream.width}x"
                         f"{stream.height} pixels, more than --max_image_pixels={max_pixels}")
      for index, frame in enumerate(container.decode(stream)):
        if index in wanted:
          decoded[index] = frame.to_image()
        last = frame
        if index >= picks[-1]:
          break
  except (av.error.FFmpegError, UnicodeError, ValueError) as e:
    raise skips.Skip("corrupt_video", f"{path}: {e}") from e
  if last is None:
    raise skips.Skip("corrupt_video", f"{path}: no decodable frame")
  frames = []
  for index in picks:  # The header may count more frames than decode: repeat the last.
    image = decoded.get(index) or last.to_image()
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=FRAME_JPEG_QUALITY)
    frames.append(out.getvalue())
  width, height = decoded[picks[0]].size if picks[0] in decoded else last.to_image().size
  return frames, width, height


class VideoQA(base.Converter):
  """Shared record writer: one record per question, frames of the item's video."""

  splits = ("train", "val", "test")
  default_image_subdir = "frames"
  namespace = ""  # Of `image/id`: `msrvtt:video7010`, `msvd:vid1`, `ivqa:<clip>`.
  video_subdirs: tuple[str, ...] = ()  # Official video folders under raw_dir.

  def index_videos(self) -> dict[str, str]:
    """Maps a video's name (file stem or frame folder) to its frame folder or file.

    Frame folders under `image_dir` win over video files; video files are looked up
    in `image_dir` and in the official folders under `raw_dir`.
    """
    index: dict[str, str] = {}
    for sub in self.video_subdirs:
      folder = fs.join(self.raw_dir, sub)
      for name in fs.listdir(folder):
        stem, dot, ext = name.rpartition(".")
        if dot and f".{ext.lower()}" in VIDEO_EXTENSIONS:
          index.setdefault(stem, fs.join(folder, name))
    folders = fs.subdirs(self.image_dir)
    folder_names = set(folders)
    for name in fs.listdir(self.image_dir):
      stem, dot, ext = name.rpartition(".")
      if dot and f".{ext.lower()}" in VIDEO_EXTENSIONS and name not in folder_names:
        index[stem] = fs.join(self.image_dir, name)
    for name in folders:
      index[name] = fs.join(self.image_dir, name) + "/"  # A frame folder.
    return index

  def find_video(self, index: dict[str, str], names: list[str]) -> str | None:
    return next((index[n] for n in names if n in index), None)

  def make_record(self, item: dict[str, Any]) -> dict[str, Any]:
    path = item["video"]
    if path is None:
      raise skips.Skip("missing_video", f"{self.name}: {item['names']} not found")
    if path.endswith("/"):
      frames, width, height = [], 0, 0
      for frame in sample_frame_folder(path.rstrip("/"), self.options.num_frames):
        data, w, h = self.read_image(frame)
        frames.append(data)
        width, height = width or w, height or h
    else:
      frames, width, height = sample_video(path, self.options.num_frames,
                                           self.options.max_file_bytes,
                                           self.options.max_image_pixels)
    return {"image/id": ids.image_id(self.namespace, item["names"][0]),
            "video/frames": frames, "image/width": width, "image/height": height,
            "question": item["question"], "answers": item["answers"]}


class JsonVideoQA(VideoQA):
  """MSRVTT-QA / MSVD-QA: `<split>_qa.json`, a list of {question, answer, video_id|video}."""

  def video_names(self, row: dict[str, Any]) -> list[str]:
    """Candidate names of a row's video, the canonical one first."""
    if "video" in row:
      return [str(row["video"])]
    return [str(row["video_id"])]

  def locate(self, split: str) -> str:
    return raw_files.find_file(self.raw_dir, [f"{split}_qa.json"], f"{self.name} {split}")

  def list_items(self, split: str, unit: str) -> Iterator[Any]:
    rows = raw_files.load_json(unit)
    if not isinstance(rows, list):
      raise ValueError(f"{unit}: expected a json list of questions")
    index = self.index_videos()
    for i, row in enumerate(rows):
      try:
        names = self.video_names(row)
        item = {"question": str(row["question"]), "answers": [str(row["answer"])],
                "names": names}
      except (KeyError, TypeError, ValueError, AttributeError):
        yield skips.Skipped("malformed_row", f"{unit}: [{i}]")
        continue
      yield {**item, "video": self.find_video(index, names)}


class MSRVTTQA(JsonVideoQA):
  """MSRVTT-QA: `video_id` 7010 is MSRVTT's `video7010` (`TrainValVideo/video7010.mp4`)."""

  name = "msrvtt_qa"
  namespace = "msrvtt"
  video_subdirs = ("TrainValVideo", "TestVideo", "videos", "video")

  def video_names(self, row: dict[str, Any]) -> list[str]:
    if "video" in row:
      return [str(row["video"])]
    return [f"video{ids.as_int(row['video_id'])}", str(row["video_id"])]


class MSVDQA(JsonVideoQA):
  """MSVD-QA: `video_id` N is `vidN`; `youtube_mapping.txt` maps it to the clip name
  (`YouTubeClips/-4wsuPCjDBc_5_15.avi`)."""

  name = "msvd_qa"
  namespace = "msvd"
  video_subdirs = ("YouTubeClips", "videos", "video")

  def list_items(self, split: str, unit: str) -> Iterator[Any]:
    self._names = {}
    mapping = fs.join(self.raw_dir, "youtube_mapping.txt")
    if fs.exists(mapping):
      with fs.open_file(mapping, "r") as f:
        for line in f:
          parts = line.split()
          if len(parts) == 2:
            self._names[parts[1]] = parts[0]  # `-4wsuPCjDBc_5_15 vid1`
    yield from super().list_items(split, unit)

  def video_names(self, row: dict[str, Any]) -> list[str]:
    if "video" in row:
      return [str(row["video"])]
    vid = f"vid{ids.as_int(row['video_id'])}"
    return [vid] + ([self._names[vid]] if vid in self._names else [])


def _clip_time(value: str) -> float | None:
  try:
    time = float(value)
  except ValueError:
    return None
  return time if math.isfinite(time) else None


class IVQA(VideoQA):
  """iVQA (Just Ask release): `<split>.csv` with video_id, start, end, question,
  answer1..answer5. Clips are `video/<video_id>_<start>_<end>.<ext>` (the release's
  naming; start and end match as numbers, so `_4_32` and `_4.0_32.0` agree; a video's
  only clip matches whatever its times), or frame folders of the same name, or
  `<video_id>` alone."""

  name = "ivqa"
  namespace = "ivqa"
  video_subdirs = ("video", "videos")
  columns = ("video_id", "start", "end", "question", "answer1", "answer2", "answer3",
             "answer4", "answer5")

  def locate(self, split: str) -> str:
    return raw_files.find_file(self.raw_dir, [f"{split}.csv"], f"ivqa {split}")

  def list_items(self, split: str, unit: str) -> Iterator[Any]:
    rows = raw_files.iter_csv(unit)
    first = next(rows, (0, []))
    header = [] if isinstance(first, skips.Skipped) else first[1]
    missing = [c for c in self.columns if c not in header]
    if missing:
      raise ValueError(f"{unit}: missing columns {missing} (header {header})")
    index = self.index_videos()
    clips = {}  # (video_id, start, end) -> name, for clips named with other number forms.
    per_video: dict[str, list[str]] = {}  # video_id -> its clips' names.
    for name in index:
      parts = name.rsplit("_", 2)
      if len(parts) == 3 and None not in (times := tuple(map(_clip_time, parts[1:]))):
        clips.setdefault((parts[0], *times), name)
        per_video.setdefault(parts[0], []).append(name)
    col = {c: header.index(c) for c in self.columns}
    for entry in rows:
      if isinstance(entry, skips.Skipped):
        yield entry
        continue
      line, row = entry
      where = f"{unit}:{line}"
      if len(row) != len(header):
        yield skips.Skipped("malformed_row", where)
        continue
      get = {c: row[i].strip() for c, i in col.items()}
      answers = [get[f"answer{k}"] for k in range(1, 6) if get[f"answer{k}"]]
      if not get["video_id"] or not get["question"] or not answers:
        yield skips.Skipped("malformed_row", where)
        continue
      try:
        start, end = (str(int(float(get[c]))) if get[c] else "" for c in ("start", "end"))
      except (ValueError, OverflowError):  # Not a number; `inf`.
        yield skips.Skipped("malformed_row", where)
        continue
      clip = f"{get['video_id']}_{start}_{end}"
      names = [clip, get["video_id"]]
      video = self.find_video(index, names)
      if video is None and start and end:
        name = clips.get((get["video_id"], float(get["start"]), float(get["end"])))
        video = index.get(name) if name else None
      if video is None and len(per_video.get(get["video_id"], ())) == 1:
        video = index[per_video[get["video_id"]][0]]  # The video's only clip.
      yield {"question": get["question"], "answers": answers, "names": names,
             "video": video}
