"""Clean splits: evaluation images leave every training set, matched by id or by bytes."""

import json
import os
import subprocess
import sys

from dynpt.data import schema
from dynpt.converters import clean
from tests.test_convert_helpers import jpeg_bytes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A, B, C, D, E = (jpeg_bytes(seed=s) for s in range(5))


def _write(data_dir, dataset, split, records, num_shards=1):
  with schema.ShardedWriter(str(data_dir), dataset, split, num_shards) as w:
    for key, image in records:
      w.write({"image/id": key, "image/encoded": image, "question": "q"})


def _fixture(data_dir):
  # Evaluation sets.
  _write(data_dir, "vqav2", "val", [("coco:1", A), ("coco:1", A)])
  _write(data_dir, "refcoco", "testA", [("coco:2", B)])
  # Training sets with known overlaps.
  _write(data_dir, "vqav2", "train", [("coco:2", B), ("coco:2", B), ("coco:3", C)])
  _write(data_dir, "vg", "train", [("coco:1", A), ("vg:5", D), ("vg:6", E)], num_shards=2)
  _write(data_dir, "cc3m", "train", [("cc3m:0", B), ("cc3m:1", C)])  # B by bytes only.
  _write(data_dir, "refcoco", "train", [("coco:4", D)])
  with schema.ShardedWriter(str(data_dir), "msrvtt_qa", "test") as w:
    w.write({"image/id": "msrvtt:video1", "video/frames": [A, B]})


def test_clean_splits_removes_eval_images_and_copies_the_rest(tmp_path):
  data, out = tmp_path / "data", tmp_path / "clean"
  _fixture(data)
  report = clean.clean_splits(str(data), str(out))
  stats = {f"{s['dataset']}/{s['split']}": s for s in report["cleaned"]}
  assert set(stats) == {"cc3m/train", "vg/train", "vqav2/train", "refcoco/train"}
  assert (stats["vqav2/train"]["images_before"], stats["vqav2/train"]["images_after"],
          stats["vqav2/train"]["records_before"], stats["vqav2/train"]["records_after"]
          ) == (2, 1, 3, 1)
  assert stats["vqav2/train"]["percent_removed"] == 50.0
  assert (stats["vg/train"]["images_before"], stats["vg/train"]["images_after"]) == (3, 2)
  assert (stats["cc3m/train"]["images_before"], stats["cc3m/train"]["images_after"]) == (2, 1)
  assert stats["refcoco/train"]["percent_removed"] == 0.0
  assert report["eval_images"] == 2

  def ids(dataset, split, root=out):
    return sorted(r["image/id"].decode() for r in schema.read_records(str(root), dataset,
                                                                        split))

  assert ids("vqav2", "train") == ["coco:3"]
  assert ids("vg", "train") == ["vg:5", "vg:6"]
  assert ids("cc3m", "train") == ["cc3m:1"]
  # Evaluation and video sets are copied unchanged; the input is untouched.
  assert ids("vqav2", "val") == ["coco:1", "coco:1"]
  assert ids("msrvtt_qa", "test") == ["msrvtt:video1"]
  assert ids("vqav2", "train", root=data) == ["coco:2", "coco:2", "coco:3"]
  assert len(os.listdir(out / "vg/train")) == 2  # Shard layout kept.
  saved = json.loads((out / "clean_splits_report.json").read_text())
  assert saved["cleaned"] == report["cleaned"]
  table = (out / "clean_splits_report.md").read_text()
  assert "| vqav2/train | 2 | 1 | 50.00 | 3 | 1 |" in table


def test_dry_run_reports_without_writing_data(tmp_path):
  data = tmp_path / "data"
  _fixture(data)
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools/clean_splits.py"), f"--data_dir={data}"],
      capture_output=True, text=True, timeout=120, check=True)
  assert "| cc3m/train | 2 | 1 | 50.00 | 2 | 1 |" in result.stdout
  assert (data / "clean_splits_report.md").exists()
  assert len(schema.read_records(str(data), "vqav2", "train")) == 3


def test_in_place_cleaning(tmp_path):
  data = tmp_path / "data"
  _fixture(data)
  clean.clean_splits(str(data), str(data))
  assert [r["image/id"] for r in schema.read_records(str(data), "vqav2", "train")] == [
      b"coco:3"]
  assert len(schema.read_records(str(data), "vqav2", "val")) == 2
  assert not [f for f in os.listdir(data / "vg/train") if f.startswith(".tmp")]


def test_an_out_dir_that_is_a_symlink_to_data_dir_cleans_in_place(tmp_path):
  data, link = tmp_path / "data", tmp_path / "link"
  _fixture(data)
  os.symlink(data, link)
  clean.clean_splits(str(data), str(link))
  # Nothing was copied onto itself (which truncated every split to 0 bytes).
  assert len(schema.read_records(str(data), "vqav2", "val")) == 2
  assert len(schema.read_records(str(data), "msrvtt_qa", "test")) == 1
  assert [r["image/id"] for r in schema.read_records(str(data), "vqav2", "train")] == [
      b"coco:3"]


def test_an_output_split_that_resolves_to_an_input_is_refused(tmp_path):
  data, out = tmp_path / "data", tmp_path / "clean"
  _fixture(data)
  out.mkdir()
  os.symlink(data / "vqav2", out / "vqav2")
  sizes = {p: p.stat().st_size for p in data.rglob("*.tfrecord-*")}
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools/clean_splits.py"), f"--data_dir={data}",
       f"--out_dir={out}"], capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
  assert f"{out / 'vqav2'} resolves to the input {data / 'vqav2'}" in line
  assert {p: p.stat().st_size for p in data.rglob("*.tfrecord-*")} == sizes
  assert not (out / "cc3m").exists()  # Refused before anything was written.


def test_the_output_keeps_one_shard_plan(tmp_path):
  data, out = tmp_path / "data", tmp_path / "clean"
  _fixture(data)
  _write(out, "vg", "train", [("vg:9", A)], num_shards=3)  # An older cleaning's plan.
  _write(out, "msrvtt_qa", "test", [("msrvtt:old", A)], num_shards=2)
  clean.clean_splits(str(data), str(out))
  assert sorted(os.listdir(out / "vg/train")) == [
      f"vg-train.tfrecord-0000{i}-of-00002" for i in range(2)]
  assert sorted(os.listdir(out / "msrvtt_qa/test")) == [
      "msrvtt_qa-test.tfrecord-00000-of-00001"]
