"""Converters on fixtures laid out exactly as the official downloads unpack.

Open Images `train_0/`..`train_f/` with the box CSV, ImageNet-21k winter21 synset
tars, MSRVTT `TrainValVideo/*.mp4` (H.264), MSVD `YouTubeClips/*.avi` (MPEG-4) and
iVQA clips written with PyAV, CC12M img2dataset output with failed downloads.
(SNLI-VE's `Flickr30K_ID` key and `flickr30k-images/` are the layout of every test in
test_convert_engine.py.)
"""

import io
import os
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
from PIL import Image
import pyarrow as pa
import pyarrow.parquet as pq

from dynpt.converters import raw_files
from tests.test_convert_helpers import (by_id, jpeg_bytes, roundtrip, run, skipped_lines,
                                        texts, write, write_json, write_jpeg)


def _tar(path, members):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tarfile.open(path, "w") as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def write_video(path, levels, codec="h264", size=(32, 24)):
  """Writes a video whose frame i is a flat grey of `levels[i]`."""
  import av

  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(path, "w") as container:
    stream = container.add_stream(codec, rate=10)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    for level in levels:
      pixels = np.full((size[1], size[0], 3), level, np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def _grey(jpeg):
  return float(np.asarray(Image.open(io.BytesIO(jpeg)).convert("L")).mean())


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 40))
def test_csv_byte_ranges_cover_every_line_once(tmp_path_factory, num_rows, chunk):
  path = str(tmp_path_factory.mktemp("csv") / "rows.csv")
  rows = [f"{i},{'x' * (i % 5)}" for i in range(num_rows)]
  write(path, "\n".join(rows) + "\n")
  seen = [r for p, a, b in raw_files.csv_byte_ranges(path, chunk)
          for _, r in raw_files.iter_csv_range(p, a, b)]
  assert [",".join(r) for r in seen] == rows


def test_open_images_official_tarball_layout_with_boxes(tmp_path):
  raw = tmp_path / "raw"
  write(str(raw / "oidv7-class-descriptions.csv"),
        "LabelName,DisplayName\n/m/01,Cat\n/m/02,Dog\n/m/03,Ball\n")
  write(str(raw / "oidv6-train-annotations-human-imagelabels.csv"),
        "ImageID,Source,LabelName,Confidence\n"
        "0aaa,verification,/m/01,1\n"
        "0aaa,verification,/m/03,1\n"
        "fbbb,verification,/m/02,0\n"
        "c0cc,verification,/m/01,1\n"
        "dddd,verification,/m/01,0\n")
  write(str(raw / "oidv6-train-annotations-bbox.csv"),
        "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,"
        "IsTruncated,IsGroupOf,IsDepiction,IsInside\n"
        "0aaa,xclick,/m/02,1,0.25,0.5,0.0,0.5,0,0,0,0,0\n"
        "0aaa,xclick,/m/01,1,0.0,1.0,0.5,1.0,0,0,0,0,0\n"
        "fbbb,xclick,/m/02,1,0.5,0.75,0.25,0.75,0,0,0,0,0\n"
        "fbbb,xclick,/m/02,1,bad,0.75,0.25,0.75,0,0,0,0,0\n")
  # As `train_0.tar.gz` ... `train_f.tar.gz` unpack, directly in the raw dir.
  write_jpeg(str(raw / "train_0/0aaa.jpg"), 16, 8)
  write_jpeg(str(raw / "train_f/fbbb.jpg"), 16, 8)
  summary, recs = run("oi", raw, tmp_path / "out", "train", max_skip_fraction=0.5)
  assert summary["skipped"] == {"malformed_row": 1, "missing_image": 1,
                                "no_verified_labels": 1}
  missing = [s["where"] for s in skipped_lines(tmp_path / "out", "oi", "train")
             if s["reason"] == "missing_image"]
  assert missing[0].startswith(str(raw / "train_c/c0cc.jpg"))
  recs = by_id(recs)
  assert texts(recs["oi:0aaa"]["objects/label"]) == ["Dog", "Cat", "Ball"]
  np.testing.assert_allclose(recs["oi:0aaa"]["objects/bbox"], [[4, 0, 8, 4], [0, 4, 16, 8]])
  assert texts(recs["oi:fbbb"]["objects/label"]) == ["Dog"]  # A box, no verified label.
  np.testing.assert_allclose(recs["oi:fbbb"]["objects/bbox"], [[8, 2, 12, 6]])
  assert (tmp_path / "out/oi/labels.txt").read_text() == "Ball\nCat\nDog\n"
  roundtrip("oi_list_objects", tmp_path / "out", "train", 2)


