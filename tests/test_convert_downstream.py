"""Downstream converters (VQA, entailment, referring expressions, video QA) on fixtures."""

import os
import pickle

import numpy as np

from tests.test_convert_helpers import (by_id, jpeg_bytes, roundtrip, run, texts, write,
                                        write_corrupt, write_json, write_jpeg, write_jsonl)


def test_vqav2_joins_questions_and_answers(tmp_path):
  raw = tmp_path / "raw"
  write_json(str(raw / "v2_OpenEnded_mscoco_val2014_questions.json"), {
      "info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
      "data_subtype": "val2014", "questions": [
          {"image_id": 391895, "question": "What color?", "question_id": 1},
          {"image_id": 391895, "question": "How many?", "question_id": 2},
          {"image_id": 7, "question": "Where?", "question_id": 3},
          {"image_id": 8, "question": "No annotation?", "question_id": 4},
          {"question": "no image id", "question_id": 5}]})
  answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
             for i, a in enumerate(["red"] * 9 + ["pink"])]
  write_json(str(raw / "v2_mscoco_val2014_annotations.json"), {"annotations": [
      {"question_id": q, "image_id": im, "answers": answers, "question_type": "what",
       "answer_type": "other", "multiple_choice_answer": "red"}
      for q, im in ((1, 391895), (2, 391895), (3, 7))]})
  write_jpeg(str(raw / "val2014/COCO_val2014_000000391895.jpg"))
  summary, recs = run("vqav2", raw, tmp_path / "out", "val")
  assert summary["written"] == 2
  assert summary["skipped"] == {"malformed_row": 1, "missing_annotation": 1,
                                "missing_image": 1}
  assert {r["image/id"] for r in recs} == {b"coco:391895"}
  first = [r for r in recs if r["question"] == b"What color?"][0]
  assert texts(first["answers"]) == ["red"] * 9 + ["pink"]
  roundtrip("vqav2", tmp_path / "out", "val", 2)


def test_vqav2_test_split_has_questions_only(tmp_path):
  raw = tmp_path / "raw"
  write_json(str(raw / "v2_OpenEnded_mscoco_test-dev2015_questions.json"), {"questions": [
      {"image_id": 1, "question": "Is it?", "question_id": 10}]})
  write_jpeg(str(raw / "test2015/COCO_test2015_000000000001.jpg"))
  summary, recs = run("vqav2", raw, tmp_path / "out", "test")
  assert summary["written"] == 1 and len(recs[0]["answers"]) == 0


def test_gqa_uses_vg_shared_ids_when_metadata_is_present(tmp_path):
  raw = tmp_path / "raw"
  write_json(str(raw / "val_balanced_questions.json"), {
      "q1": {"imageId": "2354786", "question": "Is the cube red?", "answer": "yes",
             "fullAnswer": "Yes, the cube is red.", "semantic": []},
      "q2": {"imageId": "5", "question": "What is it?", "answer": "ball"},
      "q3": {"imageId": "n161313", "question": "Is it?", "answer": "no"},
      "q4": {"question": "no image"}})
  write_json(str(raw / "image_data.json"), [{"image_id": 2354786, "coco_id": 99}])
  for name in ("2354786", "5", "n161313"):
    write_jpeg(str(raw / f"images/{name}.jpg"))
  summary, recs = run("gqa", raw, tmp_path / "out", "val")
  assert summary["skipped"] == {"malformed_row": 1}
  recs = by_id(recs)
  assert sorted(recs) == ["coco:99", "gqa:n161313", "vg:5"]
  assert texts(recs["coco:99"]["answers"]) == ["yes"]
  roundtrip("gqa", tmp_path / "out", "val", 3)


def test_snli_ve_labels_and_flickr_ids(tmp_path):
  raw = tmp_path / "raw"
  row = {"sentence1": "A dog runs.", "pairID": "p", "captionID": "c"}
  write_jsonl(str(raw / "snli_ve_dev.jsonl"), [
      {**row, "Flickr30k_ID": "1000092795", "sentence2": "An animal moves.",
       "gold_label": "entailment"},
      {**row, "Flickr30k_ID": "1000092795", "sentence2": "A cat.", "gold_label": "-"},
      {**row, "Flickr30k_ID": "12", "sentence2": "Broken image.",
       "gold_label": "neutral"},
      {**row, "sentence2": "no image", "gold_label": "neutral"}])
  write_jpeg(str(raw / "flickr30k_images/1000092795.jpg"))
  write_corrupt(str(raw / "flickr30k_images/12.jpg"))
  summary, recs = run("snli_ve", raw, tmp_path / "out", "val")
  assert summary["skipped"] == {"bad_label": 1, "corrupt_image": 1, "malformed_row": 1}
  (rec,) = recs
  assert (rec["image/id"], rec["hypothesis"], rec["label"]) == (
      b"flickr:1000092795", b"An animal moves.", b"entailment")
  roundtrip("snli_ve", tmp_path / "out", "val", 1)


def _write_refer(raw, folder, refs_file, refs):
  write(str(raw / folder / refs_file), pickle.dumps(refs, protocol=2))
  write_json(str(raw / folder / "instances.json"), {
      "images": [{"id": 581857, "width": 16, "height": 12,
                  "file_name": "COCO_train2014_000000581857.jpg"}],
      "annotations": [{"id": 5, "bbox": [1.0, 2.0, 3.0, 4.0], "image_id": 581857,
                       "category_id": 1, "area": 12.0, "iscrowd": 0}],
      "categories": [{"id": 1, "name": "cube"}]})


