"""The online mixers of the literature (odm, doremi, ado, softmax), each against its paper's rule.

Every expected sequence below is written out from the paper's formulas with
numpy, step by step, not by calling the sampler's own math.
"""

import json
import math
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from dynpt import mixing
from dynpt.mixing import ado as ado_lib

TASKS = ["cc3m_cap", "cc3m_itm", "oi_exists", "vg_mlm"]
ONLINE = ("odm", "doremi", "ado", "softmax")
_SETTINGS = settings(max_examples=25, deadline=None)


def _write_reference(path, task_names, steps, loss_fn):
  """A reference run's `mixture_history.jsonl`, as the trainer writes it."""
  os.makedirs(path, exist_ok=True)
  k = len(task_names)
  with open(os.path.join(path, mixing.HISTORY_FILENAME), "w") as f:
    for s in steps:
      record = mixing.history_record(s, task_names, np.full(k, 1 / k), np.full(k, 4),
                                     np.asarray(loss_fn(s), np.float64))
      f.write(json.dumps(record) + "\n")


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("reference_run"))
  _write_reference(path, TASKS, range(0, 400), lambda s: [3.0, 2.0, 1.0, 0.5])
  return path


def _options(name, reference_dir):
  return {"odm": {"seed": 3}, "doremi": {"reference_run_dir": reference_dir, "window": 2},
          "ado": {"window": 2, "ignore_windows": 0, "buffer_size": 4},
          "softmax": {"window": 3}}[name]


def _loss(rng, step, sampler):
  """Per-task losses that fall with the step, NaN where the task has no examples."""
  loss = rng.uniform(0.5, 4.0, sampler.num_tasks) * (1 + 10 / (step + 1))
  return np.where(sampler.counts(step) == 0, np.nan, loss)


# ---- Every online sampler --------------------------------------------------

@pytest.mark.parametrize("name", ONLINE)
def test_resume_mid_window_continues_identically(name, reference_dir):
  opts = _options(name, reference_dir)
  make = lambda: mixing.make_sampler(name, TASKS, 48, **opts)
  a, rng = make(), np.random.default_rng(0)
  for step in range(7):  # 7 steps: windows of 2 and 3 are mid-way.
    a.update(step, _loss(rng, step, a))
  b = make()
  b.load_state_dict(a.state_dict())
  rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
  for step in range(7, 30):
    np.testing.assert_array_equal(a.counts(step), b.counts(step))
    np.testing.assert_array_equal(a.shares(step), b.shares(step))
    a.update(step, _loss(rng_a, step, a))
    b.update(step, _loss(rng_b, step, b))
  for key, value in a.state_dict().items():
    np.testing.assert_array_equal(value, b.state_dict()[key], err_msg=key)