def test_localized_narratives_find_official_open_images_folders(tmp_path):
  raw = tmp_path / "raw"
  for shard, rows in (("00000", [("0a1b", 1, "A cube."), ("5e5e", 1, "A ball.")]),
                      ("00001", [("0a1b", 2, "A red cube.")])):
    write(str(raw / f"open_images_train_v6_localized_narratives-{shard}-of-00002.jsonl"),
          "".join('{"image_id": "%s", "annotator_id": %d, "caption": "%s"}\n' % r
                  for r in rows))
  write_jpeg(str(raw / "train_0/0a1b.jpg"))
  write_jpeg(str(raw / "train_5/5e5e.jpg"), seed=5)
  summary, recs = run("ln", raw, tmp_path / "out", "train")
  assert summary["status"] == "ok" and summary["skipped"] == {}
  recs = by_id(recs)
  assert texts(recs["oi:0a1b"]["text/captions"]) == ["A cube.", "A red cube."]
  assert texts(recs["oi:5e5e"]["text/captions"]) == ["A ball."]


def test_imagenet21k_reads_winter21_synset_tars(tmp_path):
  raw = tmp_path / "raw"
  write(str(raw / "words.txt"), "n00000001\ttench, Tinca tinca\nn00000002\tgoldfish\n"
        "n00000003\tshark\n")
  # winter21_whole.tar.gz unpacks to winter21_whole/n*.tar, one tar per synset.
  _tar(str(raw / "winter21_whole/n00000001.tar"),
       [("n00000001_1.JPEG", jpeg_bytes(seed=1)), ("n00000001_2.JPEG", jpeg_bytes(seed=2))])
  _tar(str(raw / "winter21_whole/n00000002.tar"), [("n00000002_7.JPEG", b"not a jpeg")])
  _tar(str(raw / "winter21_whole/n00000009.tar"), [("n00000009_1.JPEG", jpeg_bytes())])
  write_jpeg(str(raw / "n00000003/n00000003_4.JPEG"), seed=4)  # Folders stay supported.
  summary, recs = run("in21k", raw, tmp_path / "out", "train", holdout_every=10**9,
                      max_skip_fraction=0.5)
  assert summary["skipped"] == {"corrupt_image": 1, "unknown_label": 1}
  recs = by_id(recs)
  assert sorted(recs) == ["in21k:n00000001/n00000001_1", "in21k:n00000001/n00000001_2",
                          "in21k:n00000003/n00000003_4"]
  assert recs["in21k:n00000001/n00000001_2"]["image/encoded"] == jpeg_bytes(seed=2)
  assert texts(recs["in21k:n00000003/n00000003_4"]["objects/label"]) == ["shark"]
  assert (tmp_path / "out/in21k/labels.txt").read_text() == "shark\ntench\n"
  # More images in a synset tar: the re-run notices and writes them.
  _tar(str(raw / "winter21_whole/n00000001.tar"),
       [("n00000001_1.JPEG", jpeg_bytes(seed=1)), ("n00000001_2.JPEG", jpeg_bytes(seed=2)),
        ("n00000001_3.JPEG", jpeg_bytes(seed=3))])
  again, recs = run("in21k", raw, tmp_path / "out", "train", holdout_every=10**9,
                    max_skip_fraction=0.5)
  assert again["written"] == 4 and again["shards_written"] == 1 and len(recs) == 4


