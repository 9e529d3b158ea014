"""The study's statistics: summaries over seeds, paired differences, correlation.

Pure functions of plain numbers (no I/O), so each is checked by property
tests. Seeds pair cells: uniform and dynamic with seed 3 saw the same
initialisation and the same finetuning seed, so the difference of a method to
uniform is taken seed by seed and its 95% interval is Student's t over those
differences (n - 1 degrees of freedom). A paired interval is narrower than
comparing two means when seeds move both methods alike.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats


@dataclasses.dataclass(frozen=True)
class Summary:
  """Mean and sample standard deviation (n - 1; nan for n < 2) of n values."""
  mean: float
  std: float
  n: int


@dataclasses.dataclass(frozen=True)
class PairedDifference:
  """mean(a - b) over the seeds both have, with its two-sided t-interval.

  `low`/`high` are nan when fewer than 2 seeds pair (no spread to estimate).
  """
  mean: float
  low: float
  high: float
  n: int
  confidence: float

  @property
  def verdict(self) -> str:
    """'better' when the interval lies above 0, 'worse' below, else 'no clear difference'
    (or why there is no interval)."""
    if self.n == 0:
      return "missing (no paired seed)"
    if math.isnan(self.low):
      return "undetermined (fewer than 2 paired seeds)"
    if self.low > 0:
      return "better"
    if self.high < 0:
      return "worse"
    return "no clear difference"


def summarize(values: Sequence[float]) -> Summary:
  """Mean and sample std of `values` (nan mean for none)."""
  x = np.asarray(values, np.float64)
  if x.size == 0:
    return Summary(math.nan, math.nan, 0)
  std = float(np.std(x, ddof=1)) if x.size > 1 else math.nan
  return Summary(float(np.mean(x)), std, int(x.size))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
  """Two-sided Student-t interval of the mean of `values`; (nan, nan) for n < 2."""
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence={confidence}: must be in (0, 1)")
  x = np.asarray(values, np.float64)
  if x.size < 2:
    return math.nan, math.nan
  mean = float(np.mean(x))
  half = float(scipy_stats.t.ppf(0.5 + confidence / 2, x.size - 1)
               * np.std(x, ddof=1) / math.sqrt(x.size))
  return mean - half, mean + half


def paired_difference(a: Mapping[int, float], b: Mapping[int, float],
                      confidence: float = 0.95) -> PairedDifference:
  """a - b paired by seed (the keys), over the seeds both have."""
  seeds = sorted(set(a) & set(b))
  diffs = [float(a[s]) - float(b[s]) for s in seeds]
  if not diffs:
    return PairedDifference(math.nan, math.nan, math.nan, 0, confidence)
  low, high = t_interval(diffs, confidence)
  return PairedDifference(float(np.mean(diffs)), low, high, len(diffs), confidence)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
  """Pearson's r; nan with fewer than 3 points or a constant variable."""
  xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if xs.shape != ys.shape:
    raise ValueError(f"pearson: {xs.size} x values but {ys.size} y values")
  if xs.size < 3 or np.ptp(xs) == 0 or np.ptp(ys) == 0:
    return math.nan
  xc, yc = xs - xs.mean(), ys - ys.mean()
  r = float(np.sum(xc * yc) / math.sqrt(np.sum(xc * xc) * np.sum(yc * yc)))
  return max(-1.0, min(1.0, r))
