"""UniMax (dynpt/mixing/unimax.py) against allocations worked out by hand."""

import numpy as np
import pytest

from dynpt import mixing
from dynpt.mixing import unimax

TASKS = ["a", "b", "c", "d"]
SIZES = {"a": 100, "b": 300, "c": 1000, "d": 5000}


def test_budget_is_shared_evenly_with_an_epoch_cap_by_hand():
  # 100 steps x 40 = 4000 examples, at most 2 epochs, smallest task first:
  #   a: min(4000 / 4 = 1000, 2 x 100)  = 200   -> 3800 left
  #   b: min(3800 / 3 = 1266.7, 2 x 300) = 600  -> 3200 left
  #   c: min(3200 / 2 = 1600, 2 x 1000) = 1600  -> 1600 left
  #   d: min(1600 / 1, 2 x 5000)        = 1600
  s = mixing.make_sampler("unimax", TASKS, 40, task_sizes=SIZES, num_steps=100,
                          max_epochs=2, min_per_task=1)
  np.testing.assert_allclose(s.budgets, [200, 600, 1600, 1600])
  np.testing.assert_allclose(s.shares(0), [0.05, 0.15, 0.4, 0.4])
  np.testing.assert_array_equal(s.counts(0), [2, 6, 16, 16])
  assert s.epochs() == pytest.approx({"a": 2.0, "b": 2.0, "c": 1.6, "d": 0.32})
  s.update(0, [1.0, 2.0, 3.0, 4.0])  # A fixed mixture: losses change nothing.
  np.testing.assert_array_equal(s.counts(1), s.counts(0))


def test_allocation_follows_size_not_task_order():
  # The same four sizes listed largest first: each task keeps its own budget.
  np.testing.assert_allclose(unimax.unimax_budgets([5000, 100, 1000, 300], 4000, 2.0),
                             [1600, 200, 1600, 600])
  # A budget nothing caps is uniform: 4 x 100 examples, every task has 100 or more.
  np.testing.assert_allclose(unimax.unimax_budgets([100, 300, 1000, 5000], 400, 1.0),
                             [100, 100, 100, 100])
  # A budget beyond N epochs of everything caps every task: shares follow size.
  budgets = unimax.unimax_budgets([100, 300, 1000, 5000], 10 ** 6, 1.0)
  np.testing.assert_allclose(budgets, [100, 300, 1000, 5000])


def test_matches_the_published_example_of_an_independent_implementation():
  # The README of the `unimax-sampling` package on PyPI: 250e9 characters, N = 4.
  sizes = [179955884499, 184595788282, 42541080893, 10027573389, 549707867]
  budgets = unimax.unimax_budgets(sizes, 250_000_000_000, 4)
  np.testing.assert_allclose(budgets, [69230291658.66666, 69230291658.66666,
                                       69230291658.66667, 40110293556, 2198831468])


@pytest.mark.parametrize("options,match", [
    ({"task_sizes": SIZES, "num_steps": 10, "max_epochs": 0}, "max_epochs"),
    ({"task_sizes": {**SIZES, "d": 0}, "num_steps": 10}, "task_sizes must be > 0"),
    ({"task_sizes": SIZES, "num_steps": 0}, "num_steps"),
    ({"num_steps": 10}, "needs task_sizes="),
    ({"task_sizes": SIZES}, "needs num_steps="),
])
def test_bad_or_missing_options_raise_naming_them(options, match):
  with pytest.raises(ValueError, match=match):
    mixing.make_sampler("unimax", TASKS, 40, **options)