@pytest.mark.parametrize("name", ONLINE)
def test_state_saves_and_restores_with_orbax(name, reference_dir, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  opts = _options(name, reference_dir)
  a, rng = mixing.make_sampler(name, TASKS, 48, **opts), np.random.default_rng(2)
  for step in range(9):
    a.update(step, _loss(rng, step, a))
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(str(tmp_path / "mixer"), a.state_dict())
  ckpt.wait_until_finished()
  b = mixing.make_sampler(name, TASKS, 48, **opts)
  b.load_state_dict(ckpt.restore(str(tmp_path / "mixer")))
  for key, value in a.state_dict().items():
    np.testing.assert_array_equal(value, b.state_dict()[key], err_msg=key)
    assert b.state_dict()[key].dtype == value.dtype, key
  np.testing.assert_array_equal(a.counts(9), b.counts(9))


@_SETTINGS
@given(name=st.sampled_from(ONLINE), num_tasks=st.integers(1, 6), floor=st.integers(0, 4),
       extra=st.integers(0, 40), seed=st.integers(0, 2**31 - 1))
def test_counts_sum_to_the_batch_and_keep_the_floor(reference_dir, name, num_tasks, floor,
                                                    extra, seed):
  tasks = TASKS[:num_tasks] if num_tasks <= len(TASKS) else None
  if tasks is None:  # More tasks than the shared reference has: skip doremi there.
    if name == "doremi":
      return
    tasks = [f"t{i}" for i in range(num_tasks)]
  batch = floor * num_tasks + extra + (floor == 0)
  opts = dict(_options(name, reference_dir), min_per_task=floor)
  hosts = [mixing.make_sampler(name, tasks, batch, **opts) for _ in range(2)]
  rng = np.random.default_rng(seed)
  for step in range(12):
    counts = hosts[0].counts(step)
    np.testing.assert_array_equal(counts, hosts[1].counts(step))  # Every host agrees.
    assert counts.sum() == batch and np.all(counts >= floor)
    shares = hosts[0].shares(step)
    assert np.all(np.isfinite(shares)) and np.all(shares >= 0)
    assert abs(shares.sum() - 1) < 1e-9
    loss = np.where(counts == 0, np.nan, rng.uniform(0.0, 9.0, num_tasks))
    for h in hosts:
      h.update(step, loss)


# ---- softmax ---------------------------------------------------------------

def test_softmax_follows_its_rule_by_hand():
  s = mixing.make_sampler("softmax", ["a", "b", "c"], 60, window=2, temperature=0.5,
                          min_per_task=2)
  losses = [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0],   # window 1: means [2, 2, 2]
            [1.0, 4.0, 2.0], [2.0, 3.0, 2.0]]   # window 2: means [1.5, 3.5, 2]
  expected = [np.full(3, 1 / 3)] * 3
  expected.append(np.exp(np.array([2.0, 2.0, 2.0]) / 0.5) / np.sum(np.exp([4.0] * 3)))
  w = np.exp(np.array([1.5, 3.5, 2.0]) / 0.5)
  expected.append(w / w.sum())
  for step, loss in enumerate(losses):
    np.testing.assert_allclose(s.shares(step), expected[step], rtol=1e-12)
    s.update(step, loss)
  np.testing.assert_allclose(s.shares(4), expected[4], rtol=1e-12)
  # 60 rows, floor 2: b's ideal count is 60 * 0.8509 = 51.05 -> 51 or so.
  counts = s.counts(4)
  assert counts.sum() == 60 and counts.min() >= 2 and counts.argmax() == 1
  # Softmax sees differences only: +10 nats on every task changes nothing.
  np.testing.assert_allclose(mixing.softmax.softmax_shares([11.5, 13.5, 12.0], 0.5),
                             w / w.sum(), rtol=1e-12)
  # A tiny temperature is a hard argmax, never NaN.
  np.testing.assert_array_equal(mixing.softmax.softmax_shares([1.0, 3.0, 2.0], 1e-300),
                                [0.0, 1.0, 0.0])


# ---- DoReMi ----------------------------------------------------------------

def test_doremi_follows_the_paper_update_by_hand(tmp_path):
  names = ["a", "b", "c"]
  ref = lambda s: [2.0 - 0.1 * s, 1.0, 3.0]
  _write_reference(str(tmp_path), names, range(0, 20, 2), ref)  # Every 2nd step recorded.
  eta, c = 0.5, 0.1
  s = mixing.make_sampler("doremi", names, 30, reference_run_dir=str(tmp_path), eta=eta,
                          smoothing=c, min_per_task=1)
  losses = [[2.5, 0.5, 3.5], [1.0, 1.5, 3.0], [2.2, 1.2, 2.0]]
  w = np.full(3, 1 / 3)
  for step, loss in enumerate(losses):
    np.testing.assert_allclose(s.shares(step), w, rtol=1e-12)
    # Step 1 was not recorded: halfway between steps 0 (2.0) and 2 (1.8).
    reference = np.array([[2.0, 1.0, 3.0], [1.9, 1.0, 3.0], [1.8, 1.0, 3.0]][step])
    lam = np.maximum(np.array(loss) - reference, 0.0)
    w = w * np.exp(eta * lam)
    w = w / w.sum()
    w = (1 - c) * w + c / 3
    s.update(step, loss)
  np.testing.assert_allclose(s.shares(3), w, rtol=1e-12)
  assert np.all(s.shares(3) >= c / 3)
  # The paper's output is the time average of the weights.
  assert s.average_weights().shape == (3,) and abs(s.average_weights().sum() - 1) < 1e-12


