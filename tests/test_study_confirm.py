"""Issue 29: the study's world seed, eval size, provenance, declared contrasts."""

from __future__ import annotations

import math
import os
import subprocess

import gin
import pytest

from dynpt import main as dynpt_main
from dynpt.data import schema
from dynpt.study import figures, grid, plan, prior, provenance, report, runner, stats, world

DOWNSTREAM_TEXT = {"vqav2": "question", "gqa": "question", "snli_ve": "hypothesis"}


def _confirm(*bindings: str) -> grid.StudyConfig:
  dynpt_main.parse_gin(["study/confirm.gin"], list(bindings))
  try:
    return gin.get_configurable(grid.StudyConfig)()
  finally:
    gin.clear_config()


def _world(cfg, out_dir):
  """(image bytes, question text) of each downstream `val` record, per task."""
  path = world.build_world(cfg, str(out_dir))
  return {task: [(r["image/encoded"], r[key]) for r in schema.read_records(path, task, "val")]
          for task, key in DOWNSTREAM_TEXT.items()}


def test_world_seed_changes_every_image_and_the_questions(tmp_path):
  small = ("TOY_SCALE='tiny'", "IMAGE_SIZE=32", "EVAL_EXAMPLES=5",
           "TOY_RECORDS={'train': 2, 'validation': 1, 'val': 1, 'test': 1, 'testA': 1, "
           "'testB': 1}")
  one, two = _confirm(*small, "WORLD_SEED=1"), _confirm(*small, "WORLD_SEED=2")
  assert (one.world_seed, two.world_seed) == (1, 2)
  assert world.data_dir(one, "/s") != world.data_dir(two, "/s")
  a, b = _world(one, tmp_path / "a"), _world(two, tmp_path / "b")
  again = _world(one, tmp_path / "c")
  assert again == a  # The same seed: the same bytes and words.
  for task in DOWNSTREAM_TEXT:
    assert len(a[task]) == 5  # eval_examples sizes each downstream val split.
    assert all(x[0] != y[0] for x, y in zip(a[task], b[task])), task
    assert [x[1] for x in a[task]] != [y[1] for y in b[task]], task


def test_eval_examples_binds_the_finetuning_and_contrasts_are_checked():
  cfg = _confirm()
  assert cfg.world_seed != 0 and cfg.eval_examples >= 1000 and len(cfg.seeds) >= 6
  cell = next(c for c in plan.expand(cfg) if c.init == "scratch")
  spec = runner.cell_spec(cfg, cell, "/tmp/s")
  assert f"EVAL_EXAMPLES={cfg.eval_examples}" in spec["finetune"][0]["bindings"]
  assert spec["world_seed"] == cfg.world_seed
  assert grid.parse_contrast("dynamic - scratch: gqa", cfg) == grid.Contrast(
      "dynamic", grid.SCRATCH, "gqa")
  for bad, why in [("dynamic - uniform", "expected"), ("ado - uniform: mean", "'ado'"),
                   ("dynamic - uniform: okvqa", "'okvqa'"), ("uniform - uniform: mean",
                                                             "itself")]:
    with pytest.raises(ValueError, match=why):
      grid.parse_contrast(bad, cfg)
  with pytest.raises(ValueError, match="contradicts"):
    grid.StudyConfig(eval_examples=10, finetune_bindings={"EVAL_EXAMPLES": 20})


def test_provenance_names_the_commit_and_the_gin_contents(tmp_path):
  repo = str(tmp_path)
  git = lambda *a: subprocess.run(["git", "-C", repo, *a], check=True,  # noqa: E731
                                  capture_output=True)
  git("init", "-q")
  os.makedirs(os.path.join(repo, "cfg", "runs"))
  with open(os.path.join(repo, "cfg", "top.gin"), "w") as f:
    f.write("include 'runs/base.gin'\nA = 1\n")
  with open(os.path.join(repo, "cfg", "runs", "base.gin"), "w") as f:
    f.write("B = 2\n")
  git("add", ".")
  git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
  clean = provenance.code_version(repo)
  assert len(clean["commit"]) == 40 and clean["dirty"] is False
  search = [os.path.join(repo, "cfg")]
  before = provenance.gin_fingerprint(["top.gin"], search)
  with open(os.path.join(repo, "cfg", "runs", "base.gin"), "a") as f:
    f.write("C = 3\n")  # An included file changes: so does the fingerprint and the tree.
  assert provenance.gin_fingerprint(["top.gin"], search) != before
  assert provenance.code_version(repo) == dict(clean, dirty=True)
  assert provenance.code_version(str(tmp_path / "nowhere"))["commit"] == provenance.UNKNOWN


# ------------------------------------------------ the confirmatory statistics

