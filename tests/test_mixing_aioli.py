"""Aioli (dynpt/mixing/aioli.py) against updates worked out by hand."""

import math

import numpy as np
import pytest

from dynpt import mixing
from dynpt.mixing import aioli

# Two tasks, batch 10, no floor, epsilon 0.8: probing `a` gives counts [8, 2], probing
# `b` [2, 8]. One step per probe, one sweep: steps 0-1 probe, step 2 is the first step
# of the rest of the round (and its loss the last measurement), round 1 starts at 4.
# Seed 0 probes a then b in rounds 0 and 1 (checked below).
OPTIONS = {"round_steps": 4, "probe_steps": 1, "probe_sweeps": 1, "one_hot_factor": 0.8,
           "eta": 1.0, "seed": 0, "min_per_task": 0}

# Round 0 follows L(s+1) = L(s) - A p(s) exactly, with A = [[1.0, 0.5], [0.2, 0.6]]:
#   L(0) = [3.0, 2.0]
#   L(1) = L(0) - A [0.8, 0.2] = [3.0 - 0.9, 2.0 - 0.28] = [2.1, 1.72]
#   L(2) = L(1) - A [0.2, 0.8] = [2.1 - 0.6, 1.72 - 0.52] = [1.5, 1.2]
# (The paper's estimate gives the same A: the loss drops [[0.9, 0.6], [0.28, 0.52]]
# (task x probe) times the inverse of the probe mixtures [[0.8, 0.2], [0.2, 0.8]].)
ROUND0 = [[3.0, 2.0], [2.1, 1.72], [1.5, 1.2]]
A0 = [[1.0, 0.5], [0.2, 0.6]]
# Round 1 (steps 4-6) with A' = [[0.4, -0.2], [0.1, 0.3]]:
#   L(4) = [2.0, 1.5]
#   L(5) = [2.0 - (0.32 - 0.04), 1.5 - (0.08 + 0.06)] = [1.72, 1.36]
#   L(6) = [1.72 - (0.08 - 0.16), 1.36 - (0.02 + 0.24)] = [1.80, 1.10]
ROUND1 = [[2.0, 1.5], [1.72, 1.36], [1.80, 1.10]]
A1 = [[0.4, -0.2], [0.1, 0.3]]


def _run(sampler, rounds):
  """Feeds the probe losses of each round plus an arbitrary exploit-step loss."""
  for r, losses in enumerate(rounds):
    for offset, loss in enumerate(losses):
      step = r * 4 + offset
      sampler.update(step, loss, task_count=sampler.counts(step))
    sampler.update(r * 4 + 3, [9.0, 9.0], task_count=sampler.counts(r * 4 + 3))


def test_probe_schedule_up_weights_each_task_in_turn():
  s = mixing.make_sampler("aioli", ["a", "b"], 10, **OPTIONS)
  assert s.probe_order(0, 0).tolist() == [0, 1] and s.probe_order(1, 0).tolist() == [0, 1]
  assert [s.probe_task(i) for i in range(8)] == [0, 1, -1, -1, 0, 1, -1, -1]
  assert [s.counts(i).tolist() for i in range(4)] == [[8, 2], [2, 8], [5, 5], [5, 5]]
  # With 3 tasks, 2 steps a probe and 2 sweeps, 12 of every 20 steps probe, each task 4.
  t = mixing.make_sampler("aioli", ["a", "b", "c"], 30, round_steps=20, probe_steps=2,
                          probe_sweeps=2, one_hot_factor=0.6, min_per_task=1)
  probed = [t.probe_task(i) for i in range(40)]
  assert probed[12:20] == [-1] * 8 and probed[32:] == [-1] * 8
  assert sorted(probed[:12]) == [0] * 4 + [1] * 4 + [2] * 4
  assert probed[0] == probed[1] and probed[2] == probed[3]  # 2 steps on each probe.
  np.testing.assert_allclose(t.shares(0), np.where(np.arange(3) == probed[0], 0.6, 0.2))


def test_estimate_matches_the_hand_worked_matrix():
  shares = np.array([[0.8, 0.2], [0.2, 0.8]])
  np.testing.assert_allclose(aioli.estimate_interactions(np.array(ROUND0), shares), A0,
                             atol=1e-12)
  # Two steps a probe: four drops of L = c - A C(s), fitted by least squares exactly.
  shares2 = np.array([[0.8, 0.2], [0.8, 0.2], [0.2, 0.8], [0.2, 0.8]])
  cumulative = np.vstack([np.zeros(2), np.cumsum(shares2, axis=0)])
  loss = np.array([3.0, 2.0]) - cumulative @ np.array(A0).T
  loss[2, 1] = np.nan  # A task without a loss at one step still fits from the rest.
  np.testing.assert_allclose(aioli.estimate_interactions(loss, shares2), A0, atol=1e-12)