def _ref(split, sents, ann_id=5):
  return {"ref_id": 0, "ann_id": ann_id, "image_id": 581857, "split": split,
          "category_id": 1, "file_name": "COCO_train2014_000000581857_5.jpg",
          "sentences": [{"sent": s, "raw": s.capitalize(), "tokens": s.split()}
                        for s in sents]}


def test_refcoco_family_splits_and_boxes(tmp_path):
  raw = tmp_path / "raw"
  refs = [_ref("testA", ["left cube", "red one"]), _ref("train", ["right ball"]),
          _ref("testA", ["lost"], ann_id=99), {"split": "testA"}]
  _write_refer(raw, "refcoco", "refs(unc).p", refs)
  _write_refer(raw, "refcoco+", "refs(unc).p", refs)
  _write_refer(raw, "refcocog", "refs(umd).p", [_ref("test", ["the cube on the left"])])
  write_jpeg(str(raw / "images/mscoco/images/train2014/COCO_train2014_000000581857.jpg"))
  for name in ("refcoco", "refcocoplus"):
    summary, recs = run(name, raw, tmp_path / "out", "testA")
    assert summary["skipped"] == {"malformed_row": 1, "missing_annotation": 1}
    assert sorted(r["refexp"] for r in recs) == [b"left cube", b"red one"]
    assert recs[0]["image/id"] == b"coco:581857"
    np.testing.assert_allclose(recs[0]["refexp/bbox"], [1, 2, 4, 6])
    roundtrip(name, tmp_path / "out", "testA", 2)
  summary, recs = run("refcocog", raw, tmp_path / "out", "test")
  assert [r["refexp"] for r in recs] == [b"the cube on the left"]
  roundtrip("refcocog", tmp_path / "out", "test", 1)


def _frames(folder, n):
  for i in range(1, n + 1):
    write_jpeg(os.path.join(folder, f"{i}.jpg"), seed=i)  # 1.jpg .. n.jpg, unpadded.


def test_msrvtt_qa_samples_frames_uniformly(tmp_path):
  raw = tmp_path / "raw"
  write_json(str(raw / "train_qa.json"), [
      {"question": "what is a man doing?", "answer": "sing", "video_id": 0, "id": 0,
       "category_id": 0},
      {"question": "who talks?", "answer": "woman", "video_id": 5, "id": 1},
      {"question": "broken", "video_id": 0, "id": 2}])
  _frames(str(raw / "frames/video0"), 10)
  summary, recs = run("msrvtt_qa", raw, tmp_path / "out", "train", num_frames=4)
  assert summary["skipped"] == {"malformed_row": 1, "missing_video": 1}
  (rec,) = recs
  assert rec["image/id"] == b"msrvtt:video0" and texts(rec["answers"]) == ["sing"]
  # Centres of 4 segments of 10 frames: indices 1, 3, 6, 8 -> files 2, 4, 7, 9.
  assert list(rec["video/frames"]) == [jpeg_bytes(seed=s) for s in (2, 4, 7, 9)]
  assert roundtrip("msrvtt_qa", tmp_path / "out", "train", 1)["image"].shape[1] == 2


def test_msvd_qa_maps_youtube_names(tmp_path):
  raw = tmp_path / "raw"
  write_json(str(raw / "val_qa.json"), [
      {"question": "what is the cat doing?", "answer": "play", "video_id": 1, "id": 0},
      {"question": "named video?", "answer": "yes", "video": "clipname", "id": 1}])
  write(str(raw / "youtube_mapping.txt"), "-4wsuPCjDBc_5_15 vid1\n")
  _frames(str(raw / "frames/-4wsuPCjDBc_5_15"), 2)
  _frames(str(raw / "frames/clipname"), 3)
  summary, recs = run("msvd_qa", raw, tmp_path / "out", "val", num_frames=3)
  assert summary["written"] == 2
  recs = by_id(recs)
  assert sorted(recs) == ["msvd:clipname", "msvd:vid1"]
  assert len(recs["msvd:vid1"]["video/frames"]) == 3  # Short videos repeat frames.
  roundtrip("msvd_qa", tmp_path / "out", "val", 2)


def test_ivqa_csv(tmp_path):
  raw = tmp_path / "raw"
  write(str(raw / "test.csv"),
        "video_id,start,end,question,answer1,answer2,answer3,answer4,answer5\n"
        "abc,10,20,what is in the bowl?,rice,rice,rice,noodles,rice\n"
        "def,1.0,5.0,what tool?,knife,,knife,,\n"
        "ghi,x,5,bad start,a,a,a,a,a\n"
        "short,row\n")
  _frames(str(raw / "frames/abc_10_20"), 4)
  _frames(str(raw / "frames/def"), 4)
  summary, recs = run("ivqa", raw, tmp_path / "out", "test", num_frames=2)
  assert summary["skipped"] == {"malformed_row": 2}
  recs = by_id(recs)
  assert texts(recs["ivqa:abc_10_20"]["answers"]) == ["rice"] * 3 + ["noodles", "rice"]
  assert texts(recs["ivqa:def_1_5"]["answers"]) == ["knife", "knife"]
  assert recs["ivqa:def_1_5"]["image/width"] == 16
  roundtrip("ivqa", tmp_path / "out", "test", 2)
