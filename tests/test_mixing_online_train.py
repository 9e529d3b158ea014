"""The online mixers drive the real trainer: a few tiny toy steps each."""
import json
import os

import pytest

from dynpt import mixing
from dynpt.train import loop, optim
from dynpt.train.config import DataConfig, ModelConfig, SamplerConfig, TrainConfig

TASKS = "cc3m_cap,cc12m_itm,ln_mlm,oi_list_objects,vg_exists,in21k_which_exist"
BATCH = 12
STEPS = 3


def _train(run_dir, data_dir, name, options):
  return loop.train(
      train_cfg=TrainConfig(run_dir=str(run_dir), num_steps=STEPS, global_batch_size=BATCH,
                            checkpoint_every=1000, log_every=STEPS, progress_bar=False),
      data_cfg=DataConfig(mixture=TASKS, data_dir=data_dir, image_size=32, target_length=16),
      sampler_cfg=SamplerConfig(name, options),
      optimizer_cfg=optim.OptimizerConfig(learning_rate=3e-3, warmup_steps=1,
                                          total_steps=STEPS),
      model_cfg=ModelConfig("tiny"))


def _history(run_dir):
  with open(os.path.join(run_dir, "mixture_history.jsonl")) as f:
    return [json.loads(line) for line in f]


def _check(run_dir, summary):
  assert summary["end_step"] == STEPS and summary["compilations"] == 1
  hist = _history(run_dir)
  assert [h["step"] for h in hist] == list(range(STEPS))
  for h in hist:
    assert sum(h["counts"].values()) == BATCH
    # The history line is the batch that ran: a task has a loss iff it had examples.
    assert {t for t, n in h["counts"].items() if n} == \
        {t for t, v in h["task_loss"].items() if v is not None}, h
  return hist


@pytest.fixture(scope="module")
def softmax_run(toy_data_dir, tmp_path_factory):
  """A softmax run with a mixture that moves every step and no floor; DoReMi's reference."""
  run_dir = str(tmp_path_factory.mktemp("softmax"))
  summary = _train(run_dir, toy_data_dir, "softmax",
                   {"window": 1, "temperature": 0.05, "min_per_task": 0})
  return run_dir, summary


def test_softmax_trains_with_a_mixture_that_moves_every_step(softmax_run):
  hist = _check(*softmax_run)
  assert len({tuple(h["counts"].values()) for h in hist}) > 1, "the mixture never moved"


@pytest.mark.parametrize("name,options", [
    ("odm", {"seed": 1, "min_per_task": 1}),
    ("doremi", {"eta": 5.0, "window": 1, "min_per_task": 1}),
    ("ado", {"window": 1, "ignore_windows": 0, "min_per_task": 1}),
    ("aioli", {"round_steps": 7, "probe_steps": 1, "one_hot_factor": 0.5, "seed": 2,
               "min_per_task": 1}),
])
def test_online_sampler_trains(name, options, softmax_run, toy_data_dir, tmp_path):
  if name == "doremi":
    # The trainer hands DoReMi the run's num_steps (its declared need).
    options = {**options, "reference_run_dir": softmax_run[0]}
  hist = _check(str(tmp_path), _train(tmp_path, toy_data_dir, name, options))
  assert all(min(h["counts"].values()) >= 1 for h in hist)
  if name == "odm":  # EXP3 draws the rows above the floor: they differ step to step.
    assert len({tuple(h["counts"].values()) for h in hist}) > 1
  if name == "aioli":  # The probe steps are the run's own steps: one task up-weighted each.
    probes = mixing.make_sampler(name, TASKS.split(","), BATCH, **options)
    for h in hist:
      probed = TASKS.split(",")[probes.probe_task(h["step"])]
      others = [n for t, n in h["counts"].items() if t != probed]
      assert h["counts"][probed] == BATCH // 2 and max(others) <= 2, h  # epsilon = 0.5.
