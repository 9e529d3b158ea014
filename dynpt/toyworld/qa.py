"""Questions, answers and entailment hypotheses about toy-world scenes.

Each generator returns text whose ground truth follows from the scene truth
alone (counts, colours, positions, sizes, motion), and only asks about
objects it can name unambiguously, so every answer is checkable.
"""

from __future__ import annotations

import numpy as np

from dynpt.toyworld import language as lang
from dynpt.toyworld import scene as scene_lib
from dynpt.toyworld.scene import Scene

YES_NO = ("yes", "no")
LOCATIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")
_MATERIALS = ("wood", "paper", "glass", "metal", "plastic", "clay")
_NEUTRAL = ("the {x} is made of {m}", "the {x} was cut out of {m}",
            "a child drew the {x} this morning", "the {x} is very heavy",
            "the {x} is about to fall", "the {x} is somebody's favourite shape",
            "there is another shape just outside the picture")


def _pick(rng: np.random.Generator, items: list):
  return items[int(rng.integers(len(items)))]


def _alternative(rng: np.random.Generator, answer: str) -> str:
  """A plausible wrong answer of the same type (annotator noise)."""
  if answer.isdigit():
    return str(max(0, int(answer) + int(rng.choice([-1, 1]))))
  pal = scene_lib.palette()
  for pool in (YES_NO, pal.colors, pal.shapes, LOCATIONS, tuple(scene_lib.DIRECTIONS),
               pal.sizes):
    others = [a for a in pool if a != answer]
    if answer in pool and others:
      return str(rng.choice(others))
  return answer


