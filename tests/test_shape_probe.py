"""The shape probe (dynpt.study.shape_probe, tools/shape_probe.py): labels, scores, learning."""

import io
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

from dynpt.data import schema
from dynpt.study import shape_probe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png(color: str) -> bytes:
  out = io.BytesIO()
  Image.new("RGB", (8, 8), color).save(out, format="PNG")
  return out.getvalue()


def test_labels_are_each_objects_shape_or_colour(tmp_path):
  labels = [[b"red circle", b"blue square"], [b"red square"], []]
  with schema.ShardedWriter(str(tmp_path), "vg", "train") as writer:
    for i, objects in enumerate(labels):
      writer.write({"image/id": f"vg:{i}", "image/encoded": _png("white"),
                    "objects/label": objects})
  images, y, names = shape_probe.load_labelled(str(tmp_path), ["vg"], "train", 4, None,
                                               "shape")
  assert images.shape == (3, 4, 4, 3) and names == ["circle", "square"]
  np.testing.assert_array_equal(y, [[1, 1], [0, 1], [0, 0]])
  _, y, names = shape_probe.load_labelled(str(tmp_path), ["vg"], "train", 4, None, "color")
  assert names == ["blue", "red"]
  np.testing.assert_array_equal(y, [[1, 1], [0, 1], [0, 0]])
  # Given the classes (the validation split takes the training split's), others go unlabelled.
  _, y, names = shape_probe.load_labelled(str(tmp_path), ["vg"], "train", 4,
                                          ["square", "triangle"], "shape")
  assert names == ["square", "triangle"]
  np.testing.assert_array_equal(y, [[1, 0], [1, 0], [0, 0]])


def test_scores_and_base_rates():
  y = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], np.float32)
  assert shape_probe.scores(y > 0, y) == (1.0, 1.0)
  pred = y > 0
  pred[1, 1] = False
  assert shape_probe.scores(pred, y) == (11 / 12, 3 / 4)
  # Majorities: 'yes' for the first label (3 of 4), 'no' for the others (3 and 4 of 4).
  per_label, empty = shape_probe.base_rates(y)
  assert np.isclose(per_label, (0.75 + 0.75 + 1.0) / 3) and empty == 0.25


def test_the_probe_learns_colours_it_can_see():
  """One plain large object a scene: 30 steps read its colour, above both base rates.

  If images and labels were paired wrongly, or the probe did not train or
  thresholded wrongly, no label set would come out exactly right: every scene
  has one colour, so always answering the empty set scores 0.
  """
  # The scores, not the compiled code's speed, are under test: XLA's optimisation
  # passes are most of a cold compile of the ResNet here.
  env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                                    + " --xla_backend_optimization_level=0"
                                    " --xla_llvm_disable_expensive_passes=true"))
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tools", "shape_probe.py"), "--synthetic=64",
       "--image_size=16", "--steps=30", "--batch_size=16", "--learning_rate=1e-2",
       "--attribute=color", "--textures=plain", "--sizes=large", "--max_objects=1"],
      capture_output=True, text=True, env=env, timeout=600, check=True).stdout
  step = re.search(r"step 30: train loss [\d.]+  val per-label acc ([\d.]+)  "
                   r"exact sets ([\d.]+)", out)
  base = re.search(r"base rates: per-label ([\d.]+) .* exact sets ([\d.]+)", out)
  assert step and base, out
  assert "64 train / 100 validation images of synthetic scenes" in out
  assert float(base.group(2)) == 0.0
  assert float(step.group(1)) > float(base.group(1)) and float(step.group(2)) >= 0.2, out
