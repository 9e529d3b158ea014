"""The toy stand-ins for each real data set: which splits, how many records, what is in them.

One table, `DATASETS`, maps each dataset name of the shared contract to its
splits, its sizes per scale and the function that makes one record. A record
depends only on (seed, dataset, split, index), see `scene.record_rng`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from dynpt.toyworld import language as lang
from dynpt.toyworld import qa
from dynpt.toyworld import render
from dynpt.toyworld import scene as scene_lib
from dynpt.toyworld.scene import Scene


@dataclasses.dataclass(frozen=True)
class Scale:
  """Build sizes: records per split for pretraining sources and downstream sets."""
  image_size: int
  num_frames: int
  pretrain: dict[str, int]
  downstream_train: int
  downstream_eval: int


SCALES = {
    "tiny": Scale(32, 4, {"train": 48, "validation": 16}, 48, 16),
    "default": Scale(64, 8, {"train": 2000, "validation": 200}, 500, 200),
}

Maker = Callable[[np.random.Generator, str, int, int], tuple[dict[str, Any], Scene]]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  name: str
  splits: tuple[str, ...]
  make: Maker
  pretraining: bool = False


def _still(rng: np.random.Generator, image_size: int, min_objects: int = 1) -> tuple[
    Scene, dict[str, Any]]:
  scene = scene_lib.sample_scene(rng, image_size, min_objects=min_objects)
  image, _ = render.render(scene)
  return scene, {"image/encoded": render.encode_png(image)}


def _caption_maker(describe: Callable) -> Maker:
  def make(rng, split, image_size, num_frames):
    del split, num_frames
    scene, rec = _still(rng, image_size)
    rec["text/captions"] = [describe(rng, scene)]
    return rec, scene
  return make


def _make_oi(rng, split, image_size, num_frames):
  del split, num_frames
  scene, rec = _still(rng, image_size)
  keep = lang.oi_labels(rng, scene)
  rec["objects/label"] = [scene.objects[i].shape for i in keep]
  rec["objects/bbox"] = [scene.objects[i].box for i in keep]
  return rec, scene


def _make_vg(rng, split, image_size, num_frames):
  del split, num_frames
  scene, rec = _still(rng, image_size, min_objects=2)
  rec["objects/label"] = [lang.vg_label(o) for o in scene.objects]
  rec["objects/bbox"] = [o.box for o in scene.objects]
  return rec, scene


def _make_in21k(rng, split, image_size, num_frames):
  """One large, central, unoccluded object; small distractors go unlabelled."""
  del split, num_frames
  jitter = rng.uniform(-0.1, 0.1, size=2) * image_size
  salient = scene_lib.place_object(rng, [], image_size, size="large",
                                   center=tuple(image_size / 2 + jitter))
  objs = [salient]
  for _ in range(int(rng.integers(0, 3))):
    o = scene_lib.place_object(rng, objs, image_size, size="small", min_gap=1.05)
    if o is not None:
      objs.append(o)
  scene = Scene(image_size, str(rng.choice(list(scene_lib.BACKGROUNDS))), objs[1:] + objs[:1])
  image, _ = render.render(scene)
  return {"image/encoded": render.encode_png(image),
          "objects/label": [lang.fine_label(salient)]}, scene


def _qa_maker(ask: Callable, num_answers: int, min_objects: int = 1) -> Maker:
  def make(rng, split, image_size, num_frames):
    del split, num_frames
    scene, rec = _still(rng, image_size, min_objects)
    question, answer = ask(rng, scene)
    rec["question"] = question
    rec["answers"] = (qa.annotator_answers(rng, answer, num_answers) if num_answers > 1
                      else [answer])
    return rec, scene
  return make


def _make_snli_ve(rng, split, image_size, num_frames):
  del split, num_frames
  scene, rec = _still(rng, image_size)
  rec["hypothesis"], rec["label"] = qa.entailment(rng, scene)
  return rec, scene


def _refexp_maker(style: str) -> Maker:
  """RefCOCO-like: a target with look-alike distractors; testA/testB split by family."""
  def make(rng, split, image_size, num_frames):
    del num_frames
    family = {"testA": scene_lib.family_shapes("curved"),
              "testB": scene_lib.family_shapes("angular")}.get(split,
                                                               scene_lib.palette().shapes)
    for attempt in range(50):
      target = scene_lib.place_object(rng, [], image_size, shape=str(rng.choice(family)))
      objs = [target]
      for _ in range(int(rng.integers(1, 6))):
        o = scene_lib.place_object(
            rng, objs, image_size,
            shape=target.shape if rng.random() < 0.5 else None,
            color=target.color if rng.random() < 0.5 else None)
        if o is not None:
          objs.append(o)
      order = [int(i) for i in rng.permutation(len(objs))]
      scene = Scene(image_size, str(rng.choice(list(scene_lib.BACKGROUNDS))),
                    [objs[i] for i in order])
      index = order.index(0)
      image, _ = render.render(scene)
      if target.visible < 0.7 and attempt < 49:
        continue
      text = lang.refexp(rng, scene, index, style)
      if text is not None:
        return {"image/encoded": render.encode_png(image), "refexp": text,
                "refexp/bbox": target.box}, scene
    raise RuntimeError(f"toy world {style}/{split}: no unambiguous scene in 50 attempts")
  return make


def _video_maker(min_moving: int, max_moving: int, kinds: tuple[str, ...],
                 num_answers: int) -> Maker:
  """Frames of a scene where some objects move a third of the frame in one direction."""
  def make(rng, split, image_size, num_frames):
    del split
    travel = 0.3 * image_size
    scene = scene_lib.sample_video_scene(
        rng, image_size, int(rng.integers(min_moving, max_moving + 1)), travel)
    frames = []
    for f in range(num_frames):
      image, _ = render.render(scene_lib.frame_scene(scene, f / max(1, num_frames - 1), travel))
      frames.append(render.encode_png(image))
    question, answer = qa.video_qa(rng, scene, kinds)
    answers = (qa.annotator_answers(rng, answer, num_answers) if num_answers > 1
               else [answer])
    return {"video/frames": frames, "question": question, "answers": answers}, scene
  return make


_PRETRAIN = ("train", "validation")
_VQA = ("train", "val")
_REF = ("train", "val", "testA", "testB")
_VIDEO_KINDS = ("what", "color", "which_way", "which_object", "count", "does")

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in (
    DatasetSpec("cc3m", _PRETRAIN, _caption_maker(lang.cc3m_caption), True),
    DatasetSpec("cc12m", _PRETRAIN, _caption_maker(lang.cc12m_caption), True),
    DatasetSpec("ln", _PRETRAIN, _caption_maker(lang.ln_narrative), True),
    DatasetSpec("oi", _PRETRAIN, _make_oi, True),
    DatasetSpec("in21k", _PRETRAIN, _make_in21k, True),
    DatasetSpec("vg", _PRETRAIN, _make_vg, True),
    DatasetSpec("vqav2", _VQA, _qa_maker(qa.vqa, 10)),
    DatasetSpec("gqa", _VQA, _qa_maker(qa.gqa, 1, min_objects=2)),
    DatasetSpec("snli_ve", _VQA, _make_snli_ve),
    DatasetSpec("refcoco", _REF, _refexp_maker("refcoco")),
    DatasetSpec("refcocoplus", _REF, _refexp_maker("refcocoplus")),
    DatasetSpec("refcocog", ("train", "val", "test"), _refexp_maker("refcocog")),
    DatasetSpec("msrvtt_qa", ("train", "val", "test"), _video_maker(1, 2, _VIDEO_KINDS, 1)),
    DatasetSpec("msvd_qa", ("train", "val", "test"),
                _video_maker(1, 1, ("what", "color", "which_way"), 1)),
    DatasetSpec("ivqa", ("train", "val", "test"), _video_maker(1, 2, _VIDEO_KINDS, 5)),
)}


def num_records(dataset: str, split: str, scale: str) -> int:
  """Records in one split of a toy dataset at a scale ('tiny' or 'default')."""
  spec, sc = get_spec(dataset), get_scale(scale)
  if split not in spec.splits:
    raise ValueError(f"toy dataset {dataset!r} has no split {split!r}; splits: {spec.splits}")
  if spec.pretraining:
    return sc.pretrain[split]
  return sc.downstream_train if split == "train" else sc.downstream_eval


def get_spec(dataset: str) -> DatasetSpec:
  if dataset not in DATASETS:
    raise ValueError(f"unknown toy dataset {dataset!r}; known: {sorted(DATASETS)}")
  return DATASETS[dataset]


def get_scale(scale: str) -> Scale:
  if scale not in SCALES:
    raise ValueError(f"unknown toy-world scale {scale!r}; known: {sorted(SCALES)}")
  return SCALES[scale]


def image_id(dataset: str, split: str, index: int) -> str:
  """Ids carry the dataset name, so no two datasets (pretraining vs downstream) share one."""
  return f"toy-{dataset}-{split}-{index:06d}"


def make_example(dataset: str, split: str, index: int, *, seed: int, image_size: int,
                 num_frames: int, palette: str = "full") -> tuple[dict[str, Any], Scene]:
  """One schema record and the scene truth it was made from, drawn from `palette`.

  Returns:
    (record, scene): the record is keyed by `dynpt.data.schema` feature names;
    for videos, `scene` holds the objects at their mid-clip positions.
  """
  spec = get_spec(dataset)
  if split not in spec.splits:
    raise ValueError(f"toy dataset {dataset!r} has no split {split!r}; splits: {spec.splits}")
  rng = scene_lib.record_rng(seed, dataset, split, index)
  with scene_lib.using_palette(palette):
    record, scene = spec.make(rng, split, image_size, num_frames)
  record["image/id"] = image_id(dataset, split, index)
  record["image/width"] = image_size
  record["image/height"] = image_size
  return record, scene
