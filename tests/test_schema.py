"""Tests for the on-disk example schema."""
import numpy as np
import pytest

from dynpt.data import schema


def test_round_trip_all_keys(tmp_path):
  rec = {
      "image/id": "coco:1", "image/encoded": b"\x89PNG", "image/width": 32,
      "image/height": 24, "text/captions": ["a red cube", "a cube"],
      "objects/label": ["cube", "ball"],
      "objects/bbox": [[1, 2, 3, 4], [5, 6, 7, 8]], "question": "how many?",
      "answers": ["2"] * 10, "hypothesis": "there is a cube",
      "label": "entailment", "refexp": "the red cube",
      "refexp/bbox": [1.5, 2, 3, 4], "video/frames": [b"a", b"b"],
  }
  with schema.ShardedWriter(str(tmp_path), "toy", "train", num_shards=2) as w:
    w.write(rec)
    w.write({"image/id": "coco:2"})
  recs = schema.read_records(str(tmp_path), "toy", "train")
  assert sorted(r["image/id"] for r in recs) == [b"coco:1", b"coco:2"]
  full = [r for r in recs if r["image/id"] == b"coco:1"][0]
  np.testing.assert_allclose(full["objects/bbox"], [[1, 2, 3, 4], [5, 6, 7, 8]])
  np.testing.assert_allclose(full["refexp/bbox"], [1.5, 2, 3, 4])
  assert list(full["answers"]) == [b"2"] * 10
  assert full["image/width"] == 32
  empty = [r for r in recs if r["image/id"] == b"coco:2"][0]
  assert empty["objects/bbox"].shape == (0, 4)
  assert empty["question"] == b""


@pytest.mark.parametrize("rec, key", [
    ({"image/id": "x", "bogus": 1}, "bogus"),
    ({"question": "q"}, "image/id"),
    ({"image/id": "x", "refexp/bbox": [1, 2, 3]}, "refexp/bbox"),
    ({"image/id": "x", "objects/bbox": [1, 2, 3]}, "objects/bbox"),
])
def test_bad_records_name_the_key(rec, key):
  with pytest.raises(ValueError, match=key.replace("/", ".")):
    schema.encode_example(rec)


def test_interrupted_writer_leaves_no_complete_shard(tmp_path):
  with pytest.raises(RuntimeError):
    with schema.ShardedWriter(str(tmp_path), "toy", "train") as w:
      w.write({"image/id": "a"})
      raise RuntimeError("killed")
  with pytest.raises(FileNotFoundError, match="toy"):
    schema.read_records(str(tmp_path), "toy", "train")


def test_writer_on_a_url_data_dir_writes_there_and_nothing_locally(tmp_path, monkeypatch):
  """TensorFlow's in-memory `ram://` file system stands in for a bucket."""
  monkeypatch.chdir(tmp_path)
  data_dir = f"ram://{tmp_path.name}/data"
  with schema.ShardedWriter(data_dir, "toy", "train", num_shards=2) as w:
    w.write_all({"image/id": f"coco:{i}"} for i in range(3))
  recs = schema.read_records(data_dir, "toy", "train")
  assert sorted(r["image/id"] for r in recs) == [b"coco:0", b"coco:1", b"coco:2"]
  assert list(tmp_path.iterdir()) == []