def test_doremi_window_averages_the_excess(tmp_path):
  _write_reference(str(tmp_path), ["a", "b"], range(10), lambda s: [1.0, 1.0])
  s = mixing.make_sampler("doremi", ["a", "b"], 10, reference_run_dir=str(tmp_path),
                          window=2, min_per_task=1)
  s.update(0, [2.0, 1.0])
  np.testing.assert_allclose(s.shares(1), [0.5, 0.5])  # Window not closed yet.
  s.update(1, [1.0, 1.0])
  w = np.array([0.5, 0.5]) * np.exp([0.5, 0.0])  # Mean excess over the window: [0.5, 0].
  w = (1 - 1e-3) * w / w.sum() + 1e-3 / 2
  np.testing.assert_allclose(s.shares(2), w, rtol=1e-12)


def test_doremi_reference_errors_name_the_file(tmp_path):
  with pytest.raises(ValueError, match="mixture_history.jsonl does not exist"):
    mixing.make_sampler("doremi", TASKS, 40, reference_run_dir=str(tmp_path / "none"))
  _write_reference(str(tmp_path), TASKS[:2], range(5), lambda s: [1.0, 2.0])
  with pytest.raises(ValueError, match=f"{tmp_path}.*no recorded loss for tasks "
                     r"\['oi_exists', 'vg_mlm'\]"):
    mixing.make_sampler("doremi", TASKS, 40, reference_run_dir=str(tmp_path))
  s = mixing.make_sampler("doremi", TASKS[:2], 40, reference_run_dir=str(tmp_path))
  for step in range(5):
    s.update(step, [1.0, 1.0])
  with pytest.raises(ValueError, match=f"{tmp_path}.*covers steps up to 4.*step 5"):
    s.update(5, [1.0, 1.0])
  with pytest.raises(ValueError, match=f"{tmp_path}.*covers steps up to 4.*num_steps=6"):
    mixing.make_sampler("doremi", TASKS[:2], 40, reference_run_dir=str(tmp_path), num_steps=6)
  mixing.make_sampler("doremi", TASKS[:2], 40, reference_run_dir=str(tmp_path), num_steps=5)
  with pytest.raises(ValueError, match="reference_run_dir"):
    mixing.make_sampler("doremi", TASKS, 40)


def test_doremi_reference_interpolates_skips_gaps_and_keeps_the_last_duplicate(tmp_path):
  hist = tmp_path / mixing.HISTORY_FILENAME
  lines = [mixing.history_record(0, ["a", "b"], [0.5, 0.5], [2, 0], [4.0, np.nan]),
           mixing.history_record(10, ["a", "b"], [0.5, 0.5], [1, 1], [2.0, 3.0]),
           mixing.history_record(10, ["a", "b"], [0.5, 0.5], [1, 1], [1.0, 5.0]),
           mixing.history_record(20, ["a", "b"], [0.5, 0.5], [1, 1], [0.0, 1.0])]
  bad = dict(lines[1], step=5, task_loss={"a": "oops", "b": 1.0})  # Skipped as corrupt.
  hist.write_text("".join(json.dumps(r) + "\n" for r in lines + [bad]))
  ref = mixing.doremi.ReferenceLosses(str(hist), ["a", "b"])  # The file itself works too.
  np.testing.assert_allclose(ref.at(5), [2.5, 5.0])     # b: before its first record.
  np.testing.assert_allclose(ref.at(15), [0.5, 3.0])
  np.testing.assert_allclose(ref.at(29), [0.0, 1.0])    # Within one history interval.
  with pytest.raises(ValueError, match="covers steps up to 29"):
    ref.at(30)


