"""The sampler registry: samplers declare their needs and the trainer names none."""

import glob
import os
import re

import numpy as np
import pytest

from dynpt import mixing
from dynpt.mixing import base, registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ["a", "b", "c"]


def test_every_registered_sampler_is_a_sampler_with_known_needs():
  assert {"dynamic", "uniform", "dsg", "doremi", "aioli", "unimax"} <= set(mixing.SAMPLERS)
  for name, cls in mixing.SAMPLERS.items():
    assert issubclass(cls, base.Sampler) and cls.name == name
    assert set(cls.needs) <= set(registry.NEEDS), name


def test_register_refuses_a_reused_name_or_an_unknown_need():
  class Again(mixing.UniformSampler):  # Forgot its own `name`.
    pass

  with pytest.raises(ValueError, match="'uniform' is empty or already registered"):
    registry.register(Again)

  class Odd(mixing.UniformSampler):
    name = "odd_needs"
    needs = ("gpu_count",)

  with pytest.raises(ValueError, match="unknown needs \\['gpu_count'\\]"):
    registry.register(Odd)

  class Deaf(mixing.UniformSampler):
    name = "deaf"
    needs = (registry.SIGNAL,)

  with pytest.raises(ValueError, match="'deaf' needs a signal but lists no SIGNALS"):
    registry.register(Deaf)
  assert "odd_needs" not in mixing.SAMPLERS and "deaf" not in mixing.SAMPLERS


def test_the_run_hands_over_only_what_is_declared_and_options_win():
  counted = []

  def sizes():
    counted.append(1)
    return [10, 20, 70]

  run = mixing.RunFacts(task_sizes=sizes, num_steps=5)
  assert isinstance(mixing.make_sampler("dynamic", TASKS, 12, run=run, window=2),
                    mixing.DynamicSampler)
  assert counted == []  # Nobody needed the sizes, so the data was never counted.
  np.testing.assert_allclose(mixing.make_sampler("size", TASKS, 100, run=run).shares(0),
                             [0.1, 0.2, 0.7])
  given = mixing.make_sampler("size", TASKS, 100, run=run, task_sizes=[1, 1, 2])
  np.testing.assert_allclose(given.shares(0), [0.25, 0.25, 0.5])
  assert counted == [1]
  # 5 steps x 12 = 60 examples: 10 of a (capped at one epoch), then 20 and 30.
  np.testing.assert_allclose(mixing.make_sampler("unimax", TASKS, 12, run=run).budgets,
                             [10, 20, 30])


def test_signal_is_one_the_run_feeds():
  run = mixing.RunFacts(task_sizes=lambda: [10, 20, 30])
  assert mixing.make_sampler("dsg", TASKS, 12, run=run).signal == "train_loss"
  with pytest.raises(ValueError, match="signal='validation', but the run feeds it no "
                                       "validation scores"):
    mixing.make_sampler("curriculum", TASKS, 12, run=run, signal="validation")
  # A caller that also feeds validation scores keeps the sampler's own default.
  both = mixing.RunFacts(task_sizes=lambda: [10, 20, 30],
                         signals=(registry.TRAIN_LOSS, registry.VALIDATION))
  assert mixing.make_sampler("dsg", TASKS, 12, run=both).signal == "validation"
  # Without a run, the sampler's defaults stand.
  assert mixing.make_sampler("dsg", TASKS, 12).signal == "validation"


def test_a_required_need_nobody_gave_is_one_error_naming_it():
  with pytest.raises(ValueError, match="sampler 'size' needs task_sizes="):
    mixing.make_sampler("size", TASKS, 12)
  with pytest.raises(ValueError, match="sampler 'doremi' needs reference_run_dir="):
    mixing.make_sampler("doremi", TASKS, 12, run=mixing.RunFacts(num_steps=3))
  with pytest.raises(ValueError, match="unknown sampler 'nope'"):
    mixing.make_sampler("nope", TASKS, 12)


def test_the_trainer_names_no_sampler():
  names = set(mixing.SAMPLERS)
  quoted = re.compile(r"""["']([a-z_]+)["']""")
  for path in glob.glob(os.path.join(REPO, "dynpt", "train", "*.py")):
    with open(path) as f:
      text = f.read()
    found = names & set(quoted.findall(text))
    assert not found, f"{os.path.relpath(path, REPO)} names samplers {sorted(found)}"
    assert "STOP_AND_GO" not in text, path
