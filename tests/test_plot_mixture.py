"""Tests for the mixture history file and tools/plot_mixture.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dynpt import mixing
from dynpt.mixing import plot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ["cc3m", "cc12m", "ln", "oi", "in21k", "vg"]
KINDS = {"cc3m": ["cap", "cmp", "itm", "mlm"], "cc12m": ["cap", "cmp", "itm", "mlm"],
         "ln": ["cap", "cmp", "itm", "mlm"],
         "oi": ["list_objects", "exists", "multi_exists", "which_exist"],
         "in21k": ["list_objects", "exists", "multi_exists", "which_exist"],
         "vg": ["list_objects", "exists", "multi_exists", "which_exist"]}
TASKS = [f"{s}_{k}" for s in SOURCES for k in KINDS[s]]


def _write_history(run_dir, steps=30, corrupt=True):
  sampler = mixing.make_sampler("dynamic", TASKS, 256, window=5)
  rng = np.random.default_rng(0)
  path = mixing.history_path(run_dir)
  history = mixing.MixtureHistory(path, TASKS)  # The trainer's writer.
  for step in range(steps):
    loss = rng.uniform(0.5, 4.0, len(TASKS)) * (1.0 + np.arange(len(TASKS)) / 24)
    counts, shares = sampler.counts(step), sampler.shares(step)
    sampler.update(step, loss)
    if step == 3:
      loss[0] = np.nan  # Written as null, read back as NaN.
    history.write(step, shares, counts, loss)
    if corrupt and step == 10:
      with open(path, "a") as f:
        f.write('{"step": 11, "shares": \n')
  history.close()
  return path


def test_history_round_trip_skips_corrupt_lines(tmp_path):
  path = _write_history(str(tmp_path))
  records, skipped = mixing.read_history(path)
  assert skipped == 1 and len(records) == 30
  assert np.isnan(records[3]["task_loss"][TASKS[0]])
  assert sum(records[0]["counts"].values()) == 256
  assert abs(sum(records[-1]["shares"].values()) - 1) < 1e-9
  with open(path) as f:
    first = json.loads(f.readline())
  assert set(first) == {"step", "shares", "counts", "task_loss"}


def test_history_errors_name_the_file(tmp_path):
  missing = str(tmp_path / "nothing.jsonl")
  with pytest.raises(ValueError, match="nothing.jsonl does not exist"):
    mixing.read_history(missing)
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(ValueError, match="empty.jsonl is empty"):
    mixing.read_history(str(empty))
  junk = tmp_path / "junk.jsonl"
  junk.write_text("not json\n[1, 2]\n")
  with pytest.raises(ValueError, match="junk.jsonl has no valid line \\(2 corrupt\\)"):
    mixing.read_history(str(junk))


def test_styles_group_by_kind_and_source():
  styles = plot.task_styles(TASKS)
  assert styles["cc3m_cap"]["color"] == styles["ln_cap"]["color"]
  assert styles["cc3m_cap"]["color"] != styles["cc3m_mlm"]["color"]
  assert styles["cc3m_cap"]["linestyle"] == styles["cc3m_mlm"]["linestyle"]
  assert styles["cc3m_cap"]["linestyle"] != styles["ln_cap"]["linestyle"]
  assert plot.split_task_name("oi_list_objects") == ("oi", "list_objects")


def test_tool_writes_png(tmp_path):
  run_dir = str(tmp_path)
  _write_history(run_dir)
  proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "plot_mixture.py"),
                         run_dir], capture_output=True, text=True, timeout=120, cwd=REPO)
  assert proc.returncode == 0, proc.stderr
  assert "1 corrupt lines skipped" in proc.stdout
  png = os.path.join(run_dir, "mixture.png")
  with open(png, "rb") as f:
    data = f.read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_tool_reports_missing_history(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "plot_mixture.py"),
                         str(tmp_path), f"--out={tmp_path}/x.png"],
                        capture_output=True, text=True, timeout=120, cwd=REPO)
  assert proc.returncode != 0
  assert "mixture_history.jsonl does not exist" in proc.stderr


def test_bucket_mean_downsamples_and_ignores_nan():
  steps = np.arange(10)
  values = np.array([1, 3, np.nan, np.nan, 5, 7, 0, 2, 4, 6], float)
  x, y = plot.bucket_mean(steps, values, 5)
  np.testing.assert_allclose(x, [0.5, 2.5, 4.5, 6.5, 8.5])
  np.testing.assert_allclose(y, [2, np.nan, 6, 1, 5])
  x, y = plot.bucket_mean(steps, values, 20)
  assert x is steps and y is values
