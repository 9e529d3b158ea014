"""Tests for the sampler interface, the dynamic sampler and the fixed/loss baselines."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from dynpt import mixing

TASKS = ["cc3m_cap", "cc3m_itm", "oi_exists", "oi_list_objects", "vg_mlm"]
SIZES = {"cc3m_cap": 3000, "cc3m_itm": 3000, "oi_exists": 900, "oi_list_objects": 900,
         "vg_mlm": 100}
OPTIONS = {
    "dynamic": {"window": 3},
    "uniform": {},
    "size": {"task_sizes": SIZES},
    "temperature": {"task_sizes": SIZES, "temperature": 3.0},
    "fixed": {"weights": [5, 1, 1, 1, 2]},
    "easiest": {"window": 3},
    "hardest": {"window": 3},
    "loss_reweight": {"window": 3},
    "dsg": {"task_sizes": SIZES},
    "curriculum": {"window": 3, "group_size": 2, "first_phase_steps": 4},
    "anti_curriculum": {"window": 3, "group_size": 2, "first_phase_steps": 4},
    "odm": {"seed": 7},
    "ado": {"window": 2, "ignore_windows": 0, "buffer_size": 4},
    "softmax": {"window": 3},
    "aioli": {"round_steps": 7, "probe_steps": 1, "seed": 3},
    "unimax": {"task_sizes": SIZES, "num_steps": 100},
}
# "doremi" needs a reference run on disk; tests/test_mixing_online.py covers it.
FILE_BACKED = {"doremi"}
_SETTINGS = settings(max_examples=40, deadline=None)


def _losses(step, sampler, rng):
  """Random per-task losses, NaN exactly where the task has no examples."""
  loss = rng.uniform(0.1, 5.0, sampler.num_tasks)
  return np.where(sampler.counts(step) == 0, np.nan, loss)


def _drive(sampler, steps, seed=0, start=0):
  rng = np.random.default_rng(seed)
  for step in range(start, start + steps):
    sampler.update(step, _losses(step, sampler, rng))
    if hasattr(sampler, "update_validation") and step % 3 == 2:
      sampler.update_validation(step, rng.uniform(50, 51, sampler.num_tasks))


def test_factory_names_are_exactly_the_spec():
  assert set(mixing.SAMPLERS) == set(OPTIONS) | FILE_BACKED


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_sampler_obeys_the_interface(name):
  batch = 40
  sampler = mixing.make_sampler(name, TASKS, batch, **OPTIONS[name])
  assert sampler.name == name
  rng = np.random.default_rng(1)
  for step in range(12):
    counts = sampler.counts(step)
    assert counts.shape == (len(TASKS),) and counts.dtype.kind == "i"
    assert counts.sum() == batch and np.all(counts >= 0)
    shares = sampler.shares(step)
    assert shares.shape == (len(TASKS),) and abs(shares.sum() - 1) < 1e-9
    weights = sampler.loss_weights(step)
    assert weights.shape == (len(TASKS),) and np.all(weights >= 0)
    if name != "loss_reweight":
      np.testing.assert_array_equal(weights, 1.0)
    if name not in ("dsg", "curriculum", "anti_curriculum"):
      assert np.all(counts >= 4)
    np.testing.assert_array_equal(counts, sampler.counts(step))  # Pure.
    sampler.update(step, _losses(step, sampler, rng))
    if hasattr(sampler, "update_validation"):
      sampler.update_validation(step, rng.uniform(50, 60, len(TASKS)))
  state = sampler.state_dict()
  assert all(isinstance(v, np.ndarray) for v in state.values())
  assert int(state["last_step"]) == 11


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_state_round_trip_continues_the_same_mixture(name):
  a = mixing.make_sampler(name, TASKS, 40, **OPTIONS[name])
  _drive(a, 7, seed=3)
  b = mixing.make_sampler(name, TASKS, 40, **OPTIONS[name])
  b.load_state_dict(a.state_dict())
  _drive(a, 9, seed=4, start=7)
  _drive(b, 9, seed=4, start=7)
  for step in range(16, 24):
    np.testing.assert_array_equal(a.counts(step), b.counts(step))
    np.testing.assert_array_equal(a.loss_weights(step), b.loss_weights(step))
  for key, value in a.state_dict().items():
    np.testing.assert_array_equal(value, b.state_dict()[key], err_msg=key)


@_SETTINGS
@given(st.integers(1, 5), st.integers(0, 10_000), st.sampled_from(["window", "ema"]))
def test_dynamic_state_round_trip_and_hosts_agree(window, seed, smoothing):
  make = lambda: mixing.make_sampler("dynamic", TASKS, 64, window=window, smoothing=smoothing)
  hosts = [make() for _ in range(3)]  # Every host runs its own copy on the same losses.
  rng = np.random.default_rng(seed)
  for step in range(13):
    loss = rng.uniform(0.0, 8.0, len(TASKS))
    counts = [h.counts(step) for h in hosts]
    for c in counts[1:]:
      np.testing.assert_array_equal(c, counts[0])
    for h in hosts:
      h.update(step, loss)
    if step == 6:
      restored = make()
      restored.load_state_dict(hosts[0].state_dict())
      hosts[2] = restored
  for h in hosts[1:]:
    np.testing.assert_array_equal(h.counts(13), hosts[0].counts(13))


def test_dynamic_follows_algorithm_1():
  s = mixing.make_sampler("dynamic", ["a", "b", "c"], 100, window=2, min_per_task=4)
  np.testing.assert_allclose(s.shares(0), [1 / 3] * 3)  # Uniform until a window ends.
  s.update(0, [1.0, 2.0, 5.0])
  assert sorted(s.counts(1).tolist()) == [33, 33, 34]
  np.testing.assert_allclose(s.shares(1), [1 / 3] * 3)
  s.update(1, [3.0, 2.0, 5.0])  # Window means: [2, 2, 5].
  np.testing.assert_allclose(s.shares(2), [2 / 9, 2 / 9, 5 / 9])
  np.testing.assert_array_equal(s.counts(2).sum(), 100)
  assert np.all(np.abs(s.counts(2) - 100 * np.array([2, 2, 5]) / 9) < 1)
  s.update(2, [9.0, 0.0, 0.0])  # Mid-window: shares do not move.
  np.testing.assert_allclose(s.shares(3), [2 / 9, 2 / 9, 5 / 9])


def test_dynamic_skips_nan_for_empty_tasks():
  s = mixing.make_sampler("dynamic", ["a", "b"], 8, window=2, min_per_task=0)
  s.update(0, [1.0, np.nan], task_count=[8, 0])
  s.update(1, [3.0, 4.0], task_count=[4, 4])
  np.testing.assert_allclose(s.shares(2), [2 / 6, 4 / 6])  # b's mean is over 1 step.


@_SETTINGS
@given(st.lists(st.floats(0.0, 3.0), min_size=4, max_size=4), st.integers(1, 4))
def test_highest_loss_task_gains_share(others, window):
  s = mixing.make_sampler("dynamic", TASKS, 200, window=window)
  for step in range(3 * window):
    s.update(step, [3.5, *others])
  shares = s.shares(3 * window)
  assert shares[0] > 1 / len(TASKS)
  assert shares[0] == shares.max()
  assert s.counts(3 * window)[0] == s.counts(3 * window).max()


def test_task_with_vanishing_loss_sinks_to_the_floor():
  s = mixing.make_sampler("dynamic", TASKS, 200, window=2, min_per_task=4)
  for step in range(20):
    loss = np.array([2.0, 2.0, 2.0, 2.0, 2.0 * 0.5 ** step])  # [tasks]
    s.update(step, loss)
  assert s.counts(20)[4] == 4
  assert s.counts(20).sum() == 200


def test_ema_smoothing_and_temperature():
  ema = mixing.make_sampler("dynamic", ["a", "b"], 100, window=4, smoothing="ema",
                            ema_decay=0.5)
  win = mixing.make_sampler("dynamic", ["a", "b"], 100, window=4, temperature=0.5)
  for step in range(4):
    ema.update(step, [1.0, 3.0])
    win.update(step, [1.0, 3.0])
  np.testing.assert_allclose(ema.shares(4), [0.25, 0.75])  # Bias-corrected EMA of constants.
  np.testing.assert_allclose(win.shares(4), [0.1, 0.9])    # [1, 3]^2 normalised.


def test_normalize_initial_divides_by_first_window():
  s = mixing.make_sampler("dynamic", ["ce", "l2"], 100, window=1, normalize="initial")
  s.update(0, [2.0, 200.0])
  np.testing.assert_allclose(s.shares(1), [0.5, 0.5])
  s.update(1, [2.0, 100.0])  # l2 halved relative to its own start.
  np.testing.assert_allclose(s.shares(2), [2 / 3, 1 / 3])
  fixed = mixing.make_sampler("dynamic", ["ce", "l2"], 100, window=1,
                              loss_scales={"ce": 1.0, "l2": 100.0})
  fixed.update(0, [2.0, 200.0])
  np.testing.assert_allclose(fixed.shares(1), [0.5, 0.5])


@pytest.mark.parametrize("name,winner", [("easiest", 1), ("hardest", 2)])
def test_easiest_and_hardest_keep_the_floor(name, winner):
  s = mixing.make_sampler(name, ["a", "b", "c", "d"], 64, window=2)
  np.testing.assert_array_equal(s.counts(0), [16, 16, 16, 16])
  for step in range(2):
    s.update(step, [2.0, 0.5, 7.0, 3.0])
  expected = np.full(4, 4)
  expected[winner] = 64 - 12
  np.testing.assert_array_equal(s.counts(2), expected)


def test_loss_reweight_uniform_batch_weighted_loss():
  s = mixing.make_sampler("loss_reweight", ["a", "b", "c", "d"], 64, window=1)
  s.update(0, [1.0, 1.0, 2.0, 4.0])
  np.testing.assert_array_equal(s.counts(1), [16, 16, 16, 16])
  np.testing.assert_allclose(s.loss_weights(1), 4 * np.array([1, 1, 2, 4]) / 8, rtol=1e-6)
  assert abs(float(np.mean(s.loss_weights(1))) - 1.0) < 1e-6


def test_static_baselines():
  names = ["a", "b", "c"]
  np.testing.assert_array_equal(mixing.make_sampler("uniform", names, 30).counts(0), [10] * 3)
  sizes = {"a": 800, "b": 100, "c": 100}
  np.testing.assert_allclose(mixing.make_sampler("size", names, 100, task_sizes=sizes)
                             .shares(0), [0.8, 0.1, 0.1])
  temp = mixing.make_sampler("temperature", names, 100, task_sizes=sizes, temperature=3.0)
  w = np.array([800, 100, 100]) ** (1 / 3)
  np.testing.assert_allclose(temp.shares(0), w / w.sum())
  capped = mixing.make_sampler("size", names, 100, task_sizes=sizes, size_cap=100)
  np.testing.assert_allclose(capped.shares(0), [1 / 3] * 3)
  fixed = mixing.make_sampler("fixed", names, 100, weights={"a": 2, "b": 1, "c": 1})
  np.testing.assert_array_equal(fixed.counts(0), [50, 25, 25])


@pytest.mark.parametrize("name,batch,options,match", [
    ("nope", 40, {}, "unknown sampler 'nope'"),
    ("dynamic", 19, {}, "global_batch_size 19 is smaller than min_per_task=4 x 5 tasks"),
    ("dynamic", 40, {"windw": 3}, "windw"),
    ("dynamic", 40, {"window": 0}, "window"),
    ("dynamic", 40, {"smoothing": "median"}, "smoothing"),
    ("dynamic", 40, {"normalize": "zscore"}, "normalize"),
    ("dynamic", 40, {"temperature": -1.0}, "temperature"),
    ("size", 40, {"task_sizes": {"cc3m_cap": 1}}, "task_sizes is missing tasks"),
    ("size", 40, {"task_sizes": {**SIZES, "zz": 3}}, "unknown tasks \\['zz'\\]"),
    ("size", 40, {"task_sizes": {**SIZES, "vg_mlm": 0}}, "vg_mlm"),
    ("fixed", 40, {"weights": [0, 0, 0, 0, 0]}, "weights"),
    ("dsg", 40, {"iter_gap": 0}, "iter_gap"),
    ("curriculum", 40, {"first_tasks": ["zz"]}, "zz"),
])
def test_bad_options_raise_value_error_naming_them(name, batch, options, match):
  with pytest.raises(ValueError, match=match):
    mixing.make_sampler(name, TASKS, batch, **options)


def test_bad_updates_and_states_raise():
  s = mixing.make_sampler("dynamic", TASKS, 40, window=2)
  with pytest.raises(ValueError, match="'oi_exists' at step 0 is -1.0"):
    s.update(0, [1.0, 1.0, -1.0, 1.0, 1.0])
  with pytest.raises(ValueError, match="'cc3m_itm' at step 0 is NaN although the task had 8"):
    s.update(0, [1.0, np.nan, 1.0, 1.0, 1.0])
  with pytest.raises(ValueError, match="shape"):
    s.update(0, [1.0, 1.0])
  s.update(0, [1.0] * 5)
  with pytest.raises(ValueError, match="step 0 was already applied"):
    s.update(0, [1.0] * 5)
  other = mixing.make_sampler("dynamic", TASKS[:3], 40)
  with pytest.raises(ValueError, match="state key 'loss_sum' has shape"):
    other.load_state_dict(s.state_dict())
  with pytest.raises(ValueError, match="missing \\['difficulty'\\]"):
    bad = s.state_dict()
    del bad["difficulty"]
    s.load_state_dict(bad)
  with pytest.raises(ValueError, match="duplicate task names"):
    mixing.make_sampler("uniform", ["a", "a"], 8)


def test_state_saves_and_restores_with_orbax(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  a = mixing.make_sampler("dsg", TASKS, 40, task_sizes=SIZES)
  _drive(a, 6, seed=5)
  path = str(tmp_path / "mixer")
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(path, a.state_dict())
  ckpt.wait_until_finished()
  b = mixing.make_sampler("dsg", TASKS, 40, task_sizes=SIZES)
  b.load_state_dict(ckpt.restore(path))
  for key, value in a.state_dict().items():
    np.testing.assert_array_equal(value, b.state_dict()[key], err_msg=key)
    assert b.state_dict()[key].dtype == value.dtype
