"""End to end on the tiny toy world: divergence and a corrupt checkpoint mid-run."""
import json
import os

import jax
import numpy as np
import pytest
import tensorflow as tf

from dynpt.train import checkpoints, loop, optim
from dynpt.train.config import DataConfig, ModelConfig, SamplerConfig, TrainConfig

TASKS = "cc3m_cap,ln_mlm"


def _cfgs(run_dir, data_dir, num_steps, learning_rate=3e-3, **train_kw):
  train_kw.setdefault("checkpoint_every", 2)
  return dict(
      train_cfg=TrainConfig(run_dir=str(run_dir), num_steps=num_steps,
                            global_batch_size=4, log_every=1, keep_checkpoints=5,
                            progress_bar=False, **train_kw),
      data_cfg=DataConfig(mixture=TASKS, data_dir=data_dir, image_size=32,
                          target_length=16),
      sampler_cfg=SamplerConfig("uniform", {"min_per_task": 1}),
      optimizer_cfg=optim.OptimizerConfig(learning_rate=learning_rate,
                                          warmup_steps=1, total_steps=num_steps),
      model_cfg=ModelConfig("tiny"))


def _history(run_dir):
  with open(os.path.join(run_dir, "mixture_history.jsonl")) as f:
    return [json.loads(line) for line in f]


def _summaries(log_dir):
  """{tag: [steps]} of every scalar summary under `log_dir`."""
  from tensorflow.core.util import event_pb2

  out = {}
  for name in os.listdir(log_dir):
    for raw in tf.data.TFRecordDataset(os.path.join(log_dir, name)):
      event = event_pb2.Event.FromString(raw.numpy())
      for value in event.summary.value:
        out.setdefault(value.tag, []).append(event.step)
  return out


def test_nan_never_reaches_a_checkpoint_and_a_restart_is_not_silent(
    toy_data_dir, tmp_path):
  cfgs = _cfgs(tmp_path, toy_data_dir, 6, learning_rate=1e9, checkpoint_every=1)
  with pytest.raises(loop.TrainingDivergedError) as err:
    loop.train(**cfgs)
  steps = checkpoints.Checkpointer(str(tmp_path)).all_steps()
  assert steps and max(steps) < 6
  assert f"The newest checkpoint, step {max(steps)} " in str(err.value)
  for step in steps:  # Each kept checkpoint restores with finite params.
    checkpoints.restore_params(str(tmp_path), step)
  with pytest.raises(loop.TrainingDivergedError, match=f"step {max(steps)}"):
    loop.train(**cfgs)


def test_a_corrupt_latest_checkpoint_resumes_exactly_from_the_previous(
    toy_data_dir, tmp_path, monkeypatch):
  first = loop.train(**_cfgs(tmp_path, toy_data_dir, 4))
  assert first["end_step"] == 4
  before = _history(str(tmp_path))
  # Out of memory while restoring is no damage: the run stops naming it, the
  # good newest checkpoint stays, nothing older is resumed, the history is whole.
  def out_of_memory(self, step, *args):
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while "
                                     "trying to allocate 2.00GiB")

  monkeypatch.setattr(checkpoints.Checkpointer, "restore", out_of_memory)
  with pytest.raises(checkpoints.CheckpointRestoreError,
                     match="step 4 .*RESOURCE_EXHAUSTED.*nothing was moved"):
    loop.train(**_cfgs(tmp_path, toy_data_dir, 4))
  monkeypatch.undo()
  assert checkpoints.Checkpointer(str(tmp_path)).all_steps() == [2, 4]
  assert not (tmp_path / checkpoints.CORRUPT_DIR).exists()
  assert _history(str(tmp_path)) == before
  # The newest checkpoint is damaged (a truncated mixer item), as a crash
  # of the storage could leave it; training got past it before the "crash".
  with open(tmp_path / "checkpoints" / "4" / "mixer" / "metadata", "r+b") as f:
    f.truncate(10)
  resumed = loop.train(**_cfgs(tmp_path, toy_data_dir, 4))
  assert resumed["start_step"] == 2 and resumed["end_step"] == 4
  assert (tmp_path / checkpoints.CORRUPT_DIR / "4" / "mixer").is_dir()
  after = _history(str(tmp_path))
  assert [h["step"] for h in after] == [0, 1, 2, 3]
  for a, b in zip(before, after):  # Steps 2-3 replayed bitwise.
    assert a["counts"] == b["counts"] and a["task_loss"] == b["task_loss"]
  # TensorBoard has each step once, and the per-task skip counts.
  summaries = _summaries(str(tmp_path / "tensorboard"))
  assert sorted(summaries["train/loss"]) == [1, 2, 3, 4]
  for task in TASKS.split(","):
    assert sorted(summaries[f"train/task/{task}/skipped_records"]) == [1, 2, 3, 4]
  assert resumed["skipped_records_by_task"] == {t: 0 for t in TASKS.split(",")}
  assert np.isfinite(resumed["final_task_loss"]["cc3m_cap"])
