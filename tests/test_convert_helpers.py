"""Fixture writers shared by the converter tests (tiny images in the published layouts)."""

import io
import json
import os

from PIL import Image

from dynpt import converters
from dynpt.data import schema


def jpeg_bytes(width: int = 16, height: int = 12, seed: int = 0) -> bytes:
  img = Image.new("RGB", (width, height), ((seed * 37) % 256, 90, (seed * 11) % 256))
  out = io.BytesIO()
  img.save(out, format="JPEG")
  return out.getvalue()


def write(path: str, data: bytes | str) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  mode = "wb" if isinstance(data, bytes) else "w"
  with open(path, mode) as f:
    f.write(data)
  return path


def write_jpeg(path: str, width: int = 16, height: int = 12, seed: int = 0) -> str:
  return write(path, jpeg_bytes(width, height, seed))


def write_corrupt(path: str) -> str:
  return write(path, b"this is not an image")


def write_truncated(path: str) -> str:
  data = jpeg_bytes(32, 32, seed=3)
  return write(path, data[: len(data) // 2])


def write_json(path: str, obj) -> str:
  return write(path, json.dumps(obj))


def write_jsonl(path: str, rows, extra_lines=()) -> str:
  lines = [json.dumps(r) for r in rows] + list(extra_lines)
  return write(path, "\n".join(lines) + "\n")


# Tests run each pipeline in-process: the DirectRunner's start-up stays well under 1 s.
IN_MEMORY = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


def run(name: str, raw_dir, out_dir, split: str, **kwargs):
  """Converts one split (Beam DirectRunner, in memory); returns (summary, records)."""
  option_keys = ("image_dir", "num_frames", "holdout_every", "max_image_pixels",
                 "max_file_bytes")
  options = converters.ConvertOptions(
      raw_dir=str(raw_dir), **{k: kwargs.pop(k) for k in option_keys if k in kwargs})
  conv = converters.get_converter(name, options)
  kwargs.setdefault("pipeline_args", IN_MEMORY)
  summary = converters.convert(conv, split, str(out_dir), **kwargs)
  records = schema.read_records(str(out_dir), name, split) if summary["written"] else []
  return summary, records


def skipped_lines(out_dir, name: str, split: str) -> list[dict]:
  """The rows of a converted split's `skipped.jsonl`."""
  path = os.path.join(str(out_dir), name, split, "skipped.jsonl")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def by_id(records) -> dict:
  return {r["image/id"].decode(): r for r in records}


def texts(values) -> list[str]:
  return [v.decode() for v in values]


def roundtrip(task_name: str, data_dir, split: str, num_records: int) -> dict:
  """Reads converted records back through the registered seqio task (skips without it)."""
  import pytest

  pytest.importorskip("tasks")
  from dynpt.data import pipeline

  it = pipeline.TaskIterator(
      task_name, task_id=3, sequence_length={"inputs": 32, "targets": 16}, image_size=16,
      seed=0, split=split, data_dir=str(data_dir), shuffle=False, repeat=False,
      num_frames=2)
  batch = it.take(num_records + 1)
  assert len(batch["task_id"]) == num_records and set(batch["task_id"]) == {3}
  assert batch["image"].shape[-3:] == (16, 16, 3)
  assert batch["decoder_loss_weights"].sum() > 0
  return batch
