"""Scene truth for the toy world: objects, their attributes and where they are.

A scene is sampled from a `numpy.random.Generator` and is pure data, so the
renderer draws it and the language module describes it from the same truth;
tests regenerate a scene from its seed and check the records against it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import zlib
from typing import Sequence

import numpy as np

# Two shape families play the role of RefCOCO's "people" (testA) and
# "objects" (testB) so the referring-expression test splits differ in content.
CURVED_SHAPES = ("circle", "ring", "oval", "moon")
ANGULAR_SHAPES = ("square", "triangle", "diamond", "star", "cross", "hexagon")
SHAPES = CURVED_SHAPES + ANGULAR_SHAPES

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
BACKGROUNDS = {
    "gray": (128, 128, 128),
    "beige": (205, 195, 165),
    "brown": (120, 90, 60),
    "teal": (60, 130, 130),
}
# Half-extent of an object as a fraction of the image side.
SIZES = {"small": 0.09, "medium": 0.13, "large": 0.18}
TEXTURES = ("plain", "striped", "dotted", "checkered")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}



@dataclasses.dataclass(frozen=True)
class Palette:
  """The visual vocabulary a toy world draws its random objects from.

  'full' is every shape, colour, size and texture above. A miniature image tower
  cannot tell ten textured shapes apart down to 6 px within a CPU budget
  (docs/study/transfer.md, sections 10-11), so 'simple' keeps four distinct shapes,
  drawn plain at medium or large size: what the model has to learn is then the tie
  between words and image regions, as in the paper where the ResNet-50 already tells
  objects apart. Objects a generator places with an explicit attribute (the small
  unlabelled distractors of in21k and of videos) keep it.
  """
  shapes: tuple[str, ...] = SHAPES
  colors: tuple[str, ...] = tuple(COLORS)
  sizes: tuple[str, ...] = tuple(SIZES)
  textures: tuple[str, ...] = TEXTURES

  def __post_init__(self):
    for name, values, known in (("shapes", self.shapes, SHAPES),
                                ("colors", self.colors, tuple(COLORS)),
                                ("sizes", self.sizes, tuple(SIZES)),
                                ("textures", self.textures, TEXTURES)):
      unknown = sorted(set(values) - set(known))
      if unknown or len(values) < (2 if name in ("shapes", "colors") else 1):
        raise ValueError(f"toy world palette {name}={values}: unknown {unknown} or too "
                         f"few; known: {known}")


PALETTES = {
    "full": Palette(),
    "simple": Palette(shapes=("circle", "square", "triangle", "cross"),
                      sizes=("medium", "large"), textures=("plain",)),
}
_CURRENT = contextvars.ContextVar("toy_world_palette", default=PALETTES["full"])


def get_palette(name: str) -> Palette:
  if name not in PALETTES:
    raise ValueError(f"unknown toy-world palette {name!r}; known: {sorted(PALETTES)}")
  return PALETTES[name]


def palette() -> Palette:
  """The palette generators draw from now (`using_palette`; default 'full')."""
  return _CURRENT.get()


@contextlib.contextmanager
def using_palette(name: str):
  """Within the block, random objects, captions and questions use palette `name`."""
  token = _CURRENT.set(get_palette(name))
  try:
    yield
  finally:
    _CURRENT.reset(token)


def family_shapes(family: str) -> tuple[str, ...]:
  """The current palette's shapes of a family ('curved', 'angular'); all if it has none."""
  pool = CURVED_SHAPES if family == "curved" else ANGULAR_SHAPES
  return tuple(s for s in palette().shapes if s in pool) or palette().shapes


# An object whose visible fraction is below this is "partly hidden".
OCCLUDED_BELOW = 0.95


@dataclasses.dataclass
class Obj:
  """One object. Position is the centre in pixels; `box`/`visible` are set by the renderer."""
  shape: str
  color: str
  size: str
  texture: str
  cx: float
  cy: float
  radius: float
  motion: str | None = None  # a key of DIRECTIONS for moving objects in videos
  box: tuple[float, float, float, float] | None = None  # pixel xyxy of the whole object
  visible: float = 1.0  # fraction of the object's pixels not covered by later objects
  hidden_by: tuple[int, ...] = ()  # indices of the objects that cover some of its pixels

  @property
  def family(self) -> str:
    return "curved" if self.shape in CURVED_SHAPES else "angular"

  @property
  def occluded(self) -> bool:
    return self.visible < OCCLUDED_BELOW


@dataclasses.dataclass
class Scene:
  """Objects in drawing order (later ones are in front) on a plain background."""
  image_size: int
  background: str
  objects: list[Obj]


def record_rng(seed: int, dataset: str, split: str, index: int) -> np.random.Generator:
  """A generator that depends only on (seed, dataset, split, index).

  Records are therefore independent of build order, of the scale and of each
  other, which keeps builds reproducible and lets tests regenerate one record.
  """
  key = [int(seed), zlib.crc32(dataset.encode()), zlib.crc32(split.encode()), int(index)]
  return np.random.default_rng(key)


