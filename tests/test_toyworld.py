"""Tests of the procedural toy world: schema, determinism and agreement with scene truth."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from dynpt.data import schema
from dynpt.toyworld import build
from dynpt.toyworld import datasets as ds_lib
from dynpt.toyworld import render

SEED = 0
TINY = ds_lib.SCALES["tiny"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("toy_tiny"))
  counts = build.build_toy_world(d, seed=SEED, scale="tiny", progress=False)
  assert set(counts) == set(ds_lib.DATASETS)
  return d


def _read(d, dataset, split):
  return schema.read_records(d, dataset, split)


def _truth(dataset, split, index):
  return ds_lib.make_example(dataset, split, index, seed=SEED, image_size=TINY.image_size,
                             num_frames=TINY.num_frames)


def _files(d):
  out = {}
  for root, _, names in os.walk(d):
    for n in names:
      with open(os.path.join(root, n), "rb") as f:
        out[os.path.relpath(os.path.join(root, n), d)] = f.read()
  return out


def _index(record) -> int:
  return int(record["image/id"].decode().rsplit("-", 1)[1])


_CONTRACT_SPLITS = {
    **{n: ("train", "validation") for n in ("cc3m", "cc12m", "ln", "oi", "in21k", "vg")},
    **{n: ("train", "val") for n in ("vqav2", "gqa", "snli_ve")},
    "refcoco": ("train", "val", "testA", "testB"),
    "refcocoplus": ("train", "val", "testA", "testB"),
    "refcocog": ("train", "val", "test"),
    **{n: ("train", "val", "test") for n in ("msrvtt_qa", "msvd_qa", "ivqa")},
}
_REQUIRED = {
    "cc3m": ("text/captions",), "cc12m": ("text/captions",), "ln": ("text/captions",),
    "oi": ("objects/label", "objects/bbox"), "in21k": ("objects/label",),
    "vg": ("objects/label", "objects/bbox"), "vqav2": ("question", "answers"),
    "gqa": ("question", "answers"), "snli_ve": ("hypothesis", "label"),
    "refcoco": ("refexp", "refexp/bbox"), "refcocoplus": ("refexp", "refexp/bbox"),
    "refcocog": ("refexp", "refexp/bbox"), "msrvtt_qa": ("question", "answers"),
    "msvd_qa": ("question", "answers"), "ivqa": ("question", "answers"),
}


def test_every_dataset_and_split_parses(tiny_dir):
  assert {n: s.splits for n, s in ds_lib.DATASETS.items()} == _CONTRACT_SPLITS
  all_ids = set()
  for name, splits in _CONTRACT_SPLITS.items():
    for split in splits:
      recs = _read(tiny_dir, name, split)
      assert len(recs) == ds_lib.num_records(name, split, "tiny"), (name, split)
      ids = {r["image/id"] for r in recs}
      assert len(ids) == len(recs) and not ids & all_ids, (name, split)
      all_ids |= ids
      for r in recs[:4]:
        for key in _REQUIRED[name]:
          assert np.size(r[key]) > 0, (name, split, key)
        assert r["image/width"] == r["image/height"] == TINY.image_size
        if name in ("msrvtt_qa", "msvd_qa", "ivqa"):
          assert len(r["video/frames"]) == TINY.num_frames and not r["image/encoded"]
          frames = [render.decode_image(f) for f in r["video/frames"]]
          assert frames[0].shape == (32, 32, 3)
          assert not np.array_equal(frames[0], frames[-1]), "nothing moved"
        else:
          assert render.decode_image(r["image/encoded"]).shape == (32, 32, 3)


def test_records_are_the_rendered_scene_truth(tiny_dir):
  for name in ("vqav2", "oi", "refcoco"):
    for r in _read(tiny_dir, name, "train")[:6]:
      record, scene = _truth(name, "train", _index(r))
      image, masks = render.render(scene)
      assert np.array_equal(render.decode_image(r["image/encoded"]), image)
      assert record["image/encoded"] == r["image/encoded"]
      assert all(m.any() for m in masks), "an object is completely hidden"


def test_same_seed_same_bytes_other_seed_differs(tiny_dir, tmp_path):
  names = ["cc12m", "vqav2", "refcocog", "ivqa"]
  again = str(tmp_path / "again")
  build.build_toy_world(again, seed=SEED, scale="tiny", datasets=names, progress=False)
  ref = {k: v for k, v in _files(tiny_dir).items() if k.split(os.sep)[0] in names}
  assert _files(again) == ref
  other = str(tmp_path / "other")
  build.build_toy_world(other, seed=SEED + 1, scale="tiny", datasets=names, progress=False)
  other_files = _files(other)
  for path, data in ref.items():
    if ".tfrecord" in path:
      assert other_files[path] != data, path


def test_build_is_idempotent_and_rebuilds_incomplete(tmp_path):
  d = str(tmp_path)
  kw = dict(seed=3, scale="tiny", datasets=["in21k"], progress=False)
  build.build_toy_world(d, **kw)
  shard = schema.shard_path(d, "in21k", "train", 0, 1)
  marker = os.path.join(schema.split_dir(d, "in21k", "train"), build.META_FILE)
  os.utime(shard, (1, 1))
  build.build_toy_world(d, **kw)
  assert os.path.getmtime(shard) == 1, "a complete split was rewritten"
  build.build_toy_world(d, overwrite=True, **kw)
  assert os.path.getmtime(shard) > 1
  os.remove(marker)
  os.utime(shard, (1, 1))
  build.build_toy_world(d, **kw)
  assert os.path.getmtime(shard) > 1 and os.path.exists(marker)
  with pytest.raises(ValueError, match="image_size"):
    build.build_toy_world(d, image_size=8, **kw)
  with pytest.raises(ValueError, match="nope"):
    build.build_toy_world(d, seed=0, datasets=["nope"], progress=False)
  with pytest.raises(ValueError, match="unknown split.*'val'"):
    build.build_toy_world(d, records={"val": 5}, **kw)
  with pytest.raises(ValueError, match="at least 1"):
    build.build_toy_world(d, records={"train": 0}, **kw)
  with pytest.raises(ValueError, match="unknown split.*'vqav2/train'"):
    build.build_toy_world(d, records={"vqav2/train": 5}, **kw)


def test_records_per_dataset_win_over_records_per_split(tmp_path):
  counts = build.build_toy_world(
      str(tmp_path), seed=0, scale="tiny", image_size=16, datasets=["cc3m", "vg"],
      records={"train": 3, "vg/train": 5, "validation": 2}, progress=False)
  assert counts == {"cc3m": {"train": 3, "validation": 2}, "vg": {"train": 5, "validation": 2}}
  assert len(schema.read_records(str(tmp_path), "vg", "train")) == 5
  assert len(schema.read_records(str(tmp_path), "cc3m", "train")) == 3


_COUNT_Q = re.compile(r"how many (\w+)(?: (\w+))? are there\?")


def test_vqa_answers_match_scene(tiny_dir):
  checked = collections.Counter()
  for split in ("train", "val"):
    for r in _read(tiny_dir, "vqav2", split):
      _, scene = _truth("vqav2", split, _index(r))
      q = r["question"].decode()
      answers = [a.decode() for a in r["answers"]]
      assert len(answers) == 10
      majority, votes = collections.Counter(answers).most_common(1)[0]
      assert votes >= 6, answers
      objs = scene.objects
      if m := _COUNT_Q.fullmatch(q):
        word, rest = m.groups()
        if word == "shapes":
          truth = len(objs)
        elif rest == "shapes":
          truth = sum(o.color == word for o in objs)
        else:
          truth = sum(o.shape + ("es" if o.shape == "cross" else "s") == word for o in objs)
        assert majority == str(truth), (q, answers, [(o.color, o.shape) for o in objs])
        checked["count"] += 1
      elif m := re.fullmatch(r"is there an? (\w+) (\w+)\?", q):
        present = any((o.color, o.shape) == m.groups() for o in objs)
        assert majority == ("yes" if present else "no"), q
        checked["exists"] += 1
      elif m := re.fullmatch(r"what color is the (\w+)\?", q):
        (o,) = [o for o in objs if o.shape == m.group(1)]
        assert majority == o.color
        checked["color"] += 1
  assert checked["count"] > 5 and checked["exists"] > 3, checked


def test_refexp_boxes_surround_the_referred_object(tiny_dir):
  for name in ("refcoco", "refcocoplus", "refcocog"):
    for split in ds_lib.DATASETS[name].splits:
      for r in _read(tiny_dir, name, split):
        _, scene = _truth(name, split, _index(r))
        box = r["refexp/bbox"]
        assert 0 <= box[0] < box[2] <= 32 and 0 <= box[1] < box[3] <= 32
        _, masks = render.render(scene)
        hits = [i for i, o in enumerate(scene.objects) if np.allclose(o.box, box)]
        assert hits, (name, split, r["refexp"])
        target = scene.objects[hits[0]]
        ys, xs = np.nonzero(masks[hits[0]])
        assert xs.min() >= box[0] and xs.max() < box[2] and ys.min() >= box[1]
        assert ys.max() < box[3] and target.visible >= 0.7
        words = set(r["refexp"].decode().replace(",", "").split())
        attrs = {a: getattr(target, a) for a in ("size", "color", "texture", "shape")}
        named = {a: v for a, v in attrs.items() if v in words}
        assert named, r["refexp"]
        same = [o for o in scene.objects if all(getattr(o, a) == v for a, v in named.items())]
        if name == "refcocoplus":  # Appearance alone must single the target out.
          assert same == [target], r["refexp"]
        if split in ("testA", "testB"):
          assert target.family == ("curved" if split == "testA" else "angular")


def test_label_sources_match_scene(tiny_dir):
  for r in _read(tiny_dir, "oi", "train"):
    _, scene = _truth("oi", "train", _index(r))
    boxes = {tuple(o.box): o.shape for o in scene.objects}
    labels = [x.decode() for x in r["objects/label"]]
    assert len(labels) == len(r["objects/bbox"]) <= len(scene.objects)
    for label, box in zip(labels, r["objects/bbox"]):
      assert boxes[tuple(float(v) for v in box)] == label
  for r in _read(tiny_dir, "vg", "train"):
    _, scene = _truth("vg", "train", _index(r))
    assert [x.decode() for x in r["objects/label"]] == [
        f"{o.color} {o.shape}" for o in scene.objects]
  for r in _read(tiny_dir, "in21k", "train"):
    _, scene = _truth("in21k", "train", _index(r))
    salient = scene.objects[-1]
    assert salient.size == "large" and salient.visible == 1.0
    assert r["objects/label"][0].decode() == (
        f"{salient.texture} {salient.color} {salient.shape}")


def test_entailment_and_video_answers(tiny_dir):
  labels = collections.Counter()
  for r in _read(tiny_dir, "snli_ve", "train"):
    _, scene = _truth("snli_ve", "train", _index(r))
    label = r["label"].decode()
    labels[label] += 1
    if m := re.fullmatch(r"there is an? (\w+) (\w+) in the picture", r["hypothesis"].decode()):
      present = any((o.color, o.shape) == m.groups() for o in scene.objects)
      assert label == ("entailment" if present else "contradiction")
  assert set(labels) == set(schema.LABELS_SNLI)
  for r in _read(tiny_dir, "gqa", "train"):
    _, scene = _truth("gqa", "train", _index(r))
    q, (answer,) = r["question"].decode(), [a.decode() for a in r["answers"]]
    pairs = {(o.color, o.shape) for o in scene.objects}
    if m := re.fullmatch(r"how many shapes are (to the left of|to the right of|above|below) "
                         r"the (\w+) (\w+)\?", q):
      (ref,) = [o for o in scene.objects if (o.color, o.shape) == m.groups()[1:]]
      side = {"to the left of": lambda o: o.cx < ref.cx, "to the right of": lambda o: o.cx > ref.cx,
              "above": lambda o: o.cy < ref.cy, "below": lambda o: o.cy > ref.cy}[m.group(1)]
      assert answer == str(sum(side(o) for o in scene.objects if o is not ref)), q
    elif m := re.fullmatch(r"(is there|are there both) an? (\w+) (\w+) (or|and) an? (\w+) (\w+)\?",
                           q):
      x, y = (m.group(2), m.group(3)) in pairs, (m.group(5), m.group(6)) in pairs
      assert answer == ("yes" if (x or y if m.group(4) == "or" else x and y) else "no"), q
  for name in ("msrvtt_qa", "msvd_qa", "ivqa"):
    for r in _read(tiny_dir, name, "train"):
      _, scene = _truth(name, "train", _index(r))
      q, answers = r["question"].decode(), [a.decode() for a in r["answers"]]
      assert len(answers) == (5 if name == "ivqa" else 1)
      majority = collections.Counter(answers).most_common(1)[0][0]
      if m := re.fullmatch(r"which way does the (\w+) (\w+) move\?", q):
        (o,) = [o for o in scene.objects if (o.color, o.shape) == m.groups() and o.motion]
        assert majority == o.motion
      elif q == "how many shapes move?":
        assert majority == str(sum(bool(o.motion) for o in scene.objects))


def test_difficulty_shape_of_caption_sources(tiny_dir):
  def mean_words(name):
    return np.mean([len(r["text/captions"][0].split()) for r in _read(tiny_dir, name, "train")])
  assert mean_words("ln") > 2.5 * mean_words("cc3m")
  assert mean_words("cc12m") > mean_words("cc3m")


def test_make_toy_data_tool(tmp_path):
  out = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "make_toy_data.py"),
       f"--data_dir={tmp_path}", "--datasets=cc3m", "--image_size=16",
       "--records=validation=3"],
      capture_output=True, text=True, cwd=REPO, timeout=120, check=True)
  assert "cc3m" in out.stdout and "total records: 51" in out.stdout
  assert len(schema.read_records(str(tmp_path), "cc3m", "train")) == 48
  rec = schema.read_records(str(tmp_path), "cc3m", "validation")[0]
  assert render.decode_image(rec["image/encoded"]).shape == (16, 16, 3)
  # A split the dataset does not have: one error line naming it, no traceback.
  bad = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "make_toy_data.py"),
       f"--data_dir={tmp_path}", "--datasets=cc3m", "--records=testA=3"],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert bad.returncode == 1 and "Traceback" not in bad.stderr
  errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "testA" in errors[0], bad.stderr[-2000:]


def test_simple_palette_draws_only_its_vocabulary_and_is_recorded(tmp_path):
  """Every randomly drawn object, word and answer comes from the 'simple' palette."""
  from dynpt.toyworld import language as lang
  from dynpt.toyworld import scene as scene_lib

  simple = scene_lib.get_palette("simple")
  names = ["oi", "vg", "cc3m", "vqav2", "gqa", "snli_ve", "refcoco", "msvd_qa"]
  d = str(tmp_path)
  build.build_toy_world(d, seed=SEED, scale="tiny", datasets=names, progress=False,
                        palette="simple")
  other_shapes = set(scene_lib.SHAPES) - set(simple.shapes)
  other_words = other_shapes | {lang.plural(s) for s in other_shapes}
  for name in names:
    for split in ds_lib.get_spec(name).splits:
      with open(os.path.join(d, name, split, build.META_FILE)) as f:
        assert '"palette": "simple"' in f.read()
      for r in _read(d, name, split):
        _, scene = ds_lib.make_example(name, split, _index(r), seed=SEED,
                                       image_size=TINY.image_size,
                                       num_frames=TINY.num_frames, palette="simple")
        for o in scene.objects:
          assert o.shape in simple.shapes and o.texture == "plain", (name, o)
          if name not in ("msvd_qa",):  # Videos keep their small distractors.
            assert o.size in simple.sizes, (name, o)
        text = " ".join(x.decode() if isinstance(x, bytes) else str(x) for k in (
            "objects/label", "text/captions", "question", "answers", "hypothesis", "refexp")
            for x in np.atleast_1d(r[k]))
        assert not set(re.findall(r"[a-z]+", text)) & other_words, (name, text)
  # The default is the full palette, and a build of another palette is rebuilt, not reused.
  default, _ = ds_lib.make_example("oi", "train", 0, seed=SEED, image_size=32, num_frames=4)
  full, _ = ds_lib.make_example("oi", "train", 0, seed=SEED, image_size=32, num_frames=4,
                                palette="full")
  assert repr(default) == repr(full)
  build.build_toy_world(d, seed=SEED, scale="tiny", datasets=["oi"], progress=False)
  with open(os.path.join(d, "oi", "train", build.META_FILE)) as f:
    assert '"palette": "full"' in f.read()
  with pytest.raises(ValueError, match="unknown toy-world palette 'bright'"):
    build.build_toy_world(d, seed=SEED, scale="tiny", datasets=["oi"], palette="bright")
  with pytest.raises(ValueError, match="unknown"):
    scene_lib.Palette(shapes=("circle", "blob"))
