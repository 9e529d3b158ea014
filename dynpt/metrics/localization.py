"""Referring-expression localisation metric (RefCOCO, RefCOCO+, RefCOCOg).

The model writes the box as text (see `dynpt.data.boxes`); a prediction is a hit
when the decoded box overlaps the ground-truth box with IoU >= 0.5. The share of
hits is what the paper reports as AP50 ("accuracy@0.5" in the RefCOCO
literature); each split (val, testA, testB, ...) is scored on its own. Text that
does not decode to a box counts as a miss and is also counted separately, so a
model that forgets the format is told apart from one that misplaces boxes.

Target format of `refcoco_metric_fn` (per example, from the task's target
postprocessor): a mapping with ``"box"``, the ground-truth pixel
``[x0, y0, x1, y1]``, and ``"image_wh"``, the ``(width, height)`` the box is in.
The on-disk schema's names ``"refexp/bbox"`` and ``"image/width"`` +
``"image/height"`` are accepted too.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from dynpt.data import boxes


def _as_box(box: Any, name: str) -> np.ndarray:
  arr = np.asarray(box, dtype=np.float64).reshape(-1)
  if arr.shape != (4,) or not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} must be 4 finite numbers [x0, y0, x1, y1], got {box!r}")
  return arr


def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
  """Intersection over union of two pixel boxes ``[x0, y0, x1, y1]``.

  Pure geometry: boxes are not clipped to any image. A box with ``x1 <= x0`` or
  ``y1 <= y0`` has zero area; when the union is empty the IoU is 0, so a
  degenerate prediction never counts as a hit.

  Returns:
    IoU in [0, 1]; symmetric in its arguments.
  """
  a = _as_box(box_a, "box_a")
  b = _as_box(box_b, "box_b")
  inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = inter_w * inter_h
  area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
  area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
  union = area_a + area_b - inter
  if union <= 0.0:
    return 0.0
  return float(min(1.0, inter / union))


def decode_box_text(predicted_text: str | bytes, image_wh: Sequence[float],
                    num_bins: int = 100) -> np.ndarray | None:
  """Pixel box of a generated text, or None when it is not a box.

  Uses `dynpt.data.boxes.text_to_box` (pure numpy), the inverse of the encoder
  that wrote the training targets, so the metric can never disagree with it.
  """
  text_to_box = boxes.text_to_box
  if isinstance(predicted_text, bytes):
    predicted_text = predicted_text.decode("utf-8", errors="replace")
  box = text_to_box(predicted_text, tuple(image_wh), num_bins=num_bins)
  return None if box is None else np.asarray(box, dtype=np.float64)


def refcoco_hit(predicted_text: str | bytes, gt_box_xyxy: Sequence[float],
                image_wh: Sequence[float], iou_threshold: float = 0.5) -> bool:
  """Whether the box written in `predicted_text` has IoU >= 0.5 with the ground truth.

  Args:
    predicted_text: the generated box text (``"ymax xmax ymin xmin"`` bins).
    gt_box_xyxy: ground-truth pixel box ``[x0, y0, x1, y1]``.
    image_wh: ``(width, height)`` of the image both boxes refer to.
    iou_threshold: the IoU a hit needs.

  Returns:
    True for a hit; False for a miss or text that is not a box.
  """
  box = decode_box_text(predicted_text, image_wh)
  return box is not None and box_iou(box, gt_box_xyxy) >= iou_threshold


def refcoco_eval(predicted_texts: Sequence[str | bytes], gt_boxes: Sequence[Sequence[float]],
                 image_whs: Sequence[Sequence[float]], splits: Sequence[str] | None = None,
                 iou_threshold: float = 0.5) -> dict[str, float]:
  """Accuracy@IoU (the paper's AP50) of a corpus, overall and per split.

  Args:
    predicted_texts: generated box texts.
    gt_boxes: ground-truth pixel boxes ``[x0, y0, x1, y1]``.
    image_whs: ``(width, height)`` per example.
    splits: optional split name per example (``"testA"``...); adds
      ``"acc@0.5/<split>"`` and ``"unparseable/<split>"`` entries.
    iou_threshold: the IoU a hit needs; it names the key (``acc@0.5``).

  Returns:
    ``{"acc@0.5": fraction of hits, "unparseable": fraction of texts that are not
    boxes, "num_examples": n}`` (plus per-split entries).
  """
  n = len(predicted_texts)
  if not (len(gt_boxes) == len(image_whs) == n) or (splits is not None and len(splits) != n):
    raise ValueError(f"refcoco_eval: lengths differ: {n} predictions, {len(gt_boxes)} boxes, "
                     f"{len(image_whs)} image sizes"
                     + ("" if splits is None else f", {len(splits)} splits"))
  if n == 0:
    raise ValueError("refcoco_eval: no examples to score")
  acc_key = f"acc@{iou_threshold:g}"
  groups: dict[str | None, list[int]] = {None: list(range(n))}
  for i, split in enumerate(splits or ()):
    groups.setdefault(split, []).append(i)
  hits = np.zeros(n, dtype=bool)
  unparseable = np.zeros(n, dtype=bool)
  for i, (text, gt, wh) in enumerate(zip(predicted_texts, gt_boxes, image_whs)):
    box = decode_box_text(text, wh)
    unparseable[i] = box is None
    hits[i] = box is not None and box_iou(box, gt) >= iou_threshold
  results: dict[str, float] = {"num_examples": float(n)}
  for split, idx in groups.items():
    suffix = "" if split is None else f"/{split}"
    results[acc_key + suffix] = float(hits[idx].mean())
    results["unparseable" + suffix] = float(unparseable[idx].mean())
  return results


def _target_box_and_wh(target: Any, index: int) -> tuple[Any, Any]:
  if not isinstance(target, Mapping):
    raise ValueError(f"refcoco_metric_fn: target {index} must be a mapping, "
                     f"got {type(target).__name__}")
  box = target.get("box", target.get("refexp/bbox"))
  if "image_wh" in target:
    wh = target["image_wh"]
  elif "image/width" in target and "image/height" in target:
    wh = (target["image/width"], target["image/height"])
  else:
    wh = None
  if box is None or wh is None:
    raise ValueError(f"refcoco_metric_fn: target {index} needs 'box' (or 'refexp/bbox') and "
                     f"'image_wh' (or 'image/width' + 'image/height'); got keys {sorted(target)}")
  return box, wh


def refcoco_metric_fn(targets: Sequence[Mapping[str, Any]],
                      predictions: Sequence[str | bytes]) -> dict[str, float]:
  """seqio metric: accuracy@0.5 and unparseable share, in percent (one split per task)."""
  pairs = [_target_box_and_wh(t, i) for i, t in enumerate(targets)]
  results = refcoco_eval(predictions, [b for b, _ in pairs], [wh for _, wh in pairs])
  return {"acc@0.5": 100.0 * results["acc@0.5"],
          "unparseable": 100.0 * results["unparseable"]}
