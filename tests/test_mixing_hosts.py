"""Tests for the multi-host row assignment helpers."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from dynpt import mixing


def test_hand_case_from_the_docstring():
  np.testing.assert_array_equal(mixing.host_counts([3, 5], 2), [[3, 1], [0, 4]])
  np.testing.assert_array_equal(mixing.host_slices([3, 5], 2, 0), [[0, 3], [0, 1]])
  np.testing.assert_array_equal(mixing.host_slices([3, 5], 2, 1), [[3, 3], [1, 5]])
  np.testing.assert_array_equal(mixing.host_task_ids([3, 5], 2, 1), [1, 1, 1, 1])
  np.testing.assert_array_equal(mixing.task_row_ranges([3, 0, 5]), [[0, 3], [3, 3], [3, 8]])


@st.composite
def _case(draw):
  hosts = draw(st.integers(1, 8))
  per_host = draw(st.integers(1, 40))
  n = draw(st.integers(1, 12))
  cuts = sorted(draw(st.lists(st.integers(0, hosts * per_host), min_size=n - 1,
                              max_size=n - 1)))
  counts = np.diff([0, *cuts, hosts * per_host])
  return counts.astype(np.int64), hosts


@settings(max_examples=80, deadline=None)
@given(_case())
def test_hosts_tile_the_global_batch(case):
  counts, hosts = case
  batch = int(counts.sum())
  table = mixing.host_counts(counts, hosts)                     # [hosts, tasks]
  assert table.shape == (hosts, counts.size)
  np.testing.assert_array_equal(table.sum(1), batch // hosts)
  np.testing.assert_array_equal(table.sum(0), counts)
  global_ids = np.repeat(np.arange(counts.size), counts)        # [batch]
  pieces = []
  for h in range(hosts):
    sl = mixing.host_slices(counts, hosts, h)                   # [tasks, 2]
    np.testing.assert_array_equal(sl[:, 1] - sl[:, 0], table[h])
    ids = mixing.host_task_ids(counts, hosts, h)
    np.testing.assert_array_equal(ids, global_ids[h * batch // hosts:(h + 1) * batch // hosts])
    pieces.append(sl)
  # Each task's examples are split into consecutive, disjoint, complete ranges.
  for t in range(counts.size):
    ranges = [p[t] for p in pieces if p[t, 1] > p[t, 0]]
    covered = np.concatenate([np.arange(a, b) for a, b in ranges]) if ranges else []
    np.testing.assert_array_equal(covered, np.arange(counts[t]))


@pytest.mark.parametrize("args,match", [
    ((np.array([3, 4]), 2), "not divisible by num_hosts=2"),
    ((np.array([3, -1]), 1), "non-negative"),
    ((np.array([0.5, 1.5]), 1), "ints"),
    ((np.array([4, 4]), 0), "num_hosts"),
])
def test_host_counts_errors(args, match):
  with pytest.raises(ValueError, match=match):
    mixing.host_counts(*args)


def test_host_slices_rejects_bad_host_index():
  with pytest.raises(ValueError, match="host_index"):
    mixing.host_slices(np.array([4, 4]), 2, 2)


def test_sampler_counts_split_across_hosts():
  sampler = mixing.make_sampler("dynamic", ["a", "b", "c"], 48, window=1)
  sampler.update(0, [1.0, 2.0, 9.0])
  table = mixing.host_counts(sampler.counts(1), 4)
  np.testing.assert_array_equal(table.sum(1), [12] * 4)
  np.testing.assert_array_equal(table.sum(0), sampler.counts(1))
