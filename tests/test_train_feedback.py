"""The mixture feedback: losses of step s reach the batch of step s+2, in any call order."""
import json

import numpy as np
import pytest

from dynpt import mixing
from dynpt.train import checkpoints, feedback

TASKS = ["a", "b", "c"]


def _sampler():
  # The window of 1 step moves the mixture after every update.
  return mixing.make_sampler("softmax", TASKS, 12, window=1, temperature=0.3,
                             min_per_task=0)


def _losses(step):
  loss = np.array([1.0 + (step % 3), 2.0 - 0.1 * step, 0.5 * step], np.float64)
  if step == 2:
    loss[0] = np.nan  # A task without tokens in this step.
  return loss


def test_batch_n_sees_exactly_the_losses_up_to_step_n_minus_2():
  fb = feedback.MixtureFeedback(_sampler())
  reference = _sampler()
  drawn = {}
  for n in range(8):
    if n >= 1:  # The loop takes in step n-1 before it draws step n+1.
      fb.observe(n - 1, _losses(n - 1), drawn[n - 1].counts)
    if n >= 2:
      reference.update(n - 2, _losses(n - 2), task_count=drawn[n - 2].counts)
    draw = drawn[n] = fb.draw(n)
    np.testing.assert_array_equal(draw.counts, reference.counts(n))
    np.testing.assert_array_equal(draw.shares, reference.shares(n))
    assert draw.counts.sum() == 12
  assert len({tuple(d.counts) for d in drawn.values()}) > 1  # The mixture moved.


def test_when_losses_are_observed_does_not_change_the_counts():
  """Observing step s before or after drawing s+1 (async vs sync dispatch, a
  checkpoint after step s or not) gives the same batches."""
  early, late = feedback.MixtureFeedback(_sampler()), feedback.MixtureFeedback(_sampler())
  counts_early, counts_late = [], []
  late_draw = late.draw(0)
  for s in range(6):
    early_draw = early.draw(s)
    counts_early.append(early_draw.counts)
    early.observe(s, _losses(s), early_draw.counts)  # Before drawing s+1.
    counts_late.append(late_draw.counts)
    next_draw = late.draw(s + 1)  # Before observing s.
    late.observe(s, _losses(s), late_draw.counts)
    late_draw = next_draw
  np.testing.assert_array_equal(counts_early, counts_late)


def _through_checkpoint_json(state):
  """What the checkpoint's `mixer` item gives back (JSON, as orbax writes it)."""
  return checkpoints._from_jsonable(json.loads(json.dumps(checkpoints._jsonable(state))))


@pytest.mark.parametrize("stop_after", [2, 3, 5])
def test_a_restored_feedback_continues_exactly(stop_after):
  full, cut = feedback.MixtureFeedback(_sampler()), feedback.MixtureFeedback(_sampler())
  counts = {}
  for s in range(8):  # Uninterrupted: draw s+1, then observe s.
    counts[s] = full.draw(s).counts
    if s >= 1:
      full.observe(s - 1, _losses(s - 1), counts[s - 1])
  for s in range(stop_after):  # Stopped after step stop_after - 1 (the run's last).
    cut.draw(s)
    if s >= 1:
      cut.observe(s - 1, _losses(s - 1), counts[s - 1])
  cut.observe(stop_after - 1, _losses(stop_after - 1), counts[stop_after - 1])
  resumed = feedback.MixtureFeedback(_sampler())
  resumed.load_state_dict(_through_checkpoint_json(cut.state_dict()))
  for s in range(stop_after, 8):
    np.testing.assert_array_equal(resumed.draw(s).counts, counts[s])
    if s > stop_after:
      resumed.observe(s - 1, _losses(s - 1), counts[s - 1])


def test_a_bare_sampler_state_loads_with_nothing_pending():
  sampler = _sampler()
  sampler.update(0, _losses(0), task_count=sampler.counts(0))
  fb = feedback.MixtureFeedback(_sampler())
  fb.load_state_dict(sampler.state_dict())
  assert fb.observed_through == 0
  np.testing.assert_array_equal(fb.draw(1).counts, sampler.counts(1))


def test_out_of_order_use_is_refused():
  fb = feedback.MixtureFeedback(_sampler())
  counts = fb.draw(0).counts
  fb.draw(1)
  with pytest.raises(RuntimeError, match="step 2 needs the losses of step 0"):
    fb.draw(2)
  with pytest.raises(ValueError, match="step 1 observed after step -1"):
    fb.observe(1, _losses(1), counts)
  with pytest.raises(ValueError, match=r"expected \(3,\)"):
    fb.observe(0, _losses(0)[:2], counts)


def test_task_losses_are_nan_without_tokens():
  np.testing.assert_array_equal(
      feedback.task_losses(np.array([3.0, 0.0]), np.array([2.0, 0.0])), [1.5, np.nan])


def test_the_training_loop_hands_samplers_what_they_declare(monkeypatch):
  from dynpt.train import config, session

  sizes = {"a": 10, "b": 20, "c": 30}
  counted = []

  def dataset_size(task, split, data_dir):
    counted.append(task)
    return sizes[task]

  monkeypatch.setattr(session.model_setup, "dataset_size", dataset_size)
  data_cfg = config.DataConfig(data_dir="unused")
  build = lambda name, **options: session.build_sampler(
      config.SamplerConfig(name, {"min_per_task": 1, **options}), TASKS, 12, data_cfg, 50)
  # The 12-in-1 samplers score task epochs of the train loss (the loop feeds no
  # validation scores); samplers that need no sizes never have them counted.
  for name in [n for n in mixing.SAMPLERS if mixing.registry.SIGNAL in mixing.needs(n)]:
    sampler = build(name)
    assert sampler.signal == "train_loss" and sampler.task_sizes.tolist() == [10, 20, 30]
  counted.clear()
  assert isinstance(build("uniform"), mixing.UniformSampler) and counted == []
  np.testing.assert_allclose(build("size").shares(0), [1 / 6, 2 / 6, 3 / 6])
  assert build("size", task_sizes=[1, 1, 2]).shares(0).tolist() == [0.25, 0.25, 0.5]
  # UniMax gets the run's length: 50 steps x 12 = 600 examples, one epoch each at most.
  np.testing.assert_allclose(build("unimax").budgets, [10, 20, 30])
  with pytest.raises(ValueError, match="feeds it no validation scores"):
    build("dsg", signal="validation")
