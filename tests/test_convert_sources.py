"""Pretraining-source converters (cc3m, cc12m, ln, oi, in21k, vg) on raw-format fixtures."""

import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_convert_helpers import (by_id, jpeg_bytes, roundtrip, run, texts, write,
                                        write_corrupt, write_json, write_jpeg, write_jsonl,
                                        write_truncated)


def test_cc3m_row_folder_counts_every_skip(tmp_path):
  raw = tmp_path / "raw"
  write(str(raw / "Train_GCC-training.tsv"),
        "a red cube\thttp://x/0.jpg\n"
        "only one column\n"
        "missing image\thttp://x/2.jpg\n"
        "corrupt image\thttp://x/3.jpg\n"
        "truncated image\thttp://x/4.jpg\n"
        "a \"quoted\" ball\thttp://x/5.jpg\n")
  write_jpeg(str(raw / "images/train/0.jpg"), 20, 10)
  write_corrupt(str(raw / "images/train/3.jpg"))
  write_truncated(str(raw / "images/train/4.jpg"))
  write_jpeg(str(raw / "images/train/00000/000000005.jpg"))  # img2dataset `files` naming.
  summary, recs = run("cc3m", raw, tmp_path / "out", "train")
  assert summary["written"] == 2
  assert summary["skipped"] == {"corrupt_image": 2, "malformed_row": 1, "missing_image": 1}
  recs = by_id(recs)
  assert texts(recs["cc3m:0"]["text/captions"]) == ["a red cube"]
  assert texts(recs["cc3m:5"]["text/captions"]) == ['a "quoted" ball']
  assert (recs["cc3m:0"]["image/width"], recs["cc3m:0"]["image/height"]) == (20, 10)
  assert recs["cc3m:0"]["image/encoded"] == jpeg_bytes(20, 10)  # Passed through as stored.
  assert os.path.exists(tmp_path / "out/cc3m/train/conversion_summary.json")
  roundtrip("cc3m_cap", tmp_path / "out", "train", 2)


def _tar_add(tar, name, data):
  import io
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def test_cc3m_img2dataset_webdataset_and_parquet(tmp_path):
  raw = tmp_path / "raw"
  folder = raw / "images" / "validation"
  os.makedirs(folder)
  with tarfile.open(folder / "00000.tar", "w") as tar:
    _tar_add(tar, "000000000.jpg", jpeg_bytes(seed=1))
    _tar_add(tar, "000000000.txt", b"a cube on a table")
    _tar_add(tar, "000000000.json", b'{"caption": "a cube on a table", "key": "000000000"}')
    _tar_add(tar, "000000002.txt", b"no image for this one")
    _tar_add(tar, "000000003.jpg", jpeg_bytes(seed=3))
    _tar_add(tar, "000000003.json", b'{"caption": "caption from json"}')
  pq.write_table(pa.table({"url": ["u0", "u1", "u2", "u3"],
                           "caption": ["a", "b", "c", "d"],
                           "key": ["000000000", "000000001", "000000002", "000000003"],
                           "status": ["success", "failed_to_download", "success",
                                      "success"]}), folder / "00000.parquet")
  summary, recs = run("cc3m", raw, tmp_path / "out", "validation")
  assert summary["written"] == 2
  assert summary["skipped"] == {"download_failed": 1, "missing_image": 1}
  recs = by_id(recs)
  assert texts(recs["cc3m:0"]["text/captions"]) == ["a cube on a table"]
  assert texts(recs["cc3m:3"]["text/captions"]) == ["caption from json"]
  assert recs["cc3m:3"]["image/encoded"] == jpeg_bytes(seed=3)


def test_cc12m_holdout_partitions_rows(tmp_path):
  raw = tmp_path / "raw"
  rows = [f"http://x/{i}.jpg\tcaption {i}" for i in range(12)]
  # With the header img2dataset recipes add; it is not a data row.
  write(str(raw / "cc12m.tsv"), "url\tcaption\n" + "\n".join(rows) + "\n")
  for i in range(12):
    write_jpeg(str(raw / f"images/{i}.jpg"), seed=i)
  _, train = run("cc12m", raw, tmp_path / "out", "train", holdout_every=3)
  _, val = run("cc12m", raw, tmp_path / "out", "validation", holdout_every=3)
  train_ids, val_ids = set(by_id(train)), set(by_id(val))
  assert train_ids and val_ids and not train_ids & val_ids
  assert train_ids | val_ids == {f"cc12m:{i}" for i in range(12)}
  assert texts(by_id(train + val)["cc12m:7"]["text/captions"]) == ["caption 7"]
  roundtrip("cc12m_cap", tmp_path / "out", "validation", len(val))


def test_localized_narratives_groups_captions_per_image(tmp_path):
  raw = tmp_path / "raw"
  row = {"dataset_id": "open_images", "timed_caption": [], "traces": [],
         "voice_recording": "x.ogg"}
  write_jsonl(str(raw / "open_images_train_v6_captions.jsonl"), [
      {**row, "image_id": "0A1b", "annotator_id": 1, "caption": "A cube."},
      {**row, "image_id": "0A1b", "annotator_id": 2, "caption": "A red cube."},
      {**row, "image_id": "ffff", "annotator_id": 1, "caption": "A ball."},
      {**row, "image_id": "eeee", "annotator_id": 1},
  ], extra_lines=["{not json"])
  write_jpeg(str(raw / "images/train/0A1b.jpg"))
  summary, recs = run("ln", raw, tmp_path / "out", "train")
  assert summary["skipped"] == {"malformed_row": 2, "missing_image": 1}
  recs = by_id(recs)
  assert list(recs) == ["oi:0a1b"]
  assert texts(recs["oi:0a1b"]["text/captions"]) == ["A cube.", "A red cube."]
  roundtrip("ln_cap", tmp_path / "out", "train", 1)