# ---- ODM -------------------------------------------------------------------

def _eps(k, t):
  return 1 / k if t == 0 else min(1 / k, math.sqrt(math.log(k) / (k * t)))


def test_odm_follows_exp3_by_hand():
  k, batch, floor, decay, seed = 3, 8, 2, 0.8, 11
  s = mixing.make_sampler("odm", ["a", "b", "c"], batch, reward_decay=decay, seed=seed,
                          min_per_task=floor)
  free = batch - floor * k
  reward = np.zeros(k)
  rng = np.random.default_rng(5)
  for step in range(6):
    t = step + 1
    z = np.exp(_eps(k, t - 1) * reward)
    pi = (1 - k * _eps(k, t)) * z / z.sum() + _eps(k, t)
    np.testing.assert_allclose(s.shares(step), pi, rtol=1e-12)
    # The draw: `free` rows from pi, seeded by (seed, step), on top of the floor.
    drawn = np.random.default_rng([seed, step]).multinomial(free, s.shares(step))
    np.testing.assert_array_equal(s.counts(step), floor + drawn)
    loss = rng.uniform(1.0, 5.0, k)
    for i in range(k):
      if drawn[i]:
        reward[i] = decay * reward[i] + (1 - decay) * loss[i] / pi[i]
    s.update(step, loss)
    np.testing.assert_allclose(s.state_dict()["reward"], reward, rtol=1e-12)


def test_odm_single_draw_is_the_papers_bandit():
  """With one free row per step, the reward is exactly the paper's L / pi(D_i)."""
  s = mixing.make_sampler("odm", ["a", "b"], 3, reward_decay=0.5, min_per_task=1)
  pi = s.shares(0)
  drawn = s.counts(0) - 1
  i = int(np.argmax(drawn))
  assert drawn.sum() == 1
  s.update(0, [2.0, 4.0])
  expected = np.zeros(2)
  expected[i] = 0.5 * [2.0, 4.0][i] / pi[i]
  np.testing.assert_allclose(s.state_dict()["reward"], expected, rtol=1e-12)


def test_update_learns_from_the_counts_the_batch_had():
  """A trainer that draws batch s+1 before update(s) passes the batch's counts."""
  s = mixing.make_sampler("odm", ["a", "b", "c"], 12, min_per_task=2)
  pi = s.shares(0)
  s.update(0, [3.0, 2.0, 1.0], task_count=[2, 8, 2])  # Only b won draws, whatever counts(0).
  np.testing.assert_allclose(s.state_dict()["reward"], [0.0, 0.1 * 2.0 / pi[1], 0.0])
  a = mixing.make_sampler("ado", ["a", "b"], 10, min_per_task=1)
  a.update(0, [3.0, np.nan], task_count=[10, 0])
  np.testing.assert_array_equal(a.state_dict()["examples_seen"], [10, 0])


def test_odm_favours_the_high_loss_task_and_explores():
  s = mixing.make_sampler("odm", ["easy", "hard"], 64, min_per_task=4)
  for step in range(300):
    s.update(step, [0.5, 3.0])
  pi = s.shares(300)
  assert pi[1] > pi[0] >= _eps(2, 301) - 1e-12
  assert _eps(2, 301) < _eps(2, 2)  # The exploration rate decays.


# ---- ADO -------------------------------------------------------------------

@pytest.mark.parametrize("eps,beta,alpha", [(1.0, 3.0, 0.3), (0.0, 5.0, 0.7),
                                            (2.5, 0.5, 0.1)])
