"""Parse of box-as-text, used only when `dynpt.data.boxes` cannot be imported.

The format is the paper's (pix2seq): the box ``[ymax, xmax, ymin, xmin]``
normalised by the image size and quantised into ``num_bins`` bins, written as
four integers in ``[0, num_bins - 1]`` separated by spaces (``"61 80 12 5"``),
or as location tokens (``"<loc_61><loc_80><loc_12><loc_5>"``). Decoding maps
each bin to its centre, ``(q + 0.5) / num_bins * size``, and swapped corners
are put back in order. `dynpt.data.boxes`
owns the encoder and the reference decoder; this copy of the decode keeps the
metrics usable (and importable without TF or JAX) on their own.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_LOC_TOKENS = re.compile(r"^\s*(?:<loc_(\d+)>\s*){4}$")
_LOC_VALUE = re.compile(r"<loc_(\d+)>")
_INTEGER = re.compile(r"^\d+$")


def parse_box_text(text: str | bytes, image_wh: Sequence[float],
                   num_bins: int = 100) -> np.ndarray | None:
  """Decodes box text to pixel ``[x0, y0, x1, y1]``; None when it is not a box.

  Args:
    text: generated text, four bin indices in ``ymax xmax ymin xmin`` order.
    image_wh: ``(width, height)`` of the image the box refers to, in pixels.
    num_bins: number of quantisation bins.

  Returns:
    float64 array [4] in pixels, or None when the text does not hold exactly
    four integers in ``[0, num_bins - 1]``.
  """
  if isinstance(text, bytes):
    text = text.decode("utf-8", errors="replace")
  width, height = (float(v) for v in image_wh)
  if not (width > 0 and height > 0):
    raise ValueError(f"image_wh must be two positive sizes, got {tuple(image_wh)}")
  if _LOC_TOKENS.match(text):
    fields = _LOC_VALUE.findall(text)
  else:
    fields = text.split()
    if len(fields) != 4 or not all(_INTEGER.match(f) for f in fields):
      return None
  bins = np.array([int(f) for f in fields], dtype=np.float64)  # [4] ymax xmax ymin xmin
  if np.any(bins >= num_bins):
    return None
  ymax, xmax, ymin, xmin = (bins + 0.5) / num_bins
  # A model may write the corners swapped; the box it means is the same.
  x0, x1 = sorted((xmin * width, xmax * width))
  y0, y1 = sorted((ymin * height, ymax * height))
  return np.array([x0, y0, x1, y1])
