"""Damaged and hostile raw input: one bad item is one skip; reads stay in the raw folder.

Most cases call a converter's listing or `make_record` directly (no Beam: what the
pipeline runs per unit and per item); one SNLI-VE conversion runs them end to end.
"""

import os
import pickle
import struct
import tarfile
import zlib

import numpy as np
from PIL import Image
import pytest

from dynpt import converters
from dynpt.converters import ids
from dynpt.converters import images
from dynpt.converters import img2dataset
from dynpt.converters import refcoco
from dynpt.converters import skips
from dynpt.converters import video
from tests.test_convert_helpers import (by_id, jpeg_bytes, run, skipped_lines, write,
                                        write_json, write_jpeg)
from tests.test_convert_official import _tar

# A QOI header and a body on which PIL's QOI decoder raises IndexError.
QOI_CRASH = b"qoif" + struct.pack(">II", 4, 4) + bytes([3, 0]) + b"\0" * 8


def _png(width, height):
  """A real 1-bit PNG of `width` x `height`, a few kB (all black)."""
  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))

  rows = zlib.compress(b"\0" * (((width + 7) // 8 + 1) * height), 9)
  return (b"\x89PNG\r\n\x1a\n"
          + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
          + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _conv(name, raw, **options):
  return converters.get_converter(
      name, converters.ConvertOptions(raw_dir=str(raw), **options))


def _listed(conv, split):
  """Everything the split's listing yields (items, group parts and `Skipped`)."""
  return [out for unit in conv.list_units(split) for out in conv.expand_unit(split, unit)]


def _skips(outs):
  return sorted((s.reason, s.where) for s in outs if isinstance(s, skips.Skipped))


def test_check_image_skips_decoder_crashes_and_images_over_the_pixel_limit():
  with pytest.raises(skips.Skip) as e:
    images.check_image(QOI_CRASH, "x.jpg")  # A QOI file named .jpg.
  assert e.value.reason == "corrupt_image" and "IndexError" in e.value.detail
  big = _png(12000, 12000)  # The case: a small file, 144 Mpx decoded.
  assert len(big) < 100_000
  with pytest.raises(skips.Skip) as e:
    images.check_image(big, "big.png")
  assert e.value.reason == "image_too_large" and "12000x12000" in e.value.detail
  assert converters.ConvertOptions(raw_dir="r").max_image_pixels == Image.MAX_IMAGE_PIXELS
  assert images.check_image(_png(40, 30), "ok.png", max_pixels=1200)[1:] == (40, 30)
  with pytest.raises(skips.Skip, match="image_too_large"):
    images.check_image(_png(40, 30), "ok.png", max_pixels=1199)


def test_snli_ve_hostile_rows_are_each_one_skip(tmp_path):
  raw, out = tmp_path / "raw", tmp_path / "out"
  folder = raw / "flickr30k-images"
  write_jpeg(str(folder / "0.jpg"))
  write(str(folder / "1.jpg"), QOI_CRASH)
  write_jpeg(str(folder / "2.jpg"), 20, 20)  # Over --max_image_pixels=192.
  write(str(folder / "3.jpg"), jpeg_bytes() + b"\0" * 5000)  # Over --max_file_bytes.
  write_jpeg(str(tmp_path / "secret.jpg"))  # Outside the raw folder.
  os.symlink(tmp_path / "secret.jpg", folder / "4.jpg")
  rows = [("0", "ok"), ("1", "qoi"), ("2", "large"), ("3", "heavy"),
          ("../../secret", "dots"), (str(tmp_path / "secret"), "absolute"), ("4", "link")]
  lines = [f'{{"Flickr30K_ID": "{i}", "sentence2": "{h}", "gold_label": "neutral"}}\n'
           for i, h in rows]
  lines.append('{"Flickr30K_ID": "0", "sentence2": "caf\xe9", "gold_label": "neutral"}\n')
  write(str(raw / "snli_ve_train.jsonl"),
        "".join(lines[:-1]).encode() + lines[-1].encode("latin-1"))
  summary, recs = run("snli_ve", raw, out, "train", max_image_pixels=16 * 12,
                      max_file_bytes=3000, max_skip_fraction=1.0)
  assert summary["skipped"] == {"corrupt_image": 1, "file_too_large": 1,
                                "image_too_large": 1, "malformed_row": 1,
                                "unsafe_path": 3}
  assert list(by_id(recs)) == ["flickr:0"]
  where = {s["reason"]: [] for s in skipped_lines(out, "snli_ve", "train")}
  for s in skipped_lines(out, "snli_ve", "train"):
    where[s["reason"]].append(s["where"])
  jsonl = str(raw / "snli_ve_train.jsonl")
  assert where["malformed_row"] == [f"{jsonl}:8: not UTF-8 (byte 39)"]
  unsafe = sorted(where["unsafe_path"])
  assert unsafe[0].startswith(f"{folder}/4.jpg: resolves to {tmp_path}/secret.jpg, "
                              "outside")
  assert unsafe[1] == f"{jsonl}:5: Flickr30K_ID '../../secret.jpg' climbs out with `..`"
  assert unsafe[2] == (f"{jsonl}:6: Flickr30K_ID '{tmp_path}/secret.jpg' is an absolute "
                       "path")
  assert "IndexError" in where["corrupt_image"][0]


def test_annotation_values_that_do_not_convert_are_skipped(tmp_path):
  raw = tmp_path / "raw"
  write(str(raw / "v2_OpenEnded_mscoco_val2014_questions.json"),
        '{"questions": [{"image_id": Infinity, "question": "q", "question_id": 1},'
        ' {"image_id": 7, "question": "q", "question_id": [2]},'
        ' {"image_id": 7, "question": "q", "question_id": 3}]}')
  write(str(raw / "v2_mscoco_val2014_annotations.json"),
        '{"annotations": [{"question_id": 3, "answers": [{"answer": "a"}]}]}')
  outs = _listed(_conv("vqav2", raw), "val")
  assert _skips(outs) == [("malformed_row", f"{raw}/{n}: questions[{i}]") for n, i in (
      ("v2_OpenEnded_mscoco_val2014_questions.json", 0),
      ("v2_OpenEnded_mscoco_val2014_questions.json", 1))]
  assert [o["image"] for o in outs if isinstance(o, dict)] == [7]

  write(str(raw / "train_qa.json"),
        '[{"question": "q", "answer": "a", "video_id": Infinity},'
        ' {"question": "q", "answer": "a", "video_id": NaN},'
        ' {"question": "q", "answer": "a", "video_id": 7}]')
  outs = _listed(_conv("msrvtt_qa", raw), "train")
  assert [s[0] for s in _skips(outs)] == ["malformed_row"] * 2
  assert [o["names"][0] for o in outs if isinstance(o, dict)] == ["video7"]

  write(str(raw / "test.csv"),
        "video_id,start,end,question,answer1,answer2,answer3,answer4,answer5\n"
        "abc,inf,5,what?,a,,,,\nabc,1,5,what?,a,,,,\n")
  outs = _listed(_conv("ivqa", raw), "test")
  assert _skips(outs) == [("malformed_row", f"{raw / 'test.csv'}:2")]

  # GQA: VG metadata with a non-finite id, and an image named with a digit that
  # str.isdigit() accepts and int() rejects.
  write(str(raw / "image_data.json"),
        '[{"image_id": Infinity, "coco_id": 1}, {"image_id": 5, "coco_id": 55}]')
  write_json(str(raw / "val_balanced_questions.json"), {
      "q1": {"imageId": "\u2460", "question": "q", "answer": "a"},
      "q2": {"imageId": "5", "question": "q", "answer": "a"}})
  conv = _conv("gqa", raw)
  outs = _listed(conv, "val")
  assert sorted(o["id"] for o in outs) == ["coco:55", "gqa:\u2460"]
  write_jpeg(str(raw / "images/\u2460.jpg"))
  record = conv.make_record(next(o for o in outs if o["image"] == "\u2460"))
  assert record["image/id"] == "gqa:\u2460"
  assert ids.image_id("coco", "\u00b2") == "coco:\u00b2"


def test_names_with_digits_int_rejects_are_not_rows(tmp_path):
  raw = tmp_path / "raw"
  write(str(raw / "Train_GCC-training.tsv"), "a cube\thttp://x/0.jpg\n")
  write_jpeg(str(raw / "images/train/0.jpg"))
  write_jpeg(str(raw / "images/train/\u2460.jpg"))
  write_jpeg(str(raw / "images/train/sub/\u00b2.jpg"))
  outs = _listed(_conv("cc3m", raw), "train")
  assert sorted(key for key, _ in outs) == ["0", "0"]  # The TSV row and its image.
  assert video._natural_key("frame1\u00b22.jpg") == ["frame", 1, "\u00b2", 2, ".jpg"]


def test_names_from_annotations_stay_in_their_folder(tmp_path):
  raw = tmp_path / "raw"
  write_json(str(raw / "val_balanced_questions.json"), {
      "q1": {"imageId": "../../../secret", "question": "q", "answer": "a"},
      "q2": {"imageId": "/etc/passwd", "question": "q", "answer": "a"}})
  outs = _listed(_conv("gqa", raw), "val")
  assert [s[0] for s in _skips(outs)] == ["unsafe_path"] * 2
  assert "question q1: imageId '../../../secret.jpg' climbs out" in _skips(outs)[0][1]

  write(str(raw / "open_images_validation_captions.jsonl"),
        '{"image_id": "../x", "caption": "c"}\n{"image_id": "ab", "caption": "c"}\n')
  outs = _listed(_conv("ln", raw), "validation")
  assert _skips(outs) == [("unsafe_path", f"{raw}/open_images_validation_captions.jsonl:1:"
                           " image_id '../x.jpg' climbs out with `..`")]
  assert [o[0] for o in outs if isinstance(o, tuple)] == ["ab"]

  write(str(raw / "class-descriptions.csv"), "/m/01,Cat\n")
  write(str(raw / "validation-annotations-human-imagelabels.csv"),
        "ImageID,Source,LabelName,Confidence\n../../x,v,/m/01,1\naa,v,/m/01,1\n")
  outs = _listed(_conv("oi", raw), "validation")
  assert [s[0] for s in _skips(outs)] == ["unsafe_path"]
  assert [o[0] for o in outs if isinstance(o, tuple)] == ["aa"]


def test_text_that_is_not_utf8_skips_its_row_only(tmp_path):
  raw = tmp_path / "raw"
  write(str(raw / "class-descriptions.csv"), "/m/01,Cat\n")
  write(str(raw / "validation-annotations-human-imagelabels.csv"),
        b"ImageID,Source,LabelName,Confidence\naa,v\xff,/m/01,1\nbb,v,/m/01,1\n")
  outs = _listed(_conv("oi", raw), "validation")
  csv = raw / "validation-annotations-human-imagelabels.csv"
  assert _skips(outs) == [("malformed_row", f"{csv}@36: not UTF-8 (byte 4)")]
  assert [o[0] for o in outs if isinstance(o, tuple)] == ["bb"]
  write(str(raw / "Train_GCC-training.tsv"), b"caf\xe9\thttp://x/0.jpg\nok\thttp://x/1.jpg\n")
  outs = _listed(_conv("cc3m", raw), "train")
  assert _skips(outs) == [("malformed_row", f"{raw / 'Train_GCC-training.tsv'}:1: not UTF-8")]
  assert [o[0] for o in outs if isinstance(o, tuple)] == ["1"]


def test_refcoco_bad_annotations_are_skips_and_crafted_pickles_are_refused(tmp_path):
  raw = tmp_path / "raw"
  refs = [{"ref_id": i, "ann_id": i, "image_id": i, "split": "val",
           "sentences": [{"sent": f"thing {i}"}]} for i in (1, 2, 3)]
  with open(write(str(raw / "refcoco/refs(unc).p"), b""), "wb") as f:
    pickle.dump(refs, f, protocol=2)
  write_json(str(raw / "refcoco/instances.json"), {
      "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"},
                 {"id": 3, "file_name": str(tmp_path / "secret.jpg")}],
      "annotations": [{"id": 1, "bbox": [1, 2, 3, 4]}, {"id": 2},
                      {"id": 3, "bbox": [1, 2, 3, 4]}]})
  outs = _listed(_conv("refcoco", raw), "val")
  assert [o["file_name"] for o in outs if isinstance(o, dict)] == ["a.jpg"]
  found = _skips(outs)
  assert [s[0] for s in found] == ["malformed_annotation", "unsafe_path"]
  assert "ann_id 2 has no finite bbox" in found[0][1]
  assert "is an absolute path" in found[1][1]

  marker = tmp_path / "ran"

  class Payload:
    def __reduce__(self):
      return (open, (str(marker), "w"))

  with open(raw / "refcoco/refs(unc).p", "wb") as f:
    pickle.dump([Payload()], f, protocol=2)
  with pytest.raises(ValueError, match=r"refs\(unc\).p: not a readable refs pickle "
                     r"\(UnpicklingError: refused: the pickle asks for io.open"):
    refcoco.load_refs(str(raw / "refcoco/refs(unc).p"))
  assert not marker.exists()
  with open(raw / "refcoco/refs(unc).p", "wb") as f:
    pickle.dump([{"split": "val", "ids": {1, 2}, "t": (1.5, None, "x")}], f, protocol=2)
  assert refcoco.load_refs(str(raw / "refcoco/refs(unc).p"))[0]["ids"] == {1, 2}


def _five_member_tar(path):
  _tar(path, [(f"n00000001_{i}.JPEG", jpeg_bytes(seed=i)) for i in range(5)])
  with tarfile.open(path) as tar:
    return [m.offset for m in tar.getmembers()]


def test_damaged_tars_are_read_past_the_damage_and_counted(tmp_path):
  raw = tmp_path / "raw"
  write(str(raw / "words.txt"), "n00000001\ttench\n")
  path = str(raw / "n00000001.tar")
  offsets = _five_member_tar(path)
  with open(path, "r+b") as f:  # One flipped byte in the third member's header.
    f.seek(offsets[2] + 3)
    byte = f.read(1)
    f.seek(offsets[2] + 3)
    f.write(bytes([byte[0] ^ 0xFF]))
  conv = _conv("in21k", raw, holdout_every=10**9)
  outs = _listed(conv, "train")
  assert sorted(o["key"] for o in outs if isinstance(o, dict)) == [
      f"n00000001/n00000001_{i}" for i in (0, 1, 3, 4)]
  (skip,) = _skips(outs)
  assert skip[0] == "damaged_archive" and skip[1].startswith(f"{path}@{offsets[2]}: ")

  offsets = _five_member_tar(path)
  with open(path, "r+b") as f:
    f.truncate(offsets[4] + 600)  # The last member's data ends past the file's end.
  outs = _listed(conv, "train")
  assert len([o for o in outs if isinstance(o, dict)]) == 4
  assert _skips(outs) == [("damaged_archive", f"{path}@{offsets[4]}: member "
                           f"'n00000001_4.JPEG' of {len(jpeg_bytes(seed=4))} bytes ends "
                           f"past the end of the file ({offsets[4] + 600} bytes)")]
  # img2dataset shards are listed the same way.
  samples = list(img2dataset.index_tar(path))
  assert [s.reason for s in samples if isinstance(s, skips.Skipped)] == ["damaged_archive"]


@pytest.mark.parametrize("ext, codec", [("mp4", "h264"), ("avi", "mpeg4"),
                                        ("mkv", "h264"), ("webm", "libvpx")])
def test_video_metadata_that_is_not_utf8_still_decodes(tmp_path, ext, codec):
  import av

  path = str(tmp_path / f"clip.{ext}")
  with av.open(path, "w") as container:
    container.metadata["title"] = "TITLE-MARKER-TITLE"
    stream = container.add_stream(codec, rate=10)
    stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
    for level in (40, 120, 200):
      pixels = np.full((24, 32, 3), level, np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  data = open(path, "rb").read()
  assert data.count(b"TITLE-MARKER-TITLE") == 1
  write(path, data.replace(b"TITLE-MARKER-TITLE", b"\xff\xfe\xfdLE-MARKER-TITLE"))
  frames, width, height = video.sample_video(path, 2)
  assert (len(frames), width, height) == (2, 32, 24)
