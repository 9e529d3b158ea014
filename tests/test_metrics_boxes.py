"""Tests of box IoU and the RefCOCO accuracy@0.5 over generated box text."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from dynpt import metrics


def _box_text_for(box_xyxy, image_wh, num_bins=100):
  """Writes a box in the documented format: "ymax xmax ymin xmin" bins."""
  (x0, y0, x1, y1), (w, h) = box_xyxy, image_wh
  q = lambda v, size: min(num_bins - 1, max(0, int(v / size * num_bins)))
  return f"{q(y1, h)} {q(x1, w)} {q(y0, h)} {q(x0, w)}"


def test_box_iou_hand_worked():
  assert metrics.box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
  assert metrics.box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
  assert metrics.box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges
  # Overlap 5x10 = 50, union 100 + 100 - 50 = 150.
  assert metrics.box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
  # A box inside another: 4 / 100.
  assert metrics.box_iou([0, 0, 10, 10], [2, 2, 4, 4]) == pytest.approx(0.04)


def test_box_iou_degenerate_and_out_of_image_boxes():
  assert metrics.box_iou([5, 5, 5, 5], [5, 5, 5, 5]) == 0.0  # zero area, empty union
  assert metrics.box_iou([0, 0, 0, 10], [0, 0, 10, 10]) == 0.0  # zero width
  assert metrics.box_iou([10, 10, 0, 0], [0, 0, 10, 10]) == 0.0  # inverted = empty
  # Boxes are not clipped to an image: negative coordinates are plain geometry.
  assert metrics.box_iou([-10, -10, 10, 10], [0, 0, 10, 10]) == pytest.approx(0.25)


def test_box_iou_rejects_malformed_boxes():
  with pytest.raises(ValueError, match="box_a must be 4 finite numbers"):
    metrics.box_iou([0, 0, 1], [0, 0, 1, 1])
  with pytest.raises(ValueError, match="box_b must be 4 finite numbers"):
    metrics.box_iou([0, 0, 1, 1], [0, 0, np.nan, 1])


_coord = st.floats(min_value=-100, max_value=200, allow_nan=False, width=32)
_boxes = st.tuples(_coord, _coord, _coord, _coord)


@settings(max_examples=200, deadline=None)
@given(_boxes, _boxes)
def test_box_iou_symmetric_and_bounded(a, b):
  iou = metrics.box_iou(a, b)
  assert 0.0 <= iou <= 1.0
  assert iou == metrics.box_iou(b, a)


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 50), st.floats(0, 50), st.floats(1, 50), st.floats(1, 50))
def test_box_iou_of_a_box_with_itself_is_one(x, y, w, h):
  assert metrics.box_iou([x, y, x + w, y + h], [x, y, x + w, y + h]) == pytest.approx(1.0)


def test_parse_box_text_format_and_bin_centres():
  # ymax=61 xmax=80 ymin=12 xmin=5 on a 200 x 100 image: centre of bin q is (q + .5) / 100.
  box = metrics.decode_box_text("61 80 12 5", (200, 100))
  np.testing.assert_allclose(box, [11.0, 12.5, 161.0, 61.5])
  np.testing.assert_allclose(metrics.decode_box_text("<loc_61><loc_80><loc_12><loc_5>",
                                                      (200, 100)), box)
  np.testing.assert_allclose(metrics.decode_box_text(b" 61 80 12 5 ", (200, 100)), box)
  np.testing.assert_allclose(metrics.decode_box_text("12 5 61 80", (200, 100)), box)  # swapped


@pytest.mark.parametrize("text", ["", "61 80 12", "61 80 12 5 7", "61 80 12 100", "a b c d",
                                  "61 80 12 -5", "61.5 80 12 5", "a dog"])
def test_parse_box_text_rejects_non_boxes(text):
  assert metrics.decode_box_text(text, (100, 100)) is None


def test_parse_box_text_rejects_bad_image_size():
  with pytest.raises(ValueError, match="image_wh"):
    metrics.decode_box_text("1 2 3 4", (0, 100))


def test_refcoco_hit():
  gt, wh = [20, 30, 60, 90], (100, 120)
  assert metrics.refcoco_hit(_box_text_for(gt, wh), gt, wh)
  # Shifted by half its width: IoU = 20*60 / (2*40*60 - 20*60) = 1/3 < 0.5.
  assert not metrics.refcoco_hit(_box_text_for([40, 30, 80, 90], wh), gt, wh)
  assert not metrics.refcoco_hit("no box here", gt, wh)
  assert not metrics.refcoco_hit("50 50 50 50", gt, wh)  # degenerate box, zero area


def test_refcoco_eval_counts_unparseable_and_splits():
  wh = (64, 64)
  gt = [8, 8, 40, 40]
  texts = [_box_text_for(gt, wh), "garbage", _box_text_for([48, 48, 63, 63], wh),
           _box_text_for(gt, wh)]
  out = metrics.refcoco_eval(texts, [gt] * 4, [wh] * 4, splits=["val", "val", "testA", "testA"])
  assert out == {"num_examples": 4.0, "acc@0.5": 0.5, "unparseable": 0.25,
                 "acc@0.5/val": 0.5, "unparseable/val": 0.5,
                 "acc@0.5/testA": 0.5, "unparseable/testA": 0.0}
  with pytest.raises(ValueError, match="lengths differ"):
    metrics.refcoco_eval(texts, [gt] * 3, [wh] * 4)


def test_refcoco_metric_fn_target_formats():
  wh = (64, 32)
  gt = [8, 4, 40, 20]
  text = _box_text_for(gt, wh)
  targets = [{"box": gt, "image_wh": wh},
             {"refexp/bbox": np.array(gt, np.float32), "image/width": 64, "image/height": 32}]
  assert metrics.refcoco_metric_fn(targets, [text, "?"]) == {"acc@0.5": 50.0,
                                                             "unparseable": 50.0}
  with pytest.raises(ValueError, match="target 0 needs 'box'"):
    metrics.refcoco_metric_fn([{"image_wh": wh}], [text])