def test_video_qa_decodes_official_video_files(tmp_path):
  raw = tmp_path / "raw"
  write_json(str(raw / "train_qa.json"), [
      {"question": "what moves?", "answer": "cube", "video_id": 7, "id": 0},
      {"question": "what now?", "answer": "ball", "video_id": 8, "id": 1},
      {"question": "where?", "answer": "left", "video_id": 9, "id": 2}])
  levels = [10 + 20 * i for i in range(10)]
  write_video(str(raw / "TrainValVideo/video7.mp4"), levels)
  write_video(str(raw / "TestVideo/video8.mp4"), [200, 200])  # Shorter than num_frames.
  write(str(raw / "TrainValVideo/video9.mp4"), b"not a video")
  summary, recs = run("msrvtt_qa", raw, tmp_path / "out", "train", num_frames=4,
                      max_skip_fraction=0.5)
  assert summary["skipped"] == {"corrupt_video": 1}
  recs = by_id(recs)
  frames = list(recs["msrvtt:video7"]["video/frames"])
  # Centres of 4 equal segments of 10 frames: frames 1, 3, 6, 8.
  np.testing.assert_allclose([_grey(f) for f in frames], [levels[i] for i in (1, 3, 6, 8)],
                             atol=4)
  assert (recs["msrvtt:video7"]["image/width"], recs["msrvtt:video7"]["image/height"]) == (
      32, 24)
  assert len(recs["msrvtt:video8"]["video/frames"]) == 4

  write_json(str(raw / "val_qa.json"), [
      {"question": "what is the cat doing?", "answer": "play", "video_id": 1, "id": 0}])
  write(str(raw / "youtube_mapping.txt"), "-4wsuPCjDBc_5_15 vid1\n")
  write_video(str(raw / "YouTubeClips/-4wsuPCjDBc_5_15.avi"), levels, codec="mpeg4")
  summary, recs = run("msvd_qa", raw, tmp_path / "out", "val", num_frames=2)
  (rec,) = recs
  assert rec["image/id"] == b"msvd:vid1"
  np.testing.assert_allclose([_grey(f) for f in rec["video/frames"]],
                             [levels[2], levels[7]], atol=4)

  write(str(raw / "test.csv"),
        "video_id,start,end,question,answer1,answer2,answer3,answer4,answer5\n"
        "abc_DEF-123,10,20,what is in the bowl?,rice,rice,rice,noodles,rice\n"
        "xyz,1.0,5.0,what tool?,knife,,knife,,\n"
        "qqq,3,9,what colour?,red,,,,\n")
  write_video(str(raw / "video/abc_DEF-123_10_20.mp4"), levels[:4])
  write_video(str(raw / "video/xyz_1.0_5.0.webm"), levels[:4], codec="libvpx")
  write_video(str(raw / "video/qqq_3.4_9.6.mp4"), levels[:4])  # qqq's only clip.
  summary, recs = run("ivqa", raw, tmp_path / "out", "test", num_frames=2)
  assert summary["status"] == "ok"
  assert sorted(by_id(recs)) == ["ivqa:abc_DEF-123_10_20", "ivqa:qqq_3_9", "ivqa:xyz_1_5"]


def test_cc12m_failed_downloads_counted_once_across_splits(tmp_path):
  raw = tmp_path / "raw"
  write(str(raw / "cc12m.tsv"), "".join(f"http://x/{i}.jpg\tcaption {i}\n" for i in range(8)))
  members, keys, status = [], [], []
  for i in range(8):
    key = f"{i:09d}"
    keys.append(key)
    status.append("success" if i % 2 == 0 else "failed_to_download")
    if i % 2 == 0:
      members += [(f"{key}.jpg", jpeg_bytes(seed=i)), (f"{key}.txt", f"caption {i}".encode())]
  _tar(str(raw / "images/00000.tar"), members)
  pq.write_table(pa.table({"url": ["u"] * 8, "caption": ["c"] * 8, "key": keys,
                           "status": status}), raw / "images/00000.parquet")
  failed = 0
  for split in ("train", "validation"):
    summary, _ = run("cc12m", raw, tmp_path / "out", split, holdout_every=3,
                     max_skip_fraction=1.0)
    failed += summary["skipped"].get("download_failed", 0)
  assert failed == 4


def test_raw_files_are_read_through_gfile_urls(tmp_path):
  """`gs://` inputs go through tf.io.gfile; TF's in-memory `ram://` file system stands in."""
  import tensorflow as tf

  from dynpt.converters import video

  raw = f"ram://{tmp_path.name}/raw"

  def put(name, data):
    tf.io.gfile.makedirs(os.path.dirname(f"{raw}/{name}"))
    with tf.io.gfile.GFile(f"{raw}/{name}", "wb") as f:
      f.write(data)

  put("words.txt", b"n00000001\ttench\n")
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w") as tar:
    for i in range(2):
      info = tarfile.TarInfo(f"n00000001_{i}.JPEG")
      info.size = len(jpeg_bytes(seed=i))
      tar.addfile(info, io.BytesIO(jpeg_bytes(seed=i)))
  put("n00000001.tar", buf.getvalue())
  summary, recs = run("in21k", raw, tmp_path / "out", "train", holdout_every=10**9)
  assert summary["status"] == "ok" and summary["written"] == 2
  assert by_id(recs)["in21k:n00000001/n00000001_1"]["image/encoded"] == jpeg_bytes(seed=1)

  write_video(str(tmp_path / "clip.mp4"), [30, 90, 150, 210])
  put("TrainValVideo/video1.mp4", (tmp_path / "clip.mp4").read_bytes())
  frames, width, height = video.sample_video(f"{raw}/TrainValVideo/video1.mp4", 2)
  assert (width, height) == (32, 24)
  np.testing.assert_allclose([_grey(f) for f in frames], [90, 210], atol=4)
