"""Tests for dynpt.data.boxes (pure numpy) and its TensorFlow twin."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynpt.data import boxes

_SIZES = st.integers(min_value=8, max_value=2000)


@st.composite
def box_and_wh(draw):
  w, h = draw(_SIZES), draw(_SIZES)
  xs = sorted(draw(st.floats(0, w, allow_nan=False)) for _ in range(2))
  ys = sorted(draw(st.floats(0, h, allow_nan=False)) for _ in range(2))
  return np.array([xs[0], ys[0], xs[1], ys[1]]), (w, h)


@settings(max_examples=300, deadline=None)
@given(box_and_wh(), st.sampled_from([10, 100, 1000]), st.booleans())
def test_round_trip_within_half_a_bin(bw, num_bins, loc):
  box, (w, h) = bw
  text = boxes.box_to_text(box, (w, h), num_bins, loc_tokens=loc)
  back = boxes.text_to_box(text, (w, h), num_bins)
  half = 0.5 * np.array([w, h, w, h]) / num_bins
  assert np.all(np.abs(back - box) <= half + 1e-9), (text, box, back)
  # Decoding lands on bin centres.
  centres = back / np.array([w, h, w, h]) * num_bins - 0.5
  np.testing.assert_allclose(centres, np.round(centres), atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-500, 3000, allow_nan=False), min_size=4, max_size=4), _SIZES,
       _SIZES)
def test_order_and_clipping(coords, w, h):
  bins = boxes.box_to_bins(coords, (w, h))
  assert bins.dtype == np.int64 and np.all((bins >= 0) & (bins <= 99))
  ymax, xmax, ymin, xmin = bins
  assert ymax >= ymin and xmax >= xmin  # The paper's [ymax, xmax, ymin, xmin] order.
  back = boxes.text_to_box(boxes.box_to_text(coords, (w, h)), (w, h))
  x0, y0, x1, y1 = back
  assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h


def test_known_values_and_formats():
  # x in [10, 30] of 100 px, y in [20, 60] of 200 px.
  assert boxes.box_to_text([10, 20, 30, 60], (100, 200)) == "30 30 10 10"
  assert boxes.box_to_text([10, 20, 30, 60], (100, 200), loc_tokens=True) == (
      "<loc_30><loc_30><loc_10><loc_10>")
  assert boxes.box_to_text([100, 200, 100, 200], (100, 200)) == "99 99 99 99"  # Clipped.
  assert boxes.box_to_text([30, 60, 10, 20], (100, 200)) == "30 30 10 10"  # Corners sorted.
  np.testing.assert_allclose(boxes.text_to_box("30 30 10 10", (100, 200)),
                             [10.5, 21, 30.5, 61])
  for text in ("<loc_30><loc_30><loc_10><loc_10>", " <extra_id_30> <extra_id_30> "
               "<extra_id_10> <extra_id_10>", b"30 30 10 10"):
    np.testing.assert_allclose(boxes.text_to_box(text, (100, 200)), [10.5, 21, 30.5, 61])
  # Swapped corners from a model still give an ordered box.
  np.testing.assert_allclose(boxes.text_to_box("10 10 30 30", (100, 200)),
                             [10.5, 21, 30.5, 61])
  assert boxes.loc_to_extra_ids("<loc_3><loc_4> <loc_5><loc_6>") == (
      "<extra_id_3> <extra_id_4> <extra_id_5> <extra_id_6>")


@pytest.mark.parametrize("text", ["", "1 2 3", "1 2 3 4 5", "a b c d", "1 2 3 100",
                                  "-1 2 3 4", "1.5 2 3 4", "<loc_1><loc_2><loc_3>",
                                  "yes", "<loc_1> 2 3 4"])
def test_non_boxes_are_none(text):
  assert boxes.text_to_box(text, (64, 64)) is None


def test_bad_image_size_raises():
  with pytest.raises(ValueError, match="image_wh"):
    boxes.box_to_text([0, 0, 1, 1], (0, 10))


def test_importable_without_tensorflow_or_jax():
  code = ("import sys; import dynpt.data.boxes; "
          "assert 'tensorflow' not in sys.modules and 'jax' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=40, deadline=None)
@given(box_and_wh(), st.booleans())
def test_tensorflow_twin_matches_numpy(bw, loc):
  import tensorflow as tf

  from dynpt.data import preprocessors as pp

  box, wh = bw
  box32 = np.asarray(box, np.float32)  # Records store float32 boxes.
  got = pp.box_to_text_tf(tf.constant(box32), tf.constant(wh, tf.int32), 100, loc).numpy()
  want = boxes.box_to_text(box32, wh, 100, loc_tokens=loc)
  if loc:
    want = boxes.loc_to_extra_ids(want)
  assert got.decode() == want
