"""The conversion engine: deterministic shards, resume, stale plans, runners, the CLI."""

import json
import os
import subprocess
import sys

import pytest

from dynpt.data import converters
from dynpt.data import schema
from dynpt.data.converters import engine
from tests.test_convert_helpers import by_id, run, write, write_jpeg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snli_raw(raw, n=7):
  rows = [{"Flickr30k_ID": str(i), "sentence2": f"hypothesis {i}", "gold_label": "neutral"}
          for i in range(n)]
  write(str(raw / "snli_ve_train.jsonl"), "\n".join(json.dumps(r) for r in rows) + "\n")
  for i in range(n):
    write_jpeg(str(raw / f"flickr30k_images/{i}.jpg"), seed=i)


def test_plan_shards_covers_items_in_order():
  assert engine.plan_shards(7, 3) == [(0, 2), (2, 4), (4, 7)]
  assert engine.plan_shards(2, 4) == [(0, 0), (0, 1), (1, 1), (1, 2)]
  assert engine.default_num_shards(0, 10) == 1
  assert engine.default_num_shards(21, 10) == 3


def test_resume_rewrites_only_missing_shards(tmp_path):
  raw, out = tmp_path / "raw", tmp_path / "out"
  _snli_raw(raw)
  first, recs = run("snli_ve", raw, out, "train", num_shards=3)
  assert (first["written"], first["shards_written"], first["shards_resumed"]) == (7, 3, 0)
  shard1 = schema.shard_path(str(out), "snli_ve", "train", 1, 3)
  os.remove(shard1)
  mtime0 = os.path.getmtime(schema.shard_path(str(out), "snli_ve", "train", 0, 3))
  second, recs2 = run("snli_ve", raw, out, "train", num_shards=3)
  assert (second["written"], second["shards_written"], second["shards_resumed"]) == (7, 1, 2)
  assert os.path.exists(shard1)
  assert os.path.getmtime(schema.shard_path(str(out), "snli_ve", "train", 0, 3)) == mtime0
  assert sorted(by_id(recs2)) == sorted(by_id(recs))
  # Shards hold contiguous items (deterministic by index): shard 0 has items 0 and 1.
  import tensorflow as tf
  first_shard = [tf.train.Example.FromString(r.numpy()) for r in
                 tf.data.TFRecordDataset(schema.shard_path(str(out), "snli_ve", "train", 0, 3))]
  assert [e.features.feature["image/id"].bytes_list.value[0] for e in first_shard] == [
      b"flickr:0", b"flickr:1"]
  saved = json.loads((out / "snli_ve/train/conversion_summary.json").read_text())
  assert saved["written"] == 7 and saved["shards_resumed"] == 2


def test_interrupted_shard_leaves_no_visible_file(tmp_path, monkeypatch):
  raw, out = tmp_path / "raw", tmp_path / "out"
  _snli_raw(raw, n=4)
  conv = converters.get_converter("snli_ve", converters.ConvertOptions(raw_dir=str(raw)))
  calls = []

  def flaky(item):
    calls.append(item)
    if len(calls) == 3:
      raise RuntimeError("killed")
    return type(conv).make_record(conv, item)

  monkeypatch.setattr(conv, "make_record", flaky)
  with pytest.raises(RuntimeError, match="killed"):
    converters.convert(conv, "train", str(out), num_shards=2, workers=1, progress=False)
  done = os.listdir(out / "snli_ve/train")
  assert "snli_ve-train.tfrecord-00000-of-00002" in done
  assert "snli_ve-train.tfrecord-00001-of-00002" not in done
  summary, recs = run("snli_ve", raw, out, "train", num_shards=2)
  assert (summary["shards_resumed"], len(recs)) == (1, 4)


def test_a_different_plan_needs_overwrite(tmp_path):
  raw, out = tmp_path / "raw", tmp_path / "out"
  _snli_raw(raw, n=3)
  run("snli_ve", raw, out, "train", num_shards=2)
  with pytest.raises(ValueError, match="--overwrite"):
    run("snli_ve", raw, out, "train", num_shards=3)
  summary, recs = run("snli_ve", raw, out, "train", num_shards=3, overwrite=True)
  assert summary["shards_written"] == 3 and len(recs) == 3
  assert len([f for f in os.listdir(out / "snli_ve/train") if ".tfrecord-" in f]) == 3


def test_process_runner_matches_threads(tmp_path):
  raw = tmp_path / "raw"
  _snli_raw(raw, n=4)
  threads, recs_t = run("snli_ve", raw, tmp_path / "t", "train", num_shards=2)
  procs, recs_p = run("snli_ve", raw, tmp_path / "p", "train", num_shards=2,
                      runner="processes", workers=1)
  assert procs["written"] == threads["written"] == 4
  assert [r["hypothesis"] for r in recs_p] == [r["hypothesis"] for r in recs_t]


def test_bad_arguments_name_the_problem(tmp_path):
  conv = converters.get_converter("snli_ve", converters.ConvertOptions(raw_dir=str(tmp_path)))
  with pytest.raises(ValueError, match="no split 'testA'"):
    converters.convert(conv, "testA", str(tmp_path))
  with pytest.raises(ValueError, match="unknown runner"):
    converters.convert(conv, "train", str(tmp_path), runner="beam")
  with pytest.raises(FileNotFoundError, match="snli_ve_train.jsonl"):
    converters.convert(conv, "train", str(tmp_path), progress=False)
  with pytest.raises(ValueError, match="unknown dataset 'coco'"):
    converters.get_converter("coco", converters.ConvertOptions(raw_dir="x"))


def test_cli_prints_summary(tmp_path):
  raw, out = tmp_path / "raw", tmp_path / "out"
  _snli_raw(raw, n=2)
  write(str(raw / "snli_ve_dev.jsonl"),
        json.dumps({"Flickr30k_ID": "9", "sentence2": "h", "gold_label": "neutral"}) + "\n")
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools/convert.py"), "snli_ve",
       f"--raw_dir={raw}", f"--out_dir={out}", "--split=train,val"],
      capture_output=True, text=True, timeout=120, check=True)
  assert "snli_ve/train: wrote 2 records" in result.stdout
  assert "snli_ve/val: wrote 0 records" in result.stdout
  assert "missing_image: 1" in result.stdout
