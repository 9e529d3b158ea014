"""Text about toy-world scenes: noun phrases, captions, labels and referring expressions.

Every function reads the scene truth (after rendering, so boxes, visibility
and occluders are known) and draws its choices from the record's generator.
The sources differ on purpose in how faithful and how long their text is:
CC3M-like alt-text is short and sometimes wrong, CC12M-like text is noisier,
Localized-Narratives-like text describes every object and where it is.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from dynpt.toyworld import scene as scene_lib
from dynpt.toyworld.scene import Obj, Scene

ATTRS = ("size", "color", "texture", "shape")  # Adjective order in noun phrases.
COUNT_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight")
_JUNK_PREFIXES = ("stock photo of", "vector illustration of", "close up of", "abstract art with",
                  "wallpaper with", "poster showing", "digital art of", "pattern with")
_JUNK_SUFFIXES = ("royalty free image", "free download", "for sale", "high resolution",
                  "isolated", "trending now", "best seller", "click to enlarge")


def phrase(obj: Obj, attrs: Sequence[str] = ATTRS, drop_plain: bool = False) -> str:
  """'large red striped circle' for the given attributes, in canonical order.

  `drop_plain` leaves out the texture 'plain', as people do when they are not
  using the texture to tell objects apart.
  """
  return " ".join(getattr(obj, a) for a in ATTRS if a in attrs and not (
      drop_plain and a == "texture" and obj.texture == "plain"))


def with_article(text: str) -> str:
  return ("an " if text[0] in "aeiou" else "a ") + text


def plural(shape: str) -> str:
  return shape + ("es" if shape.endswith(("s", "x")) else "s")


def count_word(n: int) -> str:
  return COUNT_WORDS[n] if n < len(COUNT_WORDS) else str(n)


def matches(obj: Obj, other: Obj, attrs: Sequence[str]) -> bool:
  return all(getattr(obj, a) == getattr(other, a) for a in attrs)


# Attribute sets tried to single an object out, shortest first.
_ATTR_SETS = (("shape",), ("color", "shape"), ("size", "shape"), ("texture", "shape"),
              ("size", "color", "shape"), ("color", "texture", "shape"),
              ("size", "texture", "shape"), ("size", "color", "texture", "shape"))


def unique_attr_sets(scene: Scene, index: int) -> list[tuple[str, ...]]:
  """Attribute sets (shortest first) that match object `index` and no other object."""
  t = scene.objects[index]
  return [s for s in _ATTR_SETS
          if not any(matches(o, t, s) for j, o in enumerate(scene.objects) if j != index)]


def unique_phrase(rng: np.random.Generator, scene: Scene, index: int,
                  extra: float = 0.0) -> str | None:
  """A shortest noun phrase that names only object `index`; None if none does.

  With probability `extra` a longer (still unique) phrase is used instead.
  """
  sets = unique_attr_sets(scene, index)
  if not sets:
    return None
  shortest = [s for s in sets if len(s) == len(sets[0])]
  chosen = sets[int(rng.integers(len(sets)))] if rng.random() < extra else (
      shortest[int(rng.integers(len(shortest)))])
  return phrase(scene.objects[index], chosen)


def _location_clause(obj: Obj, image_size: int) -> str:
  loc = scene_lib.location_phrase(obj, image_size)
  return "in the center" if loc == "center" else (
      f"on the {loc}" if loc in ("left", "right") else f"at the {loc}")


def _mutate(rng: np.random.Generator, obj: Obj) -> Obj:
  """A copy of `obj` with its colour or shape changed: a wrong caption."""
  if rng.random() < 0.5:
    return dataclasses.replace(obj, color=str(rng.choice(
        [c for c in scene_lib.palette().colors if c != obj.color])))
  return dataclasses.replace(obj, shape=str(rng.choice(
      [s for s in scene_lib.palette().shapes if s != obj.shape])))


def _mentioned(rng: np.random.Generator, scene: Scene, k: int, p_wrong: float) -> list[Obj]:
  k = min(k, len(scene.objects))
  idx = rng.choice(len(scene.objects), size=k, replace=False)
  objs = [scene.objects[int(i)] for i in idx]
  return [_mutate(rng, o) if rng.random() < p_wrong else o for o in objs]


def cc3m_caption(rng: np.random.Generator, scene: Scene) -> str:
  """Short alt-text about one or two objects; about 15% of objects are misnamed."""
  objs = _mentioned(rng, scene, int(rng.integers(1, 3)), p_wrong=0.15)
  names = [with_article(phrase(o, ("color", "shape") if rng.random() < 0.7 else
                               ("size", "color", "shape"))) for o in objs]
  bg, n = scene.background, len(scene.objects)
  options = [f"{names[0]} on a {bg} background", f"illustration of {names[0]}", names[0]]
  if len(names) > 1:
    options += [f"{names[0]} and {names[1]}", f"{names[0]} next to {names[1]}"]
  if n > 1:
    options.append(f"{count_word(n)} shapes on a {bg} background")
  return str(rng.choice(options))


def cc12m_caption(rng: np.random.Generator, scene: Scene) -> str:
  """Longer, noisier web text: wrong attributes, junk phrases, sometimes unrelated."""
  if rng.random() < 0.1:  # Alt-text that has nothing to do with the image.
    fake = Obj(str(rng.choice(scene_lib.palette().shapes)),
               str(rng.choice(scene_lib.palette().colors)),
               "medium", "plain", 0.0, 0.0, 1.0)
    objs = [fake]
  else:
    objs = _mentioned(rng, scene, int(rng.integers(1, 4)), p_wrong=0.3)
  names = [with_article(phrase(o, ("color", "texture", "shape") if rng.random() < 0.5 else
                               ("size", "color", "shape"), drop_plain=True)) for o in objs]
  text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
  n = len(scene.objects) + int(rng.choice([0, 0, 0, -1, 1]))
  if rng.random() < 0.3 and n > 1:
    text = f"{count_word(n)} shapes including {text}"
  if rng.random() < 0.5:
    text = f"{rng.choice(_JUNK_PREFIXES)} {text}"
  if rng.random() < 0.3:
    text = f"{text} on {scene.background}"
  if rng.random() < 0.4:
    text = f"{text} - {rng.choice(_JUNK_SUFFIXES)}"
  return text


def ln_narrative(rng: np.random.Generator, scene: Scene) -> str:
  """A long narrative that names every object, where it is and what hides it."""
  n = len(scene.objects)
  shapes = "one shape" if n == 1 else f"{count_word(n)} shapes"
  sents = [f"in this image we can see {shapes} on a {scene.background} background."]
  for i in rng.permutation(n):
    o = scene.objects[int(i)]
    where = _location_clause(o, scene.image_size)
    name = with_article(phrase(o, drop_plain=True))
    starts = (f"{where} there is {name}", f"{where} we can see {name}", f"{name} is {where}")
    s = str(rng.choice(starts))
    if o.hidden_by:
      front = scene.objects[o.hidden_by[-1]]
      s += f", partly hidden behind the {phrase(front, ('color', 'shape'))}"
    sents.append(s + ".")
  return " ".join(sents)


def oi_labels(rng: np.random.Generator, scene: Scene) -> list[int]:
  """Indices of the objects an Open-Images-like annotator labelled (about 60%, >= 1)."""
  keep = [i for i in range(len(scene.objects)) if rng.random() < 0.6]
  return keep or [int(rng.integers(len(scene.objects)))]


def fine_label(obj: Obj) -> str:
  """ImageNet-21k-like fine-grained class name, e.g. 'striped red circle'."""
  return f"{obj.texture} {obj.color} {obj.shape}"


def vg_label(obj: Obj) -> str:
  """Visual-Genome-like dense label: attribute + object name."""
  return f"{obj.color} {obj.shape}"


def _extreme(scene: Scene, index: int, attrs: Sequence[str]) -> str | None:
  """'left'/'right'/'top'/'bottom' if object `index` is clearly the most so among
  the objects sharing `attrs` with it (and there are at least two)."""
  t = scene.objects[index]
  group = [o for j, o in enumerate(scene.objects) if j != index and matches(o, t, attrs)]
  if not group:
    return None
  margin = 0.1 * scene.image_size
  if all(t.cx < o.cx - margin for o in group):
    return "left"
  if all(t.cx > o.cx + margin for o in group):
    return "right"
  if all(t.cy < o.cy - margin for o in group):
    return "top"
  if all(t.cy > o.cy + margin for o in group):
    return "bottom"
  return None


def refexp(rng: np.random.Generator, scene: Scene, index: int, style: str) -> str | None:
  """A referring expression that picks out only object `index`; None if impossible.

  Styles mirror the three RefCOCO sets: `refcoco` is short and may use
  location ("the circle on the left"), `refcocoplus` uses appearance only,
  `refcocog` is a long sentence with every attribute, the location and a
  neighbour.
  """
  t = scene.objects[index]
  if style == "refcoco":
    for attrs in (("shape",), ("color",), ("color", "shape")):
      side = _extreme(scene, index, attrs)
      if side and rng.random() < 0.6:
        name = phrase(t, attrs) if "shape" in attrs else f"{t.color} one"
        return str(rng.choice([f"the {side} {name}", f"{name} on the {side}"]))
    name = unique_phrase(rng, scene, index)
    return None if name is None else f"the {name}"
  if style == "refcocoplus":
    name = unique_phrase(rng, scene, index, extra=0.3)
    return None if name is None else str(rng.choice([f"the {name}", name]))
  if style == "refcocog":
    if not unique_attr_sets(scene, index):
      return None
    text = f"the {phrase(t)} {_location_clause(t, scene.image_size)}"
    if t.hidden_by:
      front = scene.objects[t.hidden_by[-1]]
      return f"{text} that is partly hidden behind the {phrase(front, ('color', 'shape'))}"
    others = [o for j, o in enumerate(scene.objects) if j != index]
    if others:
      near = min(others, key=lambda o: np.hypot(o.cx - t.cx, o.cy - t.cy))
      return f"{text}, near {with_article(phrase(near, ('color', 'shape')))}"
    return text
  raise ValueError(f"toy world: unknown refexp style {style!r}")