def annotator_answers(rng: np.random.Generator, truth: str, n: int) -> list[str]:
  """`n` answers, most of them `truth`; fewer than half are noisy alternatives."""
  answers = [truth] * n
  for i in rng.choice(n, size=int(rng.integers(0, (n - 1) // 3 + 1)), replace=False):
    answers[int(i)] = _alternative(rng, truth)
  return answers


def _named(rng: np.random.Generator, scene: Scene, attrs: tuple[str, ...]):
  """(index, phrase) of a random object that `attrs` name uniquely, else None."""
  ok = [i for i in range(len(scene.objects))
        if attrs in lang.unique_attr_sets(scene, i)]
  if not ok:
    return None
  i = _pick(rng, ok)
  return i, lang.phrase(scene.objects[i], attrs)


def _absent(rng: np.random.Generator, scene: Scene) -> tuple[str, str]:
  """A (color, shape) pair that is not in the scene."""
  present = {(o.color, o.shape) for o in scene.objects}
  while True:
    pair = (str(rng.choice(scene_lib.palette().colors)),
            str(rng.choice(scene_lib.palette().shapes)))
    if pair not in present:
      return pair


def vqa(rng: np.random.Generator, scene: Scene) -> tuple[str, str]:
  """A VQAv2-like (question, answer): counting, colour, shape, position, existence."""
  objs, kind = scene.objects, str(rng.choice(["count", "color", "shape", "where", "exists"]))
  if kind == "color" and (named := _named(rng, scene, ("shape",))):
    return f"what color is the {named[1]}?", objs[named[0]].color
  if kind == "shape" and (named := _named(rng, scene, ("color",))):
    return f"what shape is the {named[1]} object?", objs[named[0]].shape
  if kind == "where" and (named := _named(rng, scene, ("color", "shape"))):
    return (f"where is the {named[1]}?",
            scene_lib.location_phrase(objs[named[0]], scene.image_size))
  if kind == "exists":
    if rng.random() < 0.5:
      o = _pick(rng, objs)
      return f"is there {lang.with_article(f'{o.color} {o.shape}')}?", "yes"
    color, shape = _absent(rng, scene)
    return f"is there {lang.with_article(f'{color} {shape}')}?", "no"
  r = rng.random()
  if r < 0.4:
    return "how many shapes are there?", str(len(objs))
  if r < 0.7:
    shape = (_pick(rng, objs).shape if rng.random() < 0.8
             else str(rng.choice(scene_lib.palette().shapes)))
    return (f"how many {lang.plural(shape)} are there?",
            str(sum(o.shape == shape for o in objs)))
  color = _pick(rng, objs).color
  return f"how many {color} shapes are there?", str(sum(o.color == color for o in objs))


def _side_of(scene: Scene, ref: int, side: str) -> list[int] | None:
  """Objects clearly on `side` of object `ref`; None when one is too close to call."""
  r, margin = scene.objects[ref], 0.08 * scene.image_size
  axis, sign = {"left": ("cx", -1), "right": ("cx", 1),
                "above": ("cy", -1), "below": ("cy", 1)}[side]
  out = []
  for j, o in enumerate(scene.objects):
    if j == ref:
      continue
    d = sign * (getattr(o, axis) - getattr(r, axis))
    if abs(d) < margin:
      return None
    if d > 0:
      out.append(j)
  return out


def gqa(rng: np.random.Generator, scene: Scene) -> tuple[str, str]:
  """A GQA-like compositional (question, answer): relations, comparisons, logic.

  The question kind is drawn first; among the objects and relations that make
  that kind answerable one is drawn, and logic over existence is the fallback.
  """
  objs, n = scene.objects, len(scene.objects)
  kind = str(rng.choice(["relate", "relate", "count_side", "compare", "same", "logic"]))
  unique_cs = [i for i in range(n) if ("color", "shape") in lang.unique_attr_sets(scene, i)]
  if kind in ("relate", "count_side"):
    options = [(i, side, found) for i in unique_cs
               for side in ("left", "right", "above", "below")
               if (found := _side_of(scene, i, side)) is not None
               and (kind == "count_side" or len(found) == 1)]
    if options:
      i, side, found = _pick(rng, options)
      ref = lang.phrase(objs[i], ("color", "shape"))
      where = f"to the {side} of" if side in ("left", "right") else side
      if kind == "count_side":
        return f"how many shapes are {where} the {ref}?", str(len(found))
      attr = str(rng.choice(["color", "shape", "size"]))
      subject = "shape" if attr != "shape" else "object"
      q = (f"what is the size of the {subject} {where} the {ref}?" if attr == "size" else
           f"what {attr} is the {subject} {where} the {ref}?")
      return q, getattr(objs[found[0]], attr)
  pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
  if kind == "compare":
    named = [i for i in range(n) if lang.unique_attr_sets(scene, i)]
    options = [(a, b) for a, b in pairs if a in named and b in named]
    if options:
      a, b = _pick(rng, options)
      na, nb = lang.unique_phrase(rng, scene, a), lang.unique_phrase(rng, scene, b)
      bigger = scene_lib.SIZES[objs[a].size] > scene_lib.SIZES[objs[b].size]
      return f"is the {na} bigger than the {nb}?", "yes" if bigger else "no"
  if kind == "same":
    attr = str(rng.choice(["color", "shape"]))
    by = ("shape",) if attr == "color" else ("color",)
    named = [i for i in range(n) if by in lang.unique_attr_sets(scene, i)]
    options = [(a, b) for a, b in pairs if a in named and b in named]
    if options:
      a, b = _pick(rng, options)
      na, nb = lang.phrase(objs[a], by), lang.phrase(objs[b], by)
      na, nb = (na, nb) if attr == "color" else (f"{na} object", f"{nb} object")
      same = getattr(objs[a], attr) == getattr(objs[b], attr)
      return f"do the {na} and the {nb} have the same {attr}?", "yes" if same else "no"
  # Logic over existence, always answerable.
  present = [(o.color, o.shape) for o in objs]
  x = _pick(rng, present) if rng.random() < 0.5 else _absent(rng, scene)
  y = _pick(rng, present) if rng.random() < 0.5 else _absent(rng, scene)
  while y == x:
    y = _absent(rng, scene)
  nx, ny = lang.with_article(" ".join(x)), lang.with_article(" ".join(y))
  if rng.random() < 0.5:
    return f"is there {nx} or {ny}?", "yes" if x in present or y in present else "no"
  return f"are there both {nx} and {ny}?", "yes" if x in present and y in present else "no"


def entailment(rng: np.random.Generator, scene: Scene) -> tuple[str, str]:
  """A (hypothesis, label) pair for SNLI-VE-like visual entailment, labels balanced."""
  objs, n = scene.objects, len(scene.objects)
  label = str(rng.choice(["entailment", "neutral", "contradiction"]))
  named = _named(rng, scene, ("color", "shape"))
  if label == "neutral":
    if named is None:
      return _NEUTRAL[-1], label
    return str(rng.choice(_NEUTRAL)).format(x=named[1], m=rng.choice(_MATERIALS)), label
  true = label == "entailment"
  kind = str(rng.choice(["there_is", "count", "side", "none_of"]))
  if kind == "count":
    k = n if true else max(1, n + int(rng.choice([-2, -1, 1, 2])))
    k = k if true or k != n else n + 1
    return f"the picture shows {lang.count_word(k)} shape{'s' if k > 1 else ''}", label
  if kind == "side" and named is not None:
    h, _ = scene_lib.region(objs[named[0]], scene.image_size)
    if h != "middle":
      side = h if true else {"left": "right", "right": "left"}[h]
      return f"the {named[1]} is on the {side} side of the picture", label
  shapes = {o.shape for o in objs}
  pool = sorted(set(scene_lib.palette().shapes) - shapes) if true else sorted(shapes)
  if kind == "none_of" and pool:  # Empty when a small palette's shapes are all there.
    return f"there are no {lang.plural(str(rng.choice(pool)))} in the picture", label
  present = {(o.color, o.shape) for o in objs}
  if true:
    o = _pick(rng, objs)
    pair = (o.color, o.shape)
  else:  # Mixing attributes of objects that are there makes hard negatives.
    pair = (_pick(rng, objs).color, _pick(rng, objs).shape)
    if pair in present:
      pair = _absent(rng, scene)
  return f"there is {lang.with_article(' '.join(pair))} in the picture", label


def video_qa(rng: np.random.Generator, scene: Scene, kinds: tuple[str, ...]) -> tuple[str, str]:
  """A (question, answer) about motion: what moved, which way, how many moved."""
  movers = [i for i, o in enumerate(scene.objects) if o.motion]
  objs = scene.objects
  kind = str(rng.choice(kinds))
  if kind in ("what", "color") and len(movers) == 1:
    o = objs[movers[0]]
    if kind == "what":
      return str(rng.choice(["what is moving?", "what shape moves?"])), o.shape
    return "what color is the moving shape?", o.color
  if kind == "which_object":
    dirs = [objs[i].motion for i in movers]
    d = _pick(rng, dirs)
    if dirs.count(d) == 1:
      return f"what moves {d}?", objs[movers[dirs.index(d)]].shape
  if kind == "count":
    return "how many shapes move?", str(len(movers))
  if kind == "does":
    i = _pick(rng, list(range(len(objs))))
    o = objs[i]
    if ("color", "shape") in lang.unique_attr_sets(scene, i):
      return f"does the {o.color} {o.shape} move?", "yes" if o.motion else "no"
  # "which way": always answerable, moving objects have distinct (color, shape).
  o = objs[_pick(rng, movers)]
  return f"which way does the {o.color} {o.shape} move?", o.motion
