"""Partitioning rules, optimizer schedule, the trainer's history writer, position re-split."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynpt.mixing import history
from dynpt.train import batching, optim, partitioning


def test_logical_axis_rules_modes():
  dp = dict(partitioning.logical_axis_rules("data_parallel"))
  assert dp["batch"] == "data" and dp["embed"] is None and dp["mlp"] is None
  fsdp = dict(partitioning.logical_axis_rules("fsdp"))
  assert fsdp["embed"] == "data"
  mp = dict(partitioning.logical_axis_rules("model_parallel"))
  assert mp["mlp"] == "model" and mp["heads"] == "model" and mp["embed"] is None
  with pytest.raises(ValueError, match="zero"):
    partitioning.logical_axis_rules("zero")


def test_create_mesh_checks_divisibility():
  mesh = partitioning.create_mesh(1)
  assert mesh.axis_names == ("data", "model")
  with pytest.raises(ValueError, match="num_model_partitions"):
    partitioning.create_mesh(3, devices=[object()] * 4)


def test_traced_under_rules_keeps_the_function_name_for_jit():
  def eval_step(x, scale):
    return x * scale

  mesh = partitioning.create_mesh(1)
  plain = jax.jit(partitioning.traced_under_rules(eval_step, mesh, "data_parallel"))
  bound = jax.jit(partitioning.traced_under_rules(functools.partial(eval_step, scale=2.0),
                                                  mesh, "data_parallel"))
  assert plain.lower(jnp.ones(2), 1.0).as_text().startswith("module @jit_eval_step ")
  assert bound.lower(jnp.ones(2)).as_text().startswith("module @jit_eval_step ")


def test_schedule_warmup_then_cosine():
  cfg = optim.OptimizerConfig(learning_rate=1e-3, warmup_steps=10, total_steps=100)
  lr = optim.learning_rate_schedule(cfg)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(5)), 5e-4, rtol=1e-5)
  np.testing.assert_allclose(float(lr(10)), 1e-3, rtol=1e-5)
  assert float(lr(55)) < 1e-3 and float(lr(99)) < float(lr(55))
  with pytest.raises(ValueError, match="learning_rate"):
    optim.make_optimizer(optim.OptimizerConfig(learning_rate=0.0))


def test_history_truncates_on_resume(tmp_path):
  path = str(tmp_path / "h.jsonl")
  h = history.MixtureHistory(path, ["a", "b"])
  h.truncate_after(0)
  for s in range(5):
    h.write(s, [0.5, 0.5], [2, 2], [1.0, float("nan")])
  h.close()
  with open(path, "a") as f:
    f.write('{"step": 5, "sha')  # Cut by a kill mid-write.
  h2 = history.MixtureHistory(path, ["a", "b"])
  h2.truncate_after(3)
  h2.close()
  lines = [json.loads(l) for l in open(path)]
  assert [l["step"] for l in lines] == [0, 1, 2]
  assert lines[0]["task_loss"] == {"a": 1.0, "b": None}
  assert lines[0]["counts"] == {"a": 2, "b": 2}


def test_resplit_positions():
  assert batching.resplit_positions(None, ["a"], 2) == {"a": [0, 0]}
  same = batching.resplit_positions({"a": [3, 4]}, ["a"], 2)
  assert same == {"a": [3, 4]}
  assert batching.resplit_positions({"a": [3, 4]}, ["a", "b"], 1) == {"a": [7], "b": [0]}
  assert batching.resplit_positions({"a": [7]}, ["a"], 2) == {"a": [4, 4]}


def test_nan_loss_stops_the_run_with_a_clear_error():
  from dynpt.train import feedback, hooks, loop

  draw = feedback.Draw(1, np.array([2, 2]), np.array([0.5, 0.5]), np.ones(2, np.float32))
  good = {"loss": np.float32(1.0), "task_loss_sum": np.array([4.0, 2.0]),
          "task_tokens": np.array([4.0, 0.0])}
  np.testing.assert_array_equal(hooks.StepResult(0, draw, good).task_loss(), [1.0, np.nan])
  bad = hooks.StepResult(1, draw, dict(good, loss=np.float32(np.nan)))
  with pytest.raises(loop.TrainingDivergedError, match="loss is nan at step 1"):
    bad.host()
