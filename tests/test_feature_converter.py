"""Tests for dynpt.data.feature_converter."""

import numpy as np
import pytest
import tensorflow as tf

from dynpt.data import feature_converter as fc
from dynpt.data import preprocessors as pp

LENGTHS = {"inputs": 6, "targets": 5}


def _ds(image_shape=(10, 14, 3), **extra):
  ex = {"inputs": tf.constant([7, 8, 9, 1], tf.int32), "targets": tf.constant([3, 4, 1], tf.int32),
        "image": tf.fill(image_shape, tf.constant(200, tf.uint8)),
        "inputs_pretokenized": tf.constant("x")}
  ex.update(extra)
  return tf.data.Dataset.from_tensors(ex)


def test_image_example():
  conv = fc.ImageEncDecFeatureConverter(8, task_id=3)
  ex = next(conv(_ds(), LENGTHS).as_numpy_iterator())
  assert set(ex) == {"encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                     "decoder_loss_weights", "image", "task_id"}
  np.testing.assert_array_equal(ex["encoder_input_tokens"], [7, 8, 9, 1, 0, 0])
  np.testing.assert_array_equal(ex["decoder_target_tokens"], [3, 4, 1, 0, 0])
  np.testing.assert_array_equal(ex["decoder_input_tokens"], [0, 3, 4, 1, 0])
  np.testing.assert_array_equal(ex["decoder_loss_weights"], [1, 1, 1, 0, 0])
  assert ex["image"].shape == (8, 8, 3) and ex["image"].dtype == np.uint8
  assert np.all(ex["image"] == 200)
  assert ex["task_id"] == 3 and ex["task_id"].dtype == np.int32
  for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
            "decoder_loss_weights"):
    assert ex[k].dtype == np.int32


def test_task_id_feature_wins_and_is_required():
  conv = fc.ImageEncDecFeatureConverter(8)
  ex = next(conv(_ds(task_id=tf.constant(5, tf.int32)), LENGTHS).as_numpy_iterator())
  assert ex["task_id"] == 5
  with pytest.raises(ValueError, match="task_id"):
    conv(_ds(), LENGTHS)


def test_video_frames_resampled_and_resized():
  conv = fc.ImageEncDecFeatureConverter(6, num_frames=3, task_id=0)
  ex = next(conv(_ds((5, 9, 7, 3)), LENGTHS).as_numpy_iterator())
  assert ex["image"].shape == (3, 6, 6, 3)
  with pytest.raises(ValueError, match="video"):
    conv(_ds(), LENGTHS)
  with pytest.raises(ValueError, match="an image"):
    fc.ImageEncDecFeatureConverter(6, task_id=0)(_ds((5, 9, 7, 3)), LENGTHS)


def test_passthrough_fixed_shapes_batch():
  conv = fc.ImageEncDecFeatureConverter(4, task_id=0,
                                        passthrough=("answers", "gt_box", "image_wh", pp.POS_KEY))
  ds = _ds(answers=tf.constant(["a", "b"]), gt_box=tf.constant([1, 2, 3, 4], tf.float32),
           image_wh=tf.constant([14, 10], tf.int32),
           **{pp.POS_KEY: tf.constant(9, tf.int64)})
  ex = next(conv(ds, LENGTHS).batch(2).as_numpy_iterator())
  assert ex["answers"].shape == (1, fc.MAX_ANSWERS)
  assert list(ex["answers"][0][:3]) == [b"a", b"b", b""]
  np.testing.assert_array_equal(ex["gt_box"], [[1, 2, 3, 4]])
  np.testing.assert_array_equal(ex["image_wh"], [[14, 10]])
  assert ex[pp.POS_KEY].tolist() == [9]


def test_bad_configurations_raise():
  with pytest.raises(ValueError, match="pack"):
    fc.ImageEncDecFeatureConverter(8, pack=True)
  with pytest.raises(ValueError, match="bogus"):
    fc.ImageEncDecFeatureConverter(8, passthrough=("bogus",))
  no_image = tf.data.Dataset.from_tensors({"inputs": tf.constant([1]), "targets": tf.constant([1])})
  with pytest.raises(ValueError, match="'image'"):
    fc.ImageEncDecFeatureConverter(8, task_id=0)(no_image, LENGTHS)


def test_augment_is_deterministic_per_example():
  conv = fc.ImageEncDecFeatureConverter(8, task_id=0, augment=True)
  image = tf.constant(np.random.default_rng(0).integers(0, 255, (8, 8, 3)), tf.uint8)
  ds = tf.data.Dataset.from_tensors({"inputs": tf.constant([1]), "targets": tf.constant([1]),
                                     "image": image,
                                     pp.SEED_KEY: tf.constant([1, 2], tf.int64)})
  a = next(conv(ds, LENGTHS).as_numpy_iterator())["image"]
  b = next(conv(ds, LENGTHS).as_numpy_iterator())["image"]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, image.numpy())
