"""Tests for the pure mixture math: difficulty_shares and allocate_counts."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from dynpt.mixing import allocate_counts
from dynpt.mixing import difficulty_shares

_SETTINGS = settings(max_examples=120, deadline=None)


def _reference_ideal(shares, batch_size, floor):
  """Independent float reference of the floor-then-proportional split."""
  s = np.asarray(shares, float) / np.sum(shares)
  floored = set()
  while True:
    rest = [i for i in range(len(s)) if i not in floored]
    free = batch_size - floor * len(floored)
    ideal = {i: free * s[i] / sum(s[j] for j in rest) for i in rest}
    low = {i for i, v in ideal.items() if v < floor}
    if not low:
      return floored, ideal
    floored |= low


@st.composite
def _allocation_case(draw):
  n = draw(st.integers(1, 24))
  floor = draw(st.integers(0, 6))
  batch = draw(st.integers(max(1, floor * n), floor * n + 600))
  shares = draw(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=n, max_size=n))
  if sum(shares) <= 0:
    shares[draw(st.integers(0, n - 1))] = 1.0
  offset = draw(st.integers(0, 10_000))
  return np.asarray(shares), batch, floor, offset


def test_allocate_counts_hand_case():
  # Ideal [20, 12, 6, 2]: task 3 is floored at 4, the other 36 split .5:.3:.15.
  np.testing.assert_array_equal(allocate_counts([0.5, 0.3, 0.15, 0.05], 40, 4), [19, 11, 6, 4])
  np.testing.assert_array_equal(allocate_counts([0.25] * 4, 40, 4), [10] * 4)
  np.testing.assert_array_equal(allocate_counts([1, 0, 0], 12, 4), [4, 4, 4])
  np.testing.assert_array_equal(allocate_counts([1, 0, 0], 20, 4), [12, 4, 4])


def test_allocate_counts_rotates_equal_remainders():
  got = np.stack([allocate_counts([1, 1, 1], 10, 0, tie_break_offset=k) for k in range(3)])
  np.testing.assert_array_equal(got, [[4, 3, 3], [3, 4, 3], [3, 3, 4]])
  np.testing.assert_array_equal(got.sum(0), [10, 10, 10])  # Fair over a full cycle.


@_SETTINGS
@given(_allocation_case())
def test_allocate_counts_properties(case):
  shares, batch, floor, offset = case
  counts = allocate_counts(shares, batch, floor, tie_break_offset=offset)
  assert counts.dtype == np.int64
  assert counts.sum() == batch
  assert np.all(counts >= floor)
  floored, ideal = _reference_ideal(shares, batch, floor)
  for i in range(len(shares)):
    if i in floored:
      assert counts[i] == floor
    else:
      assert abs(counts[i] - ideal[i]) < 1 + 1e-6
  # Larger share never gets fewer examples.
  order = np.argsort(shares, kind="stable")
  s_sorted, c_sorted = shares[order], counts[order]
  for a in range(len(order) - 1):
    if s_sorted[a] < s_sorted[a + 1]:
      assert c_sorted[a] <= c_sorted[a + 1]


@_SETTINGS
@given(st.lists(st.floats(0.01, 1.0), min_size=2, max_size=24), st.integers(0, 50))
def test_allocate_counts_follows_shares_without_floor(raw, offset):
  shares = np.asarray(raw) / np.sum(raw)
  batch = 4096
  counts = allocate_counts(shares, batch, 0, tie_break_offset=offset)
  assert np.all(np.abs(counts - batch * shares) < 1)


@pytest.mark.parametrize("args,match", [
    (([0.5, 0.5], 7, 4), "batch_size 7 is too small"),
    (([0.5, -0.5], 8, 0), "shares"),
    (([0.0, 0.0], 8, 0), "shares"),
    (([np.nan, 1.0], 8, 0), "shares"),
    (([1.0], 0, 0), "batch_size"),
    (([1.0], 8, -1), "min_per_task"),
])
def test_allocate_counts_errors(args, match):
  with pytest.raises(ValueError, match=match):
    allocate_counts(*args)


def test_difficulty_shares_hand_cases():
  np.testing.assert_allclose(difficulty_shares([1.0, 2.0, 3.0, 0.0]), [1 / 6, 2 / 6, 3 / 6, 0])
  np.testing.assert_allclose(difficulty_shares([0.0, 0.0]), [0.5, 0.5])
  # Normalisation: dividing by each task's scale equalises tasks of different ranges.
  np.testing.assert_allclose(difficulty_shares([10.0, 1.0], normalize=[10.0, 1.0]), [0.5, 0.5])
  # A high temperature flattens, a low one sharpens.
  flat = difficulty_shares([1.0, 4.0], temperature=1000.0)
  sharp = difficulty_shares([1.0, 4.0], temperature=0.01)
  assert abs(flat[0] - 0.5) < 1e-3 and sharp[1] > 0.999999


@_SETTINGS
@given(st.lists(st.floats(0.0, 50.0), min_size=1, max_size=24),
       st.floats(0.2, 5.0),
       st.one_of(st.none(), st.floats(0.1, 10.0)))
def test_difficulty_shares_matches_numpy(losses, temperature, scale):
  losses = np.asarray(losses)
  norm = None if scale is None else np.linspace(scale, 2 * scale, losses.size)
  got = difficulty_shares(losses, temperature, norm)
  assert abs(got.sum() - 1.0) < 1e-9
  scaled = losses if norm is None else losses / norm
  if np.all(scaled == 0):
    np.testing.assert_allclose(got, np.full(losses.size, 1 / losses.size))
  else:
    w = (scaled / scaled.max()) ** (1.0 / temperature)
    np.testing.assert_allclose(got, w / w.sum(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    ({"accumulated_losses": [1.0, -1.0]}, "task 1 has loss -1.0"),
    ({"accumulated_losses": [np.nan, 1.0]}, "task 0 has loss nan"),
    ({"accumulated_losses": [1.0, np.inf]}, "task 1"),
    ({"accumulated_losses": [1.0], "temperature": 0.0}, "temperature"),
    ({"accumulated_losses": [1.0, 1.0], "normalize": [1.0, 0.0]}, "normalize"),
    ({"accumulated_losses": [1.0, 1.0], "normalize": [1.0]}, "normalize"),
])
def test_difficulty_shares_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    difficulty_shares(**kwargs)