def test_rounds_update_the_mixture_by_hand():
  s = mixing.make_sampler("aioli", ["a", "b"], 10, **OPTIONS)
  _run(s, [ROUND0])
  np.testing.assert_allclose(s.interactions(), A0, atol=1e-12)
  # normalize: A0 >= 0, sum 2.3, so A^T 1 = [1.2, 1.1] / 2.3 and
  # p_a = e^(1.2/2.3) / (e^(1.2/2.3) + e^(1.1/2.3)) = 1 / (1 + e^(-0.1/2.3)).
  p_a = 1 / (1 + math.exp(-0.1 / 2.3))
  assert p_a == pytest.approx(0.5108679, abs=1e-7)
  np.testing.assert_allclose(s.shares(3), [p_a, 1 - p_a])
  np.testing.assert_allclose(s.shares(4), [0.8, 0.2])  # Round 1 probes again.
  _run_round1(s)
  # A1's smallest entry -0.2 shifts it to [[0.6, 0.0], [0.3, 0.5]], sum 1.4: A^T 1 =
  # [0.9, 0.5] / 1.4, so the log-odds of a grow by 0.4 / 1.4 on top of 0.1 / 2.3.
  p_a = 1 / (1 + math.exp(-(0.1 / 2.3 + 0.4 / 1.4)))
  assert p_a == pytest.approx(0.5815629, abs=1e-7)
  np.testing.assert_allclose(s.shares(7), [p_a, 1 - p_a])
  np.testing.assert_array_equal(s.counts(7), [6, 4])


def _run_round1(sampler):
  for offset, loss in enumerate(ROUND1):
    sampler.update(4 + offset, loss, task_count=sampler.counts(4 + offset))


def test_unnormalized_update_is_multiplicative():
  s = mixing.make_sampler("aioli", ["a", "b"], 10, **{**OPTIONS, "normalize": False,
                                                       "eta": 0.5})
  _run(s, [ROUND0])
  _run_round1(s)
  # p_2 is proportional to p_0 * exp(0.5 * [1.2, 1.1]) * exp(0.5 * [0.5, 0.1]):
  # log-odds 0.5 * 0.1 + 0.5 * 0.4 = 0.25.
  p_a = 1 / (1 + math.exp(-0.25))
  assert p_a == pytest.approx(0.5621765, abs=1e-7)
  np.testing.assert_allclose(s.shares(7), [p_a, 1 - p_a])


def test_a_resumed_sampler_finishes_the_round_the_same_way():
  a = mixing.make_sampler("aioli", ["a", "b"], 10, **OPTIONS)
  a.update(0, ROUND0[0], task_count=a.counts(0))
  a.update(1, ROUND0[1], task_count=a.counts(1))
  b = mixing.make_sampler("aioli", ["a", "b"], 10, **OPTIONS)
  b.load_state_dict(a.state_dict())
  for s in (a, b):
    s.update(2, ROUND0[2], task_count=s.counts(2))
  np.testing.assert_array_equal(a.shares(3), b.shares(3))
  assert a.shares(3)[0] == pytest.approx(0.5108679, abs=1e-7)


def test_a_round_never_mixes_in_the_losses_of_the_round_before():
  s = mixing.make_sampler("aioli", ["a", "b"], 10, **OPTIONS)
  s.update(0, [3.0, 2.0], task_count=s.counts(0))
  s.update(1, [2.1, 1.72], task_count=s.counts(1))
  # Steps 2, 3 and 5 never reported (say, skipped): round 1 fits on steps 4 and 6 only,
  # not on round 0's loss at the same offset as step 5.
  s.update(4, ROUND1[0], task_count=s.counts(4))
  s.update(6, ROUND1[2], task_count=s.counts(6))
  loss = np.array([ROUND1[0], [np.nan, np.nan], ROUND1[2]])
  want = aioli.estimate_interactions(loss, np.array([[0.8, 0.2], [0.2, 0.8]]))
  np.testing.assert_allclose(s.interactions(), want)
  assert not np.allclose(want, A1)


@pytest.mark.parametrize("options,match", [
    ({"round_steps": 4, "probe_steps": 2}, "round_steps=4 leaves no step"),
    ({"one_hot_factor": 0.0}, "one_hot_factor"),
    ({"eta": -1.0}, "eta"),
    ({"probe_sweeps": 0}, "probe_sweeps"),
    ({"seed": -1}, "seed"),
])
def test_bad_options_raise_naming_them(options, match):
  with pytest.raises(ValueError, match=match):
    mixing.make_sampler("aioli", ["a", "b"], 10, **options)
