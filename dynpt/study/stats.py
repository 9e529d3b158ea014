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


def paired_p_value(a: Mapping[int, float], b: Mapping[int, float]) -> float:
  """Two-sided p-value of the paired t-test of a - b = 0 over the seeds both have.

  nan with fewer than 2 paired seeds. Differences without spread give 0 when
  their mean is not 0 and 1 when it is (the t statistic is infinite or 0/0).
  """
  seeds = sorted(set(a) & set(b))
  diffs = np.asarray([float(a[s]) - float(b[s]) for s in seeds], np.float64)
  if diffs.size < 2:
    return math.nan
  sd = float(np.std(diffs, ddof=1))
  mean = float(np.mean(diffs))
  if sd == 0.0:
    return 1.0 if mean == 0.0 else 0.0
  t = mean / (sd / math.sqrt(diffs.size))
  return float(2.0 * scipy_stats.t.sf(abs(t), diffs.size - 1))


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm's step-down adjusted p-values, in the input order.

  With the m p-values sorted ascending, the i-th (from 0) is adjusted to
  max over j <= i of min(1, (m - j) p_(j)); rejecting where the adjusted
  value is below alpha controls the family-wise error at alpha. nan entries
  (a contrast without an interval) stay nan and do not count in m.
  """
  finite = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
  m = len(finite)
  out = [math.nan] * len(p_values)
  running = 0.0
  for rank, (p, i) in enumerate(sorted(finite)):
    running = max(running, min(1.0, (m - rank) * p))
    out[i] = running
  return out


def pearson_interval(r: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
  """Fisher-z interval of a Pearson r from n independent points; nan for n < 4."""
  if n < 4 or math.isnan(r):
    return math.nan, math.nan
  if abs(r) >= 1.0:
    return r, r
  z = math.atanh(r)
  half = float(scipy_stats.norm.ppf(0.5 + confidence / 2)) / math.sqrt(n - 3)
  return math.tanh(z - half), math.tanh(z + half)
