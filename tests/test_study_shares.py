"""The report's task-group shares (dynpt.study.shares), on hand-written histories."""

import json
import os

import pytest

from dynpt.mixing import history
from dynpt.study import grid, plan, shares, store


def _record(step, shares_by_task):
  return {"step": step, "shares": shares_by_task,
          "counts": {t: 1 for t in shares_by_task},
          "task_loss": {t: 1.0 for t in shares_by_task}}


def test_group_share_averages_the_groups_summed_share_from_a_step():
  records = [_record(0, {"a": 0.5, "b": 0.3, "c": 0.2}),
             _record(10, {"a": 0.2, "b": 0.2, "c": 0.6}),
             _record(20, {"a": 0.1, "b": 0.1, "c": 0.8})]
  assert shares.group_share(records, ["c"]) == pytest.approx((0.2 + 0.6 + 0.8) / 3)
  assert shares.group_share(records, ["b", "c"], from_step=10) == pytest.approx(0.85)
  assert shares.group_share(records, ["a"], from_step=15) == pytest.approx(0.1)
  with pytest.raises(ValueError, match=r"step >= 30 \(last: 20\)"):
    shares.group_share(records, ["a"], from_step=30)
  with pytest.raises(ValueError, match="task.s. zz not in the mixture"):
    shares.group_share(records, ["a", "zz"])


def _finished_cell(out_dir, sampler, seed, records):
  name = plan.pretrained_name(sampler, "mix", seed)
  run_dir = os.path.join(out_dir, "cells", name, "pretrain")
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, history.HISTORY_FILENAME), "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  store.mark_done(out_dir, name, {"pretrain_run_dir": run_dir, "rows": []})


def test_share_lines_give_each_sampler_per_seed_and_mean(tmp_path):
  out = str(tmp_path)
  cfg = grid.StudyConfig(samplers=("uniform", "dynamic"), mixture="mix", seeds=(1, 2),
                         downstream=("vqav2",), share_groups={"hard": ("h",)},
                         share_from_step=10)
  flat = {"e": 0.75, "h": 0.25}
  _finished_cell(out, "uniform", 1, [_record(0, flat), _record(10, flat)])
  _finished_cell(out, "uniform", 2, [_record(0, flat), _record(10, flat)])
  _finished_cell(out, "dynamic", 1, [_record(0, flat), _record(10, {"e": 0.5, "h": 0.5}),
                                     _record(20, {"e": 0.3, "h": 0.7})])
  lines = shares.share_lines(cfg, out)
  text = "\n".join(lines)
  assert "## Task-group shares" in text and "from step 10 on" in text
  assert "| `uniform` | hard | s1: 25.0, s2: 25.0 | 25.0 ± 0.0 (n=2) |" in lines
  # Seed 2 of dynamic has not finished: one seed, no spread.
  assert "| `dynamic` | hard | s1: 60.0 | 60.0 ± – (n=1) |" in lines
  assert shares.share_lines(grid.StudyConfig(downstream=("vqav2",)), out) == []


def test_share_groups_are_checked_with_the_config():
  with pytest.raises(ValueError, match="share_groups\\['hard'\\]: expected a tuple"):
    grid.StudyConfig(downstream=("vqav2",), share_groups={"hard": "h"})
  with pytest.raises(ValueError, match="share_from_step=-1"):
    grid.StudyConfig(downstream=("vqav2",), share_from_step=-1)
