"""Teacher-forced evaluation of a run on every task of its mixture.

Reports each task's mean token cross-entropy and token accuracy on a split
(by default the pretraining sources' `validation` split), the numbers the
dynamic sampler reasons about. Generation metrics for downstream tasks live
in `dynpt.downstream.decode_score`.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jax
import numpy as np
from absl import logging

from dynpt import fs
from dynpt.train import checkpoints, model_setup
from dynpt.train import step as step_lib
from dynpt.train.config import DataConfig, ModelConfig, TrainConfig


def evaluate(run_dir: str = "runs/default", data_cfg: DataConfig = DataConfig(),
             model_cfg: ModelConfig = ModelConfig(), split: str = "validation",
             examples_per_task: int = 64, batch_size: int = 32,
             step: int | None = None, params: Any = None,
             train_cfg: TrainConfig = TrainConfig()) -> dict[str, Any]:
  """Per-task loss/accuracy; writes `<run_dir>/eval_<split>.json`.

  The params are placed and the eval step traced as the run's train step
  (`train_cfg.partition_mode` on `num_model_partitions`), so a model that
  needed fsdp or model parallelism to train is evaluated the same way.
  """
  task_names = model_setup.resolve_task_names(data_cfg.mixture)
  run_model = model_setup.build_run_model(model_cfg, data_cfg, train_cfg)
  if params is None:
    params, step = checkpoints.restore_params(run_dir, step)
  params = run_model.place(params)
  eval_fn = run_model.jit(functools.partial(
      step_lib.eval_step, model=run_model.model, num_tasks=len(task_names)))
  results = {}
  for task_id, name in enumerate(task_names):
    it = run_model.eval_iterator(name, task_id=task_id, split=split)
    loss_sum = tokens = correct = 0.0
    remaining = examples_per_task
    while remaining > 0:
      n = min(batch_size, remaining)
      m = jax.device_get(eval_fn(params, it.take(n)))
      loss_sum += float(m["task_loss_sum"][task_id])
      tokens += float(m["task_tokens"][task_id])
      correct += float(m["task_correct"][task_id])
      remaining -= n
    results[name] = {"loss": loss_sum / max(tokens, 1.0),
                     "token_accuracy": correct / max(tokens, 1.0),
                     "examples": examples_per_task}
    logging.info("eval %s/%s: loss %.4f token acc %.4f", name, split,
                 results[name]["loss"], results[name]["token_accuracy"])
  out = {"step": step, "split": split, "tasks": results,
         "mean_loss": float(np.mean([r["loss"] for r in results.values()]))}
  fs.write_text(fs.join(run_dir, f"eval_{split}.json"), json.dumps(out, indent=1))
  return out
