"""Boxes as text: the paper's pix2seq box tokens and their exact inverse.

A pixel box ``[x0, y0, x1, y1]`` is normalised by the image size, reordered
to the paper's ``[ymax, xmax, ymin, xmin]`` and quantised into ``num_bins``
bins (bin ``q`` covers ``[q, q + 1) / num_bins``; coordinates outside the
image are clipped into it). The four bins are written either

- as numbers through the text tokenizer (the paper): ``"61 80 12 5"``, or
- as location tokens: ``"<loc_61><loc_80><loc_12><loc_5>"``. `loc_to_extra_ids`
  maps them to T5 sentinels ``<extra_id_61> ...`` so each coordinate is one
  dedicated token of a `seqio.SentencePieceVocabulary` with 100 extra ids.

The EOS after the box is added by the task's tokenisation, as for every target.
Decoding maps each bin to its centre, so a round trip moves a coordinate by at
most half a bin. Pure numpy: importable without TensorFlow or JAX (the metrics
use it); `dynpt.data.preprocessors` holds the TensorFlow twin of `box_to_text`.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_INT = re.compile(r"^\d+$")
_TOKEN = re.compile(r"<(?:loc|extra_id)_(\d+)>")
_ONLY_TOKENS = re.compile(r"^\s*(?:<(?:loc|extra_id)_\d+>\s*){4}$")


def _check_wh(image_wh: Sequence[float]) -> tuple[float, float]:
  w, h = (float(v) for v in np.asarray(image_wh, np.float64).reshape(-1)[:2])
  if not (w > 0 and h > 0):
    raise ValueError(f"image_wh must be two positive sizes, got {tuple(image_wh)}")
  return w, h


def quantize(coords: np.ndarray, num_bins: int = 100) -> np.ndarray:
  """Normalised coordinates in [0, 1] -> int bins in [0, num_bins - 1] (clipped)."""
  coords = np.asarray(coords, np.float64)
  return np.clip(np.floor(coords * num_bins), 0, num_bins - 1).astype(np.int64)


def dequantize(bins: np.ndarray, num_bins: int = 100) -> np.ndarray:
  """Int bins -> normalised bin centres in (0, 1)."""
  return (np.asarray(bins, np.float64) + 0.5) / num_bins


def box_to_bins(box_xyxy: Sequence[float], image_wh: Sequence[float],
                num_bins: int = 100) -> np.ndarray:
  """Pixel ``[x0, y0, x1, y1]`` -> int64 bins ``[ymax, xmax, ymin, xmin]``.

  The corners are sorted first, so a box given as ``x1 < x0`` still encodes
  its extent.
  """
  w, h = _check_wh(image_wh)
  x0, y0, x1, y1 = np.asarray(box_xyxy, np.float64).reshape(4)
  norm = np.array([max(y0, y1) / h, max(x0, x1) / w, min(y0, y1) / h, min(x0, x1) / w])
  return quantize(norm, num_bins)


def box_to_text(box_xyxy: Sequence[float], image_wh: Sequence[float],
                num_bins: int = 100, loc_tokens: bool = False) -> str:
  """Writes a pixel box as the paper's box text.

  Args:
    box_xyxy: pixel ``[x0, y0, x1, y1]`` of the stored image.
    image_wh: ``(width, height)`` of that image in pixels.
    num_bins: quantisation bins per coordinate (the paper: 100).
    loc_tokens: write ``<loc_k>`` tokens instead of numbers.

  Returns:
    ``"ymax xmax ymin xmin"`` as bin numbers, or four ``<loc_k>`` tokens.
  """
  bins = box_to_bins(box_xyxy, image_wh, num_bins)
  if loc_tokens:
    return "".join(f"<loc_{b}>" for b in bins)
  return " ".join(str(b) for b in bins)


def text_to_bins(text: str | bytes, num_bins: int = 100) -> np.ndarray | None:
  """Box text -> int64 bins ``[ymax, xmax, ymin, xmin]``; None if not a box."""
  if isinstance(text, bytes):
    text = text.decode("utf-8", errors="replace")
  if _ONLY_TOKENS.match(text):
    fields = _TOKEN.findall(text)
  else:
    fields = text.split()
    if len(fields) != 4 or not all(_INT.match(f) for f in fields):
      return None
  bins = np.array([int(f) for f in fields], np.int64)
  if np.any(bins >= num_bins):
    return None
  return bins


def text_to_box(text: str | bytes, image_wh: Sequence[float],
                num_bins: int = 100) -> np.ndarray | None:
  """Inverse of `box_to_text`: box text -> pixel ``[x0, y0, x1, y1]``.

  Accepts bin numbers, ``<loc_k>`` tokens and the ``<extra_id_k>`` sentinels a
  model writes when trained on location tokens. Each bin decodes to its centre;
  the corners are sorted so ``x0 <= x1`` and ``y0 <= y1`` even when a model
  writes them swapped.

  Args:
    text: decoded model output (str or bytes).
    image_wh: ``(width, height)`` of the image the box refers to.
    num_bins: quantisation bins per coordinate.

  Returns:
    float64 [4] in pixels inside the image, or None when `text` is not exactly
    four bins in ``[0, num_bins - 1]``.
  """
  w, h = _check_wh(image_wh)
  bins = text_to_bins(text, num_bins)
  if bins is None:
    return None
  ymax, xmax, ymin, xmin = dequantize(bins, num_bins)
  x0, x1 = sorted((xmin * w, xmax * w))
  y0, y1 = sorted((ymin * h, ymax * h))
  return np.array([x0, y0, x1, y1], np.float64)


def loc_to_extra_ids(text: str) -> str:
  """``<loc_k>`` tokens -> space-separated T5 sentinels ``<extra_id_k>``.

  seqio adds each sentinel as a word-initial user-defined piece, so they need
  a space before them to tokenise as single ids.
  """
  return re.sub(r"\s*<loc_(\d+)>", r" <extra_id_\1>", text).strip()
