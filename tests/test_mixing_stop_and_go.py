"""Tests for 12-in-1's dynamic stop-and-go and the (anti-)curriculum samplers."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from dynpt import mixing

TASKS = ["a", "b", "c", "d"]


def _scores(sampler, step, values):
  sampler.update_validation(step, dict(zip(sampler.task_names, values)))


def test_dsg_scripted_transitions():
  s = mixing.make_sampler("dsg", ["t"], 8)
  modes = []
  for score in [50.0, 60.0, 60.03, 60.05,   # +0.05%, +0.03%: 2 bad epochs -> stop
                59.9,                       # -0.25% from best 60.05: stays stopped
                59.7]:                      # -0.58%: diverged -> go
    s.update_validation(0, [score])
    modes.append(s.modes()["t"])
  assert modes == ["go", "go", "go", "stop", "stop", "go"]


def test_dsg_one_good_epoch_resets_the_count():
  s = mixing.make_sampler("dsg", ["t"], 8)
  for score in [50.0, 50.01, 52.0, 52.01]:  # bad, good, bad: never two bad in a row.
    s.update_validation(0, [score])
  assert s.modes()["t"] == "go"
  s.update_validation(0, [51.0])
  assert s.modes()["t"] == "stop"


def test_dsg_lower_is_better_for_losses():
  s = mixing.make_sampler("dsg", ["t"], 8, higher_is_better=False)
  for loss in [2.0, 1.5, 1.4995, 1.4990]:
    s.update_validation(0, [loss])
  assert s.modes()["t"] == "stop"
  s.update_validation(0, [1.4990 * 1.006])
  assert s.modes()["t"] == "go"


def test_dsg_train_loss_signal_scores_each_task_epoch_by_its_mean_loss():
  # Task a: 4 examples an epoch, 2 a step (batch 4, two tasks): an epoch every 2 steps.
  s = mixing.make_sampler("dsg", ["a", "b"], 4, signal="train_loss", task_sizes=[4, 100],
                          min_per_task=1)
  count = np.array([2, 2])
  # a's epoch means: 2.0, 1.0, 0.9995 (+0.05%: bad), 0.999 (bad) -> stop after epoch 4.
  losses = [3.0, 1.0, 1.5, 0.5, 0.9995, 0.9995, 0.999, 0.999]
  modes = []
  for step, loss in enumerate(losses):
    assert s.counts(step).tolist() == ([2, 2] if s.modes()["a"] == "go" else
                                       ([2, 2] if step % s.iter_gap == 0 else [0, 4]))
    s.update(step, [loss, 5.0], task_count=count)
    modes.append(s.modes()["a"])
  assert modes == ["go"] * 7 + ["stop"]
  assert s.modes()["b"] == "go"  # b has not finished an epoch: never scored.
  assert s.state_dict()["epochs_validated"].tolist() == [4, 0]
  assert s.state_dict()["epoch_examples"].tolist() == [0.0, 16.0]
  # A stopped task's loss rising past the best by more than 0.5% puts it back in go.
  s.update(8, [0.0, 5.0], task_count=np.array([0, 4]))  # Not a's step: no epoch ends.
  s.update(9, [1.2, 5.0], task_count=count)
  s.update(10, [1.2, 5.0], task_count=count)
  assert s.modes()["a"] == "go"


def test_dsg_train_loss_signal_needs_sizes_and_old_states_resume():
  with pytest.raises(ValueError, match="needs task_sizes"):
    mixing.make_sampler("dsg", ["a"], 4, signal="train_loss")
  with pytest.raises(ValueError, match="signal='val'"):
    mixing.make_sampler("dsg", ["a"], 4, signal="val", task_sizes=[4])
  old = mixing.make_sampler("dsg", ["a", "b"], 8, task_sizes=[4, 4]).state_dict()
  new = mixing.make_sampler("dsg", ["a", "b"], 8, task_sizes=[4, 4], signal="train_loss")
  new.load_state_dict(old)  # Saved before the signal existed: empty accumulators.
  assert new.state_dict()["epoch_loss_sum"].tolist() == [0.0, 0.0]


def _reference_modes(scores, higher=True, thr=0.001, epochs=2, div=0.005):
  """Independent replay of 12-in-1's rules over one task's score sequence."""
  stopped, best, bad, out = False, None, 0, []
  for x in scores:
    if best is None:
      best = x
    else:
      better_by = (x - best) / abs(best) if higher else (best - x) / abs(best)
      bad = 0 if better_by > thr else bad + 1
      best = max(best, x) if higher else min(best, x)
      if not stopped and bad >= epochs:
        stopped, bad = True, 0
      elif stopped and -better_by > div:
        stopped, bad = False, 0
    out.append("stop" if stopped else "go")
  return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-0.01, 0.01), min_size=1, max_size=30), st.booleans())
def test_dsg_transitions_follow_the_rules(deltas, higher):
  scores = list(50.0 * np.cumprod(1.0 + np.asarray(deltas)))
  s = mixing.make_sampler("dsg", ["t"], 8, higher_is_better=higher)
  got = []
  for x in scores:
    s.update_validation(0, [x])
    got.append(s.modes()["t"])
  assert got == _reference_modes(scores, higher)


def test_dsg_counts_map_stop_to_every_iter_gap_steps():
  s = mixing.make_sampler("dsg", TASKS, 40, iter_gap=4)
  for k in range(3):  # Only task a stops improving, so only a converges.
    _scores(s, k, [50.0, 50.0 + k, 60.0 + k, 70.0 + k])
  assert s.modes() == {"a": "stop", "b": "go", "c": "go", "d": "go"}
  counts = np.stack([s.counts(step) for step in range(8)])
  np.testing.assert_array_equal(counts[[0, 4], 0], [10, 10])  # Gap steps: a trains.
  np.testing.assert_array_equal(counts[[1, 2, 3, 5, 6, 7], 0], 0)
  assert np.all(counts.sum(1) == 40)
  assert np.all(counts[:, 1:] >= 4)
  # Off-gap steps split 40 over 3 tasks; the leftover rotates round-robin.
  np.testing.assert_array_equal(np.sort(counts[1, 1:]), [13, 13, 14])
  assert len({tuple(c) for c in counts[[1, 2, 3], 1:]}) == 3
  # The stopped task may report NaN loss on a step where it had no examples ...
  s.update(1, [np.nan, 1.0, 1.0, 1.0])
  # ... but not on a gap step, where it trained.
  with pytest.raises(ValueError, match="'a' at step 4 is NaN"):
    s.update(4, [np.nan, 1.0, 1.0, 1.0])


def test_dsg_all_stopped_keeps_training_everything():
  s = mixing.make_sampler("dsg", ["a", "b"], 8)
  for _ in range(3):
    _scores(s, 0, [50.0, 50.0])
  assert set(s.modes().values()) == {"stop"}
  np.testing.assert_array_equal(s.counts(1), [4, 4])


def test_dsg_validation_due_per_task_epoch():
  s = mixing.make_sampler("dsg", ["a", "b"], 8, task_sizes={"a": 8, "b": 12})
  assert not s.validation_due().any()
  s.update(0, [1.0, 1.0])
  s.update(1, [1.0, 1.0])  # 8 examples each: a finished an epoch, b has not.
  np.testing.assert_array_equal(s.validation_due(), [True, False])
  s.update_validation(1, {"a": 70.0})
  s.update(2, [1.0, 1.0])
  np.testing.assert_array_equal(s.validation_due(), [False, True])
  with pytest.raises(ValueError, match="needs task_sizes"):
    mixing.make_sampler("dsg", ["a"], 8).validation_due()
  with pytest.raises(ValueError, match="unknown tasks \\['z'\\]"):
    s.update_validation(3, {"z": 1.0})


def test_curriculum_with_given_first_group():
  s = mixing.make_sampler("curriculum", TASKS, 40, first_tasks=["c", "a"],
                          first_phase_steps=3)
  assert s.first_group() == ["a", "c"]
  np.testing.assert_array_equal(s.counts(0), [16, 4, 16, 4])
  for step in range(3):
    assert s.phase(step) == 1
    s.update(step, [1.0] * 4)
  assert s.phase(3) == 2
  np.testing.assert_array_equal(s.counts(3), [10, 10, 10, 10])


@pytest.mark.parametrize("name,expected", [("curriculum", ["b", "d"]),
                                           ("anti_curriculum", ["a", "c"])])
def test_curricula_pick_first_group_by_measured_loss(name, expected):
  s = mixing.make_sampler(name, TASKS, 40, window=2, group_size=2)
  assert s.phase(0) == 0
  np.testing.assert_array_equal(s.counts(0), [10, 10, 10, 10])
  s.update(0, [3.0, 1.0, 4.0, 0.5])
  s.update(1, [3.0, 1.0, 4.0, 0.5])
  assert s.phase(2) == 1
  assert s.first_group() == expected


def test_curriculum_ends_when_first_group_converges_then_dsg():
  s = mixing.make_sampler("curriculum", ["a", "b"], 16, first_tasks=["a"], stop_and_go=True,
                          min_per_task=0)
  np.testing.assert_array_equal(s.counts(0), [16, 0])
  s.update(0, [1.0, np.nan])  # b had no examples: NaN is fine.
  for k in range(3):
    _scores(s, k, [50.0, 10.0 + k])
  assert s.phase(1) == 2
  # Phase 2 with DSG: a converged (stop) trains only on gap steps.
  np.testing.assert_array_equal(s.counts(1), [0, 16])
  np.testing.assert_array_equal(s.counts(4), [8, 8])
