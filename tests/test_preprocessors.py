"""Tests for shared, image and downstream preprocessors (dynpt.data.preprocessors)."""

import io

import numpy as np
import pytest
import seqio
import tensorflow as tf
from PIL import Image

from dynpt.data import boxes
from dynpt.data import image_ops
from dynpt.data import preprocessors as pp


def _png(w, h, value=0):
  buf = io.BytesIO()
  Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def _one(**features):
  return tf.data.Dataset.from_tensors({k: tf.constant(v) for k, v in features.items()})


def _select(ds, keys):
  return ds.map(lambda ex: {k: ex[k] for k in keys})


def test_decode_image_and_video():
  ds = pp.decode_image(_one(**{"image/encoded": _png(12, 8, 7)}))
  ex = next(ds.as_numpy_iterator())
  assert "image/encoded" not in ex
  assert ex["image"].shape == (8, 12, 3) and ex["image"].dtype == np.uint8
  assert np.all(ex["image"] == 7) and list(ex["image_wh"]) == [12, 8]
  ds = pp.decode_video(_one(**{"video/frames": [_png(6, 4, v) for v in (1, 2, 3)],
                               "image/encoded": b""}))
  ex = next(ds.as_numpy_iterator())
  assert ex["image"].shape == (3, 4, 6, 3) and list(ex["image_wh"]) == [6, 4]
  assert [int(f[0, 0, 0]) for f in ex["image"]] == [1, 2, 3]


def test_image_ops_resize_sample_jitter():
  image = tf.constant(np.random.default_rng(0).integers(0, 255, (10, 20, 3)), tf.uint8)
  out = image_ops.resize(image, 16)
  assert out.shape == (16, 16, 3) and out.dtype == tf.uint8
  video = tf.reshape(tf.cast(tf.range(5), tf.uint8), [5, 1, 1, 1]) * tf.ones([5, 2, 2, 3], tf.uint8)
  assert list(image_ops.sample_frames(video, 2)[:, 0, 0, 0].numpy()) == [1, 3]
  assert list(image_ops.sample_frames(video, 10)[:, 0, 0, 0].numpy()) == [
      0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
  seed = tf.constant([1, 2], tf.int64)
  a, b = image_ops.color_jitter(out, seed), image_ops.color_jitter(out, seed)
  np.testing.assert_array_equal(a, b)
  assert a.shape == out.shape and a.dtype == tf.uint8
  assert np.abs(a.numpy().astype(int) - out.numpy()).mean() < 40  # Mild.


def test_vqa_most_common_answer_and_all_answers():
  ds = pp.vqa(_one(question="what color?", answers=["red", "blue", "blue", "red", "blue"]))
  seqio.test_utils.assert_dataset(
      _select(ds, ["inputs", "targets", "answers"]),
      {"inputs": "what color?", "targets": "blue",
       "answers": ["red", "blue", "blue", "red", "blue"]})


def test_snli_ve():
  ds = pp.snli_ve(_one(hypothesis="a cat sleeps", label="neutral"))
  seqio.test_utils.assert_dataset(
      _select(ds, ["inputs", "targets", "answers"]),
      {"inputs": "does the image entail a cat sleeps", "targets": "neutral",
       "answers": ["neutral"]})


@pytest.mark.parametrize("loc", [False, True])
def test_refexp_box_matches_boxes_module(loc):
  box = np.array([3.5, 10.0, 20.25, 30.0], np.float32)
  record = {"refexp": "the red one", "refexp/bbox": box, "image/width": np.int64(40),
            "image/height": np.int64(32), "image/encoded": b""}
  ds = pp.refexp_box(_one(**record), loc_tokens=loc)
  ex = next(ds.as_numpy_iterator())
  want = boxes.box_to_text(box, (40, 32), loc_tokens=loc)
  assert ex["targets"].decode() == (boxes.loc_to_extra_ids(want) if loc else want)
  assert ex["inputs"] == b"locate the red one"
  np.testing.assert_array_equal(ex["gt_box"], box)
  assert list(ex["image_wh"]) == [40, 32]
  back = boxes.text_to_box(ex["targets"], (40, 32))
  assert np.all(np.abs(back - box) <= 0.5 * np.array([40, 32, 40, 32]) / 100 + 1e-6)


def test_refexp_size_from_image_header_when_record_lacks_it():
  record = {"refexp": "x", "refexp/bbox": np.array([0, 0, 8, 8], np.float32),
            "image/width": np.int64(0), "image/height": np.int64(0),
            "image/encoded": _png(16, 32)}
  ex = next(pp.refexp_box(_one(**record)).as_numpy_iterator())
  assert list(ex["image_wh"]) == [16, 32]
  assert ex["targets"] == b"25 50 0 0"  # ymax 8/32, xmax 8/16.


def test_fill_template_errors_name_the_template():
  with pytest.raises(ValueError, match="needs 2 values"):
    pp.fill_template("{} and {}", [tf.constant("a")])


def test_prompts_have_no_unknown_pieces_in_toy_vocab(toy_vocab):
  for text in pp.PROMPT_TEXTS:
    ids = toy_vocab.encode(text)
    assert 2 not in ids, f"{text!r} has unknown pieces: {toy_vocab.decode(ids)!r}"