def region(obj: Obj, image_size: int) -> tuple[str, str]:
  """(horizontal, vertical) third of the image holding the object's centre."""
  def third(v: float, names: Sequence[str]) -> str:
    return names[min(2, int(3 * v / image_size))]
  return (third(obj.cx, ("left", "middle", "right")),
          third(obj.cy, ("top", "middle", "bottom")))


def location_phrase(obj: Obj, image_size: int) -> str:
  """'top left', 'left', 'center', ... as a person would say it."""
  h, v = region(obj, image_size)
  if h == "middle" and v == "middle":
    return "center"
  if h == "middle":
    return v
  if v == "middle":
    return h
  return f"{v} {h}"


def _fits(objs: list[Obj], cx: float, cy: float, r: float, min_gap: float) -> bool:
  for o in objs:
    if np.hypot(o.cx - cx, o.cy - cy) < min_gap * (o.radius + r):
      return False
  return True


def place_object(rng: np.random.Generator, objs: list[Obj], image_size: int, *,
                 shape: str | None = None, color: str | None = None,
                 size: str | None = None, texture: str | None = None,
                 center: tuple[float, float] | None = None,
                 min_gap: float = 0.8, margin: float = 0.0) -> Obj | None:
  """Samples one object that overlaps the others at most partly; None if no room.

  `min_gap` bounds occlusion: centres stay at least `min_gap` times the sum of
  the two half-extents apart. `margin` keeps the object that far (pixels)
  from the border, e.g. to leave room for motion in videos.
  """
  pal = palette()
  shape = shape or str(rng.choice(pal.shapes))
  color = color or str(rng.choice(pal.colors))
  size = size or str(rng.choice(pal.sizes))
  texture = texture or str(rng.choice(pal.textures))
  r = max(2.0, SIZES[size] * image_size)
  for _ in range(30):
    if center is None:
      lo, hi = r + margin, image_size - r - margin
      if hi <= lo:
        return None
      cx, cy = rng.uniform(lo, hi, size=2)
    else:
      cx, cy = center
    if _fits(objs, cx, cy, r, min_gap):
      return Obj(shape, color, size, texture, float(cx), float(cy), float(r))
    if center is not None:
      return None
  return None


def sample_scene(rng: np.random.Generator, image_size: int, *, min_objects: int = 1,
                 max_objects: int = 6, min_gap: float = 0.8) -> Scene:
  """A scene of `min_objects`..`max_objects` random objects (fewer if crowded)."""
  n = int(rng.integers(min_objects, max_objects + 1))
  objs: list[Obj] = []
  for _ in range(n):
    o = place_object(rng, objs, image_size, min_gap=min_gap)
    if o is not None:
      objs.append(o)
  if not objs:  # Always room for one object in an empty image.
    objs.append(place_object(rng, [], image_size))
  return Scene(image_size, str(rng.choice(list(BACKGROUNDS))), objs)


def sample_video_scene(rng: np.random.Generator, image_size: int, num_moving: int,
                       travel: float) -> Scene:
  """A scene where `num_moving` objects move `travel` pixels in a direction each.

  Moving objects get distinct (color, shape) pairs and keep `travel / 2` pixels
  of room on every side (they move from -travel/2 to +travel/2 around their
  centre), so they stay inside the frame whichever way they move.
  """
  objs: list[Obj] = []
  for _ in range(num_moving):
    for _ in range(10):
      o = place_object(rng, objs, image_size, size=str(rng.choice(["medium", "large"])),
                       margin=travel / 2, min_gap=1.0)
      if o is not None and all((o.color, o.shape) != (p.color, p.shape) for p in objs):
        o.motion = str(rng.choice(list(DIRECTIONS)))
        objs.append(o)
        break
  moving = {(o.color, o.shape) for o in objs}
  for _ in range(int(rng.integers(0, 3))):
    o = place_object(rng, objs, image_size, size="small", min_gap=1.0)
    if o is not None and (o.color, o.shape) not in moving:
      objs.append(o)
  # Still objects are drawn first so that movers are never hidden.
  objs.sort(key=lambda o: o.motion is not None)
  return Scene(image_size, str(rng.choice(list(BACKGROUNDS))), objs)


def frame_scene(scene: Scene, t: float, travel: float) -> Scene:
  """The scene at time t in [0, 1]: moving objects shifted by t * travel."""
  objs = []
  for o in scene.objects:
    o = dataclasses.replace(o)
    if o.motion:
      dx, dy = DIRECTIONS[o.motion]
      o.cx += dx * travel * (t - 0.5)
      o.cy += dy * travel * (t - 0.5)
    objs.append(o)
  return Scene(scene.image_size, scene.background, objs)
