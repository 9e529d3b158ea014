"""The study runner (tools/study.py, dynpt.study): grid, shards, statistics, report, end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys

import gin
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats as scipy_stats

from dynpt.study import grid, plan, pretrain_loss, report, runner, stats, store, world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE4 = ("easiest", "hardest", "uniform", "size", "loss_reweight", "dsg", "dynamic",
          "odm", "doremi", "ado", "softmax")


def _config(**kw) -> grid.StudyConfig:
  base = dict(samplers=TABLE4, mixture="dynpt_24", sweep_samplers=("uniform", "dynamic"),
              sweep_mixtures=("dynpt_4", "dynpt_8"), seeds=(0, 1, 2),
              downstream=("vqav2", "gqa"))
  return grid.StudyConfig(**{**base, **kw})


# ---------------------------------------------------------------- statistics

_values = st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=8)


@given(_values, st.floats(-50, 50))
@settings(max_examples=50, deadline=None)
def test_paired_difference_shift_and_sign(values, shift):
  a = dict(enumerate(values))
  b = {s: v - shift for s, v in a.items()}
  d = stats.paired_difference(a, b)
  assert d.n == len(values)
  assert d.mean == pytest.approx(shift, abs=1e-6)
  assert d.low <= d.mean + 1e-9 <= d.high + 2e-9
  swapped = stats.paired_difference(b, a)
  assert swapped.mean == pytest.approx(-d.mean, abs=1e-9)
  assert swapped.low == pytest.approx(-d.high, abs=1e-6)


@given(_values, _values)
@settings(max_examples=50, deadline=None)
def test_paired_difference_matches_scipy_ttest(a_vals, b_vals):
  n = min(len(a_vals), len(b_vals))
  a, b = dict(enumerate(a_vals[:n])), dict(enumerate(b_vals[:n]))
  d = stats.paired_difference(a, b)
  diffs = np.asarray(a_vals[:n]) - np.asarray(b_vals[:n])
  if np.std(diffs) < 1e-9:
    assert d.high - d.low == pytest.approx(0.0, abs=1e-6)
    return
  low, high = scipy_stats.t.interval(0.95, n - 1, loc=diffs.mean(),
                                     scale=scipy_stats.sem(diffs))
  assert (d.low, d.high) == pytest.approx((low, high), rel=1e-6, abs=1e-6)
  # The interval excludes 0 exactly when the paired t-test rejects at 5%.
  p = scipy_stats.ttest_rel(a_vals[:n], b_vals[:n]).pvalue
  if abs(p - 0.05) > 1e-6:
    assert (d.low > 0 or d.high < 0) == (p < 0.05)


def test_paired_difference_pairs_by_seed_and_handles_few_seeds():
  d = stats.paired_difference({0: 10.0, 1: 12.0, 5: 99.0}, {0: 9.0, 1: 10.0, 7: 0.0})
  assert (d.n, d.mean) == (2, 1.5)
  one = stats.paired_difference({0: 3.0}, {0: 1.0})
  assert one.mean == 2.0 and math.isnan(one.low) and one.verdict.startswith("undetermined")
  assert stats.paired_difference({}, {0: 1.0}).verdict.startswith("missing")
  assert stats.paired_difference({0: 5.0, 1: 6.0, 2: 7.0},
                                 {0: 1.0, 1: 1.5, 2: 2.2}).verdict == "better"


@given(_values)
@settings(max_examples=30, deadline=None)
def test_summarize_and_pearson(values):
  s = stats.summarize(values)
  assert s.mean == pytest.approx(float(np.mean(values)))
  assert s.std == pytest.approx(float(np.std(values, ddof=1)), abs=1e-9)
  if len(values) >= 3 and np.ptp(values) > 1e-6:
    y = [2 * v + 1 for v in values]
    assert stats.pearson(values, y) == pytest.approx(1.0, abs=1e-9)
    assert stats.pearson(values, [-v for v in y]) == pytest.approx(-1.0, abs=1e-9)
  assert math.isnan(stats.summarize(values[:1]).std)


def test_training_loss_weights_by_count_and_falls_back_for_starved_tasks():
  recs = [{"step": s, "counts": {"a": 2, "b": 1}, "task_loss": {"a": 4.0, "b": 8.0}}
          for s in range(8)]
  recs += [{"step": 8, "counts": {"a": 1, "b": 0}, "task_loss": {"a": 1.0, "b": None}},
           {"step": 9, "counts": {"a": 3, "b": 0}, "task_loss": {"a": 3.0, "b": None}}]
  mean, per_task = pretrain_loss.training_loss(recs, fraction=0.2)
  assert per_task == {"a": 2.5, "b": 8.0}  # (1*1 + 3*3) / 4; b starved: its last loss.
  assert mean == 5.25
  with pytest.raises(ValueError, match="no mixture history"):
    pretrain_loss.training_loss([])


# ---------------------------------------------------------------- grid

def test_grid_has_table4_table5_scratch_and_orders_references():
  cfg = _config()
  cells = plan.expand(cfg)
  names = [c.name for c in cells]
  assert len(names) == len(set(names))
  pretrained = [c for c in cells if c.init == "pretrained"]
  # 11 Table-4 samplers + uniform/dynamic on 2 more mixtures, 3 seeds each.
  assert len(pretrained) == (11 + 4) * 3
  assert len([c for c in cells if c.init == "scratch"]) == 2 * 3
  for cell in cells:
    if cell.sampler == "doremi":
      ref = next(c for c in cells if c.name == cell.reference)
      assert (ref.sampler, ref.mixture) == ("uniform", cell.mixture)
      assert ref.seed != cell.seed  # A same-seed reference leaves DoReMi at uniform.
      assert names.index(ref.name) < names.index(cell.name)
  one_seed = plan.expand(_config(seeds=(4,)))
  refs = [c for c in one_seed if c.name == "uniform-dynpt_24-s5"]
  assert len(refs) == 1 and refs[0].tasks == ()  # Reference only: no finetuning.


def test_sweep_seeds_run_table5_mixtures_on_the_first_seeds_only():
  cells = plan.expand(_config(sweep_seeds=1, sweep_samplers=("uniform", "doremi")))
  seeds = lambda s, m: sorted(c.seed for c in cells  # noqa: E731
                              if (c.sampler, c.mixture) == (s, m) and c.tasks)
  assert seeds("uniform", "dynpt_4") == seeds("doremi", "dynpt_8") == [0]
  assert seeds("uniform", "dynpt_24") == seeds("doremi", "dynpt_24") == [0, 1, 2]
  # The one-seed sweep's DoReMi reads a reference-only uniform run of the next seed.
  doremi = next(c for c in cells if c.name == "doremi-dynpt_8-s0")
  ref = next(c for c in cells if c.name == doremi.reference)
  assert (ref.sampler, ref.mixture, ref.seed, ref.tasks) == ("uniform", "dynpt_8", 1, ())
  assert len(plan.expand(_config(sweep_seeds=5))) == len(plan.expand(_config()))
  with pytest.raises(ValueError, match="sweep_seeds=0"):
    _config(sweep_seeds=0)


@given(st.integers(1, 9))
@settings(max_examples=9, deadline=None)
def test_shards_cover_each_cell_once_and_keep_references_together(count):
  cells = plan.expand(_config())
  shards = [plan.shard(cells, i, count) for i in range(count)]
  names = [c.name for s in shards for c in s]
  assert sorted(names) == sorted(c.name for c in cells)
  for s in shards:
    mine = {c.name for c in s}
    assert all(c.reference is None or c.reference in mine for c in s)
    assert [c.name for c in s] == [c.name for c in cells if c.name in mine]  # grid order


def test_select_adds_references():
  cells = plan.expand(_config())
  picked = [c.name for c in plan.select(cells, ["doremi-dynpt_24-s2", "scratch-gqa-s0"])]
  assert picked == ["uniform-dynpt_24-s0", "scratch-gqa-s0", "doremi-dynpt_24-s2"]
  with pytest.raises(ValueError, match="--cell=nope"):
    plan.select(cells, ["nope"])


@pytest.mark.parametrize("text", ["3/2", "2/2", "-1/2", "1", "a/b", "0/0", "1/2/3"])
def test_parse_shard_rejects(text):
  with pytest.raises(ValueError, match="--shard"):
    plan.parse_shard(text)


def test_config_validation_and_quick():
  with pytest.raises(ValueError, match="seeds"):
    _config(seeds=(1, 1))
  with pytest.raises(ValueError, match="sampler_options names"):
    _config(sampler_options={"temperature": {}})
  quick = _config(pretrain_steps=100, finetune_steps=10, quick_downstream=1,
                  quick_sweep_mixtures=0).quick()
  assert (quick.seeds, quick.pretrain_steps, quick.finetune_steps) == ((0,), 25, 2)
  assert (quick.downstream, quick.sweep_mixtures) == (("vqav2",), ())


def test_cell_spec_bindings_parse_in_gin():
  cfg = _config(sampler_options={"doremi": {"eta": 1.0}, "odm": {"min_per_task": 1}},
                common_bindings={"IMAGE_SIZE": 32, "config.ModelConfig.name": "tiny"})
  cells = {c.name: c for c in plan.expand(cfg)}
  spec = runner.cell_spec(cfg, cells["doremi-dynpt_24-s1"], "/tmp/study")
  bindings = spec["pretrain"]["bindings"]
  assert "SAMPLER='doremi'" in bindings and "SEED=1" in bindings
  options = next(b for b in bindings if b.startswith("SAMPLER_OPTIONS="))
  assert "/tmp/study/cells/uniform-dynpt_24-s2/pretrain" in options
  odm = runner.cell_spec(cfg, cells["odm-dynpt_24-s2"], "/tmp/study")
  assert "'seed': 2" in next(b for b in odm["pretrain"]["bindings"]
                             if b.startswith("SAMPLER_OPTIONS="))
  moved = runner.cell_spec(cfg, cells["doremi-dynpt_24-s1"], "/elsewhere/study")
  assert moved["fingerprint"] == spec["fingerprint"]  # Shards copied in still match.
  longer = dataclasses.replace(cfg, pretrain_steps=cfg.pretrain_steps + 1)
  assert runner.cell_spec(longer, cells["doremi-dynpt_24-s1"],
                          "/tmp/study")["fingerprint"] != spec["fingerprint"]
  from dynpt import main as dynpt_main

  dynpt_main.parse_gin([spec["pretrain"]["gin_files"][0]], bindings)
  assert gin.query_parameter("%SAMPLER_OPTIONS")["num_steps"] == cfg.pretrain_steps
  assert gin.query_parameter("%IMAGE_SIZE") == 32
  assert [f["task"] for f in spec["finetune"]] == ["vqav2", "gqa"]


@pytest.mark.parametrize("gin_file", ["study/default.gin", "study/smoke.gin"])
def test_every_configured_sampler_builds_with_the_study_options(gin_file, tmp_path):
  """Each cell's SAMPLER_OPTIONS are accepted at its mixture's size and batch size."""
  from dynpt import main as dynpt_main
  from dynpt import mixing
  from dynpt.data import task_registry

  dynpt_main.parse_gin([gin_file], [])
  cfg = gin.get_configurable(grid.StudyConfig)()
  gin.clear_config()
  ref = tmp_path / "cells" / "uniform-dynpt_24-s1" / "pretrain"
  ref.mkdir(parents=True)
  for cell in plan.expand(cfg):
    if cell.init != "pretrained":
      continue
    tasks = task_registry.mixture_task_names(cell.mixture)
    if cell.reference:  # DoReMi reads its reference's history: a flat one will do.
      ref = tmp_path / "cells" / cell.reference / "pretrain"
      ref.mkdir(parents=True, exist_ok=True)
      with open(ref / "mixture_history.jsonl", "w") as f:
        for step in range(cfg.pretrain_steps):
          f.write(json.dumps({"step": step, "shares": {t: 1 / len(tasks) for t in tasks},
                              "counts": {t: 2 for t in tasks},
                              "task_loss": {t: 3.0 for t in tasks}}) + "\n")
    spec = runner.cell_spec(cfg, cell, str(tmp_path))
    values = dict(b.split("=", 1) for b in spec["pretrain"]["bindings"])
    batch = eval(values["BATCH_SIZE"])  # noqa: S307  (a literal the runner wrote)
    options = eval(values["SAMPLER_OPTIONS"])  # noqa: S307
    # The loop hands over what a sampler needs: sizes counted from the data, its length.
    run = mixing.RunFacts(task_sizes=lambda: [100] * len(tasks),
                          num_steps=cfg.pretrain_steps)
    mixing.make_sampler(cell.sampler, tasks, batch, run=run, **options)


def test_changed_configuration_refuses_done_cells_and_sets_aside_unfinished(tmp_path):
  out = str(tmp_path)
  cfg = _config(samplers=("uniform",), sweep_samplers=(), seeds=(0,), downstream=("vqav2",))
  cell = plan.expand(cfg)[0]
  spec = runner.cell_spec(cfg, cell, out)
  store.write_json_atomic(os.path.join(spec["cell_dir"], "spec.json"), spec)
  store.write_json_atomic(os.path.join(spec["cell_dir"], "stages", "pretrain.json"), {})
  changed = dataclasses.replace(cfg, finetune_steps=cfg.finetune_steps + 1)
  assert runner.stale_cells(changed, [cell], out) == []  # Not done: no refusal.
  runner._set_aside_if_changed(runner.cell_spec(changed, cell, out))
  assert not os.path.exists(spec["cell_dir"])
  (moved,) = os.listdir(os.path.join(out, "stale"))
  assert moved.startswith(cell.name)
  store.mark_done(out, cell.name, {"cell": cell.name, "rows": [],
                                   "fingerprint": spec["fingerprint"]})
  assert runner.stale_cells(cfg, [cell], out) == []
  assert runner.stale_cells(changed, [cell], out) == [cell.name]
  # Another toy-world palette reads another data dir: its cells are never the same.
  simple = dataclasses.replace(cfg, toy_palette="simple")
  assert world.data_dir(simple, out) == os.path.join(out, "data_simple")
  assert world.data_dir(cfg, out) == os.path.join(out, "data")
  assert runner.stale_cells(simple, [cell], out) == [cell.name]
  with pytest.raises(ValueError, match="toy_palette='bright'"):
    _config(toy_palette="bright")


# ---------------------------------------------------------------- report merge

def _fake_cell(out_dir, cell, values, loss=None):
  rows = [{"cell": cell.name, "sampler": cell.sampler, "mixture": cell.mixture,
           "seed": cell.seed, "init": cell.init, "task": t, "metric": "acc",
           "value": values[t], "pretrain_loss": loss,
           "pretrain_steps": 10 if loss is not None else 0, "finetune_steps": 5}
          for t in cell.tasks]
  store.mark_done(out_dir, cell.name, {"cell": cell.name, "rows": rows, "seconds": 1.0,
                                       "pretrain_loss": loss, "pretrain_run_dir": None})


def test_report_merges_existing_cells_and_lists_failures(tmp_path):
  out = str(tmp_path)
  cfg = _config(samplers=("uniform", "dynamic", "odm"), sweep_samplers=(),
                sweep_mixtures=(), seeds=(0, 1, 2), downstream=("vqav2", "gqa"))
  cells = plan.expand(cfg)
  rng = np.random.default_rng(0)
  bonus = {"uniform": 0.0, "dynamic": 5.0, "odm": -0.1, grid.SCRATCH: -20.0}
  for cell in cells:
    if cell.name == "odm-dynpt_24-s2":
      store.mark_failed(out, cell.name, {"returncode": 1, "error": "boom"})
      continue
    base = 50 + cell.seed  # Seeds move every method alike: pairing removes it.
    values = {t: base + bonus[cell.sampler] + rng.normal(0, 0.1) for t in cell.tasks}
    _fake_cell(out, cell, values, None if cell.init == "scratch" else 3.0 - 0.1 * base)
  # Rows appended twice (a shard's copy) are merged to one each.
  store.append_rows(os.path.join(out, store.RESULTS),
                    store.done_cells(out)["uniform-dynpt_24-s0"]["rows"])
  path = report.write_report(cfg, cells, out)
  text = open(path).read()
  with open(os.path.join(out, store.RESULTS)) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 2 * (3 * 3 - 1) + 2 * 3
  assert all(set(store.ROW_KEYS) <= set(r) for r in rows)
  assert "14 of 15 planned cells done; 1 failed" in text
  assert "`odm-dynpt_24-s2`: boom" in text
  assert "Methods that beat uniform: `dynamic`." in text
  assert "does **not** beat" not in text
  assert re.search(r"Dynamic `dynpt_24` pretraining against no pretraining, per task: "
                   r"vqav2 \+25\.0 \[.*\] \(n=3\) \(better\); gqa \+2[45]\.\d", text)
  assert re.search(r"\| ODM \(online data mixing\) \| `odm` \| 50\.\d ± 0\.\d \(n=2\)", text)
  # Paired over seeds 0 and 1: the planted -0.1 plus the rows' noise (sd 0.1).
  assert re.search(r"ODM \(online data mixing\) \| -0\.[12] \[", text)
  assert os.path.exists(os.path.join(out, report.FIGURE1))


# ---------------------------------------------------------------- end to end

def _study(out_dir, *flags, timeout=600):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, "tools", "study.py"),
       "--gin_file=study/smoke.gin", f"--out_dir={out_dir}", "--noprogress", *flags],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_parallel_cells_wait_for_references_and_respect_the_limit(tmp_path, monkeypatch, jobs):
  import threading
  import time

  cfg = _config(seeds=(0, 1), sweep_mixtures=())
  cells = plan.expand(cfg)
  out = str(tmp_path)
  lock, live, peak, started = threading.Lock(), [0], [0], []

  def fake_run_one(cfg_, cell, out_dir, env=None, provenance=None):
    with lock:
      live[0] += 1
      peak[0] = max(peak[0], live[0])
      started.append(cell.name)
    assert cell.reference is None or store.is_done(out_dir, cell.reference), cell.name
    time.sleep(0.01)
    ok = cell.name != "uniform-dynpt_24-s1"  # The reference of doremi-s0 fails.
    if ok:
      store.mark_done(out_dir, cell.name, {"rows": [], "seconds": 0.01})
    with lock:
      live[0] -= 1
    return ok

  monkeypatch.setattr(runner, "run_one", fake_run_one)
  summary = runner.run_cells(cfg, cells, out, progress=False, jobs=jobs)
  assert peak[0] <= jobs and (jobs == 1 or peak[0] > 1)
  assert sorted(summary.failed) == ["doremi-dynpt_24-s0", "uniform-dynpt_24-s1"]
  assert "doremi-dynpt_24-s0" not in started  # Never started: its reference failed.
  assert sorted(summary.ran + summary.failed) == sorted(c.name for c in cells)
  if jobs == 1:  # One job keeps the grid order.
    assert started == [c.name for c in cells if c.name != "doremi-dynpt_24-s0"]
  again = runner.run_cells(cfg, cells, out, progress=False, jobs=jobs)
  assert sorted(again.skipped) == sorted(summary.ran)
  with pytest.raises(ValueError, match="jobs=0"):
    runner.run_cells(cfg, cells, out, progress=False, jobs=0)


def test_bad_shard_flag_is_one_error_line(tmp_path):
  res = _study(str(tmp_path), "--shard=3/2", timeout=120)
  assert res.returncode == 1
  assert res.stderr.strip().splitlines()[-1].startswith("error: --shard=3/2")
  assert "Traceback" not in res.stderr


def test_a_bucket_out_dir_is_one_error_line_and_writes_nothing(tmp_path):
  res = _study("gs://bucket/study", timeout=120)
  assert res.returncode == 1
  assert res.stderr.strip().splitlines()[-1].startswith(
      "error: --out_dir=gs://bucket/study: a study runs in a local folder")
  assert "Traceback" not in res.stderr
  assert not os.path.exists(os.path.join(ROOT, "gs:"))


def test_study_end_to_end_resumes_and_reports(tmp_path):
  out = str(tmp_path / "study")
  # A third sampler whose options the sampler refuses: that cell fails, the rest run.
  bad = ("--gin.grid.StudyConfig.samplers=('uniform', 'dynamic', 'softmax')",
         "--gin.grid.StudyConfig.sampler_options={'uniform': {'min_per_task': 1}, "
         "'dynamic': {'window': 1, 'min_per_task': 1}, 'softmax': {'bogus': 1}}")
  first = _study(out, *bad)
  assert first.returncode == 2, first.stdout + first.stderr
  assert "1 cell(s) failed: softmax-dynpt_4-s0" in first.stderr
  with open(os.path.join(out, store.RESULTS)) as f:
    rows = [json.loads(line) for line in f]
  assert sorted((r["sampler"], r["init"]) for r in rows) == [
      ("dynamic", "pretrained"), ("none", "scratch"), ("uniform", "pretrained")]
  for r in rows:
    assert set(store.ROW_KEYS) <= set(r) and r["task"] == "vqav2"
    assert r["metric"] == "vqa_accuracy" and 0.0 <= r["value"] <= 100.0
    assert r["finetune_steps"] == 2
    assert (r["pretrain_steps"], r["pretrain_loss"] is None) == (
        (0, True) if r["init"] == "scratch" else (2, False))
  text = open(os.path.join(out, report.REPORT)).read()
  assert "`softmax-dynpt_4-s0`:" in text and "bogus" in text
  assert "## Table 4" in text and "## Figure 2" in text
  assert os.path.exists(os.path.join(out, report.FIGURE2))

  # A cell killed after its last stage, before its done marker: the rerun finishes
  # it from the stage markers; no finished cell or stage runs again.
  scratch = store.cell_dir(out, "scratch-vqav2-s0")
  os.remove(os.path.join(scratch, store.DONE))
  done_mtime = os.path.getmtime(os.path.join(store.cell_dir(out, "uniform-dynpt_4-s0"),
                                             store.DONE))
  second = _study(out)  # The smoke config as it is: the failed cell is not in it.
  assert second.returncode == 0, second.stdout + second.stderr
  assert "3 cells, 2 done" in second.stdout
  assert os.path.getmtime(os.path.join(store.cell_dir(out, "uniform-dynpt_4-s0"),
                                       store.DONE)) == done_mtime
  assert "finetune_vqav2" in open(os.path.join(scratch, store.DONE)).read()
  log = open(os.path.join(scratch, runner.LOG)).read().split("=== ")[-1]
  assert "model tiny" not in log  # No stage ran: no model was built.
  with open(os.path.join(out, store.RESULTS)) as f:
    assert len(f.readlines()) == 3
  assert "3 of 3 planned cells done" in open(os.path.join(out, report.REPORT)).read()

  # The same directory with another configuration is refused, naming the cells.
  changed = _study(out, "--gin.STEPS=3", timeout=120)
  assert changed.returncode == 1
  assert "ran with another configuration" in changed.stderr.strip().splitlines()[-1]

  # --report_only rebuilds results.jsonl and the report from the cells alone.
  for name in (store.RESULTS, report.REPORT):
    os.remove(os.path.join(out, name))
  merged = _study(out, "--report_only", timeout=120)
  assert merged.returncode == 0, merged.stderr
  with open(os.path.join(out, store.RESULTS)) as f:
    assert len(f.readlines()) == 3
  assert os.path.exists(os.path.join(out, report.REPORT))


def test_an_edited_gin_file_makes_done_cells_stale(tmp_path, monkeypatch):
  """The fingerprint covers the contents of the gin files a cell reads, the ones
  they include too (resolved through gin's search path), not just their names."""
  configs_dir = tmp_path / "configs"
  (configs_dir / "runs").mkdir(parents=True)
  (configs_dir / "runs" / "common.gin").write_text("NUM_LAYERS = 2\n")
  (configs_dir / "pt.gin").write_text("include 'runs/common.gin'\nLR = 0.1\n")
  (configs_dir / "ft_vqav2.gin").write_text("  include \"runs/common.gin\"\n")
  monkeypatch.chdir(configs_dir)  # The worker's gin finds relative names from here.
  out = str(tmp_path / "study")
  cfg = _config(samplers=("uniform",), sweep_samplers=(), seeds=(0,), downstream=("vqav2",),
                pretrain_gin="pt.gin", finetune_gin="ft_{task}.gin")
  cell = plan.expand(cfg)[0]
  spec = runner.cell_spec(cfg, cell, out)
  store.mark_done(out, cell.name, {"cell": cell.name, "rows": [],
                                   "fingerprint": spec["fingerprint"]})
  assert runner.stale_cells(cfg, [cell], out) == []
  for path, edit in ((configs_dir / "runs" / "common.gin", "NUM_LAYERS = 3\n"),
                     (configs_dir / "pt.gin", "include 'runs/common.gin'\nLR = 0.2\n"),
                     (configs_dir / "ft_vqav2.gin", "include 'runs/common.gin'\n")):
    original = path.read_text()
    path.write_text(edit)
    assert runner.stale_cells(cfg, [cell], out) == [cell.name], path
    path.write_text(original)
    assert runner.stale_cells(cfg, [cell], out) == []
