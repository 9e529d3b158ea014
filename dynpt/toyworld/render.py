"""Draws toy-world scenes with PIL and numpy and encodes them as PNG.

PIL rasterises each shape into a mask and numpy fills the mask with the
object's texture; objects are painted in order, so later objects occlude
earlier ones. PNG keeps the pixels exact, which lets tests compare a decoded
record with a fresh rendering of the same scene truth.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from dynpt.toyworld import scene as scene_lib


def _polygon(cx: float, cy: float, r: float, n: int, inner: float | None = None,
             phase: float = -np.pi / 2) -> list[tuple[float, float]]:
  """Regular n-gon (or 2n-point star when `inner` is set) around (cx, cy)."""
  k = 2 * n if inner else n
  pts = []
  for i in range(k):
    rad = r if not inner or i % 2 == 0 else inner * r
    a = phase + 2 * np.pi * i / k
    pts.append((cx + rad * np.cos(a), cy + rad * np.sin(a)))
  return pts


def shape_mask(obj: scene_lib.Obj, image_size: int) -> np.ndarray:
  """Boolean [H, W] mask of the whole object (ignoring occlusion)."""
  canvas = Image.new("L", (image_size, image_size), 0)
  draw = ImageDraw.Draw(canvas)
  cx, cy, r = obj.cx, obj.cy, obj.radius
  box = (cx - r, cy - r, cx + r, cy + r)
  if obj.shape == "circle":
    draw.ellipse(box, fill=255)
  elif obj.shape == "ring":
    draw.ellipse(box, outline=255, width=max(1, int(round(0.4 * r))))
  elif obj.shape == "oval":
    draw.ellipse((cx - r, cy - 0.6 * r, cx + r, cy + 0.6 * r), fill=255)
  elif obj.shape == "moon":
    draw.pieslice((cx - r, cy - 0.5 * r, cx + r, cy + 1.5 * r), 180, 360, fill=255)
  elif obj.shape == "square":
    s = 0.85 * r
    draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=255)
  elif obj.shape == "triangle":
    draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=255)
  elif obj.shape == "diamond":
    draw.polygon(_polygon(cx, cy, r, 4), fill=255)
  elif obj.shape == "star":
    draw.polygon(_polygon(cx, cy, r, 5, inner=0.45), fill=255)
  elif obj.shape == "cross":
    w = 0.35 * r
    draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
    draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
  elif obj.shape == "hexagon":
    draw.polygon(_polygon(cx, cy, r, 6, phase=0.0), fill=255)
  else:
    raise ValueError(f"toy world: unknown shape {obj.shape!r}; known: {scene_lib.SHAPES}")
  return np.asarray(canvas) > 0


def texture_pattern(obj: scene_lib.Obj, image_size: int) -> np.ndarray:
  """uint8 [H, W, 3] image of the object's colour and texture over the whole frame."""
  base = np.array(scene_lib.COLORS[obj.color], np.float32)
  # A darker second tone; black gets a light one so its texture stays visible.
  alt = base * 0.45 if base.mean() > 60 else np.full(3, 120.0, np.float32)
  period = max(2, int(round(obj.radius / 2.5)))
  y, x = np.mgrid[:image_size, :image_size]  # [H, W]
  if obj.texture == "plain":
    second = np.zeros_like(x, bool)
  elif obj.texture == "striped":
    second = ((x + y) // period) % 2 == 1
  elif obj.texture == "dotted":
    second = (x % (period + 1) == 0) & (y % (period + 1) == 0)
  elif obj.texture == "checkered":
    second = ((x // period) + (y // period)) % 2 == 1
  else:
    raise ValueError(
        f"toy world: unknown texture {obj.texture!r}; known: {scene_lib.TEXTURES}")
  out = np.where(second[..., None], alt, base)  # [H, W, 3]
  return out.astype(np.uint8)


def render(scene: scene_lib.Scene) -> tuple[np.ndarray, np.ndarray]:
  """Draws the scene and records each object's `box`, `visible`, `hidden_by` on it.

  Returns:
    image: uint8 [H, W, 3].
    masks: bool [num_objects, H, W], each object's visible pixels.
  """
  n = scene.image_size
  image = np.empty((n, n, 3), np.uint8)
  image[:] = scene_lib.BACKGROUNDS[scene.background]
  full = [shape_mask(o, n) for o in scene.objects]
  for o, m in zip(scene.objects, full):
    image[m] = texture_pattern(o, n)[m]
  masks = np.zeros((len(full), n, n), bool)
  covered = np.zeros((n, n), bool)
  for i in range(len(full) - 1, -1, -1):  # Front to back.
    o, m = scene.objects[i], full[i]
    masks[i] = m & ~covered
    covered |= m
    o.hidden_by = tuple(j for j in range(i + 1, len(full)) if (full[j] & m).any())
    ys, xs = np.nonzero(m)
    if len(xs):
      o.box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
      o.visible = float(masks[i].sum() / len(xs))
    else:  # Degenerate sub-pixel shape: fall back to its geometry.
      r = o.radius
      o.box = tuple(float(np.clip(v, 0, n)) for v in
                    (o.cx - r, o.cy - r, o.cx + r, o.cy + r))
      o.visible = 0.0
  return image, masks


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of a uint8 [H, W, 3] image (lossless, so tests can compare pixels)."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG", compress_level=6)
  return buf.getvalue()


def decode_image(data: bytes) -> np.ndarray:
  """uint8 [H, W, 3] pixels of PNG/JPEG bytes (tests, tools)."""
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