def test_holm_and_paired_p_against_hand_computed_values():
  # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max.
  assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  out = stats.holm([0.02, math.nan, 0.5])  # nan does not count: m = 2.
  assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.5)
  assert stats.holm([0.6, 0.7]) == [1.0, 1.0]
  # Differences 1, 2, 3: t = 2 / (1 / sqrt 3) = sqrt 12 on 2 df, where the two-sided
  # p is 1 - t / sqrt(t^2 + 2) = 1 - sqrt(12 / 14).
  p = stats.paired_p_value({0: 5.0, 1: 6.0, 2: 7.0, 3: 1.0}, {0: 4.0, 1: 4.0, 2: 4.0})
  assert p == pytest.approx(1 - math.sqrt(12 / 14))
  assert stats.paired_p_value({0: 3.0, 1: 4.0}, {0: 1.0, 1: 2.0}) == 0.0
  assert stats.paired_p_value({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}) == 1.0
  assert math.isnan(stats.paired_p_value({0: 1.0}, {0: 2.0}))
  # Fisher z: atanh(0.5) = 0.5493, se = 1 / sqrt(7 - 3) = 0.5, 1.96 * 0.5 = 0.98.
  low, high = stats.pearson_interval(0.5, 7)
  assert (low, high) == pytest.approx((math.tanh(0.549306 - 0.979982),
                                       math.tanh(0.549306 + 0.979982)), abs=1e-5)
  assert math.isnan(stats.pearson_interval(0.5, 3)[0])


def test_blind_prior_by_hand():
  train = [("What color is a", ["red"]), ("what color is b", ["red"]),
           ("what color is c", ["blue"]), ("how many d", ["2"]), ("is there e", ["yes"]),
           ("is there f", ["yes"])]
  val = [("what color g", ["red"]), ("how many h", ["3"]), ("is there i", ["yes"]),
         ("where is j", ["left"])]
  p = prior.blind_prior(train, val, prior.score_fn("gqa"))
  # Overall: 'red' (tied with 'yes', seen first) is right once in 4. By type: red, 2, yes,
  # and 'red' for the unseen type "where is": right twice.
  assert (p.answer, p.overall, p.by_type, p.types, p.best) == ("red", 25.0, 50.0, 3, 50.0)
  # VQA accuracy: 4 of 10 annotators said "2" -> 1.0; 1 of 10 -> 0.3.
  vqa = prior.blind_prior([("how many", ["2"])], [("how many", ["2"] * 4 + ["3"] * 6),
                                                  ("how many", ["2"] + ["3"] * 9)],
                          prior.score_fn("vqav2"))
  assert vqa.overall == pytest.approx(65.0)


def _row(sampler, seed, task, value, commit="a" * 40, loss=1.0):
  return {"cell": f"{sampler}-m-s{seed}", "sampler": sampler, "mixture": "m", "seed": seed,
          "init": "pretrained", "task": task, "value": value, "pretrain_loss": loss,
          "commit": commit, "dirty": False, "gin_fingerprint": "f" * 16, "world_seed": 29}


def test_report_refuses_mixed_code_unless_pooled_and_figure1_points_per_sampler():
  rows = [_row("uniform", s, "vqav2", 50.0 + s) for s in (0, 1)]
  assert "one code version" in report.provenance_lines(rows, pool_mixed=False)[0]
  mixed = rows + [_row("dynamic", 0, "vqav2", 60.0, commit="b" * 40)]
  with pytest.raises(ValueError, match="2 code versions.*--pool_mixed"):
    report.provenance_lines(mixed, pool_mixed=False)
  assert report.provenance_lines(mixed, pool_mixed=True)[0].startswith("Pooled")
  # dsg's runs equal uniform's: one point; dynamic is another, mean over its seeds.
  rows += [_row("dsg", s, "vqav2", 50.0 + s) for s in (0, 1)]
  rows += [_row("dynamic", s, "vqav2", 60.0 + 2 * s, loss=2.0 + s) for s in (0, 1)]
  points = figures.sampler_points(rows, ["vqav2"])
  assert [p["samplers"] for p in points] == [["uniform", "dsg"], ["dynamic"]]
  assert points[1]["accuracy"].mean == 61.0 and points[1]["loss"].mean == 2.5
  assert points[1]["accuracy"].std == pytest.approx(math.sqrt(2))


def test_figure1_sentence_names_a_missing_interval(tmp_path):
  """Three points give r but no Fisher-z interval: the sentence must not cite one."""
  rows = []
  for i, sampler in enumerate(("uniform", "dynamic", "doremi")):
    rows += [_row(sampler, s, "vqav2", 50.0 + 2 * i + s, loss=1.0 + i + 0.1 * s)
             for s in (0, 1)]
  cfg = grid.StudyConfig(mixture="m", downstream=("vqav2",))
  text = " ".join(figures.figure1(rows, cfg, str(tmp_path / "f1.png")))
  assert "r over the 3 points: 1.00" in text and "no interval with fewer than 4" in text
  assert "with no interval the sign is not settled" in text
  assert "interval includes 0" not in text
  assert (tmp_path / "f1.png").exists()