@pytest.mark.parametrize("class_file, header", [
    ("oidv6-class-descriptions.csv", "LabelName,DisplayName\n"),
    ("class-descriptions.csv", ""),
])
def test_open_images_verified_labels_only(tmp_path, class_file, header):
  raw = tmp_path / "raw"
  write(str(raw / class_file), header + "/m/01,Cat\n/m/02,\"Dog, domestic\"\n")
  write(str(raw / "oidv6-train-annotations-human-imagelabels.csv"),
        "ImageID,Source,LabelName,Confidence\n"
        "aaaa,verification,/m/01,1\n"
        "aaaa,verification,/m/02,0\n"
        "aaaa,crowdsource-verification,/m/01,1\n"
        "bbbb,verification,/m/02,1\n"
        "bbbb,verification,/m/01,1\n"
        "cccc,verification,/m/02,0\n"
        "dddd,verification,/m/99,1\n"
        "eeee,verification\n")
  write_jpeg(str(raw / "images/train/aaaa.jpg"))
  write_jpeg(str(raw / "images/bbbb.jpg"))
  summary, recs = run("oi", raw, tmp_path / "out", "train")
  assert summary["skipped"] == {"malformed_row": 1, "no_verified_labels": 2,
                                "unknown_label": 1}
  recs = by_id(recs)
  assert texts(recs["oi:aaaa"]["objects/label"]) == ["Cat"]
  assert texts(recs["oi:bbbb"]["objects/label"]) == ["Dog, domestic", "Cat"]
  assert recs["oi:aaaa"]["objects/bbox"].shape == (0, 4)
  assert (tmp_path / "out/oi/labels.txt").read_text() == "Cat\nDog, domestic\n"
  roundtrip("oi_list_objects", tmp_path / "out", "train", 2)


def test_imagenet21k_class_folders(tmp_path):
  raw = tmp_path / "raw"
  write(str(raw / "words.txt"), "n00000001\ttench, Tinca tinca\nn00000002\tgoldfish\n")
  write_jpeg(str(raw / "n00000001/n00000001_1.JPEG"))
  write_jpeg(str(raw / "n00000001/n00000001_2.JPEG"))
  write_corrupt(str(raw / "n00000002/n00000002_1.JPEG"))
  write_jpeg(str(raw / "n00000003/n00000003_1.JPEG"))
  write(str(raw / "n00000001/readme.txt"), "not an image")
  summary, recs = run("in21k", raw, tmp_path / "out", "train", holdout_every=10**9)
  assert summary["skipped"] == {"corrupt_image": 1, "unknown_label": 1}
  recs = by_id(recs)
  assert sorted(recs) == ["in21k:n00000001/n00000001_1", "in21k:n00000001/n00000001_2"]
  assert texts(recs["in21k:n00000001/n00000001_1"]["objects/label"]) == ["tench"]
  # Classes of the written records only (goldfish's one image is corrupt).
  assert (tmp_path / "out/in21k/labels.txt").read_text() == "tench\n"
  roundtrip("in21k_list_objects", tmp_path / "out", "train", 2)


def test_visual_genome_boxes_and_shared_ids(tmp_path):
  raw = tmp_path / "raw"
  write_json(str(raw / "image_data.json"), [
      {"image_id": 1, "width": 16, "height": 12, "url": "u", "coco_id": 42,
       "flickr_id": None},
      {"image_id": 2, "width": 16, "height": 12, "url": "u", "coco_id": None,
       "flickr_id": 7},
      {"image_id": 3, "width": 16, "height": 12, "url": "u", "coco_id": None,
       "flickr_id": None},
  ])
  write_json(str(raw / "objects.json"), [
      {"image_id": 1, "objects": [
          {"object_id": 10, "x": 1, "y": 2, "w": 3, "h": 4, "names": ["cube"]},
          {"object_id": 11, "x": 1, "y": 2, "w": 0, "h": 4, "names": ["flat"]},
          {"object_id": 12, "x": 1, "y": 2, "w": 3, "h": 4, "names": []}]},
      {"image_id": 2, "objects": [
          {"object_id": 20, "x": 10, "y": 8, "w": 30, "h": 30, "names": ["ball", "orb"]}]},
      {"image_id": 3, "objects": []},
      {"image_id": 4, "objects": [
          {"object_id": 40, "x": 0, "y": 0, "w": 2, "h": 2, "names": ["cone"]}]},
      {"no_id": True},
  ])
  write_jpeg(str(raw / "VG_100K/1.jpg"))
  write_jpeg(str(raw / "VG_100K_2/2.jpg"))
  summary, recs = run("vg", raw, tmp_path / "out", "train", holdout_every=10**9)
  assert summary["skipped"] == {"malformed_row": 1, "missing_image": 1, "no_objects": 1}
  recs = by_id(recs)
  assert sorted(recs) == ["coco:42", "flickr:7"]
  assert texts(recs["coco:42"]["objects/label"]) == ["cube"]
  np.testing.assert_allclose(recs["coco:42"]["objects/bbox"], [[1, 2, 4, 6]])
  np.testing.assert_allclose(recs["flickr:7"]["objects/bbox"], [[10, 8, 16, 12]])  # Clipped.
  roundtrip("vg_list_objects", tmp_path / "out", "train", 2)
