"""Keeping the best params of a finetuning run by its downstream metric.

Called by finetuning's evaluation hook: every task is decoded and scored
(`decode_score.evaluate_task`), their primary metrics are averaged, and when the
mean improves the params go to `<run_dir>/best/params` with `best.json` (which a
resumed run reads back, so "best" survives a restart).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
from absl import logging

from dynpt import fs
from dynpt.downstream import decode_score
from dynpt.train import checkpoints, model_setup


class BestKeeper:
  """Evaluates every task; saves params to `run_dir/best` when the mean improves."""

  def __init__(self, task_names, run_model: model_setup.RunModel,
               eval_cfg: decode_score.EvalConfig, run_dir: str):
    self.task_names, self.run_model = task_names, run_model
    self.eval_cfg, self.run_dir = eval_cfg, run_dir
    self.best_path = fs.join(run_dir, "best.json")
    self.best = None
    if fs.exists(self.best_path):
      self.best = json.loads(fs.read_text(self.best_path))["score"]
    self.last: dict[str, Any] = {}

  def __call__(self, step: int, params) -> dict[str, float]:
    scalars, per_task = {}, {}
    for name in self.task_names:
      res = decode_score.evaluate_task(
          name, params, self.run_model, eval_cfg=self.eval_cfg,
          out_dir=fs.join(self.run_dir, "eval", str(step)), step=step)
      per_task[name] = res
      for k, v in res.items():
        scalars[f"eval/{name}/{k}"] = v
    score = float(np.mean([decode_score.primary_metric(r) for r in per_task.values()]))
    scalars["eval/score"] = score
    self.last = {"step": step, "score": score, "tasks": per_task}
    if jax.process_index() == 0 and (self.best is None or score > self.best):
      self.best = score
      checkpoints.save_params(fs.join(self.run_dir, "best", "params"),
                              jax.device_get(params))
      fs.write_text(self.best_path, json.dumps(self.last, indent=1))
      logging.info("new best %.3f at step %d", score, step)
    return scalars