def test_ado_fit_recovers_an_exact_power_law(eps, beta, alpha):
  n = np.geomspace(50, 5e4, 12)
  fit = ado_lib.fit_power_law(n, eps + beta * n ** -alpha)
  np.testing.assert_allclose(fit, (eps, beta, alpha), rtol=1e-4, atol=1e-6)


def test_ado_follows_the_paper_policy_by_hand():
  names = ["a", "b", "c"]
  truth = np.array([[1.0, 3.0, 0.3], [0.5, 6.0, 0.5], [2.0, 1.0, 0.2]])  # eps, beta, alpha
  prior = np.array([0.5, 0.3, 0.2])
  g1, g2, s_pow, delta = 0.2, 0.3, 0.5, 0.05
  s = mixing.make_sampler("ado", names, 40, window=1, ignore_windows=0, buffer_size=8,
                          prior=list(prior), gamma1=g1, gamma2=g2, credit_power=s_pow,
                          delta=delta, min_per_task=2)
  n = np.zeros(3)
  pi, pi_bar, h, updates = prior.copy(), prior.copy(), prior.copy(), 0
  for step in range(8):
    np.testing.assert_allclose(s.shares(step), pi, rtol=1e-5)
    n = n + s.counts(step)
    loss = truth[:, 0] + truth[:, 1] * n ** -truth[:, 2]
    s.update(step, loss)
    if step < 2:  # Three points are needed for a fit; until then, the prior.
      continue
    rate = truth[:, 2] * truth[:, 1] * n ** (-truth[:, 2] - 1)   # -dL/dn
    rho = prior * h ** s_pow * rate
    rho = rho / rho.sum()
    pi = g2 * rho + (1 - g2) * pi_bar
    pi = (1 - 3 * delta) * pi / pi.sum() + delta
    h = g1 * pi + (1 - g1) * h
    pi_bar = pi_bar + (rho - pi_bar) / (updates + 2)
    updates += 1
  np.testing.assert_allclose(s.shares(8), pi, rtol=1e-5)
  fitted = s.fitted_params()
  np.testing.assert_allclose(fitted["b"], truth[1], rtol=1e-4)
  assert np.all(s.shares(8) >= delta)


def test_ado_buffer_stays_bounded_and_spans_the_run():
  s = mixing.make_sampler("ado", ["a", "b"], 10, window=1, ignore_windows=1, buffer_size=4,
                          min_per_task=1)
  for step in range(12):
    s.update(step, [5.0 / (step + 1) + 1.0, 2.0 / (step + 1) + 0.5])
  st_ = s.state_dict()
  # Window 0 is ignored; windows 1..11 are points 0..10. The buffer is full after point 3;
  # point 4 keeps 0, 2 and adds 4 (stride 2); point 8 keeps 0, 4 and adds 8 (stride 4).
  assert int(st_["point_stride"]) == 4 and int(st_["num_points"]) == 3
  # Point i is step i + 1, when both tasks together had seen 10 * (i + 2) examples.
  np.testing.assert_array_equal(st_["point_examples"][:, :3].sum(axis=0), [20, 60, 100])
  assert np.all(np.isnan(st_["point_examples"][:, 3]))


def test_online_bad_options_name_them(reference_dir):
  for name, options, match in [("odm", {"reward_decay": 1.0}, "reward_decay"),
                               ("odm", {"seed": -1}, "seed"),
                               ("doremi", {"reference_run_dir": reference_dir, "eta": 0},
                                "eta"),
                               ("doremi", {"reference_run_dir": reference_dir,
                                           "smoothing": 1.0}, "smoothing"),
                               ("ado", {"delta": 0.3}, "delta"),
                               ("ado", {"buffer_size": 3}, "buffer_size"),
                               ("ado", {"prior": [1, 1, 0, 1]}, "prior"),
                               ("softmax", {"temperature": 0}, "temperature"),
                               ("softmax", {"windw": 2}, "windw")]:
    with pytest.raises(ValueError, match=match):
      mixing.make_sampler(name, TASKS, 40, **options)
