"""Issue 29: the study's world seed, eval size, provenance, declared contrasts."""

from __future__ import annotations

import os
import subprocess

import gin
import pytest

from dynpt import main as dynpt_main
from dynpt.data import schema
from dynpt.study import grid, provenance, runner

DOWNSTREAM_TEXT = {"vqav2": "question", "gqa": "question", "snli_ve": "hypothesis"}


def _confirm(*bindings: str) -> grid.StudyConfig:
  dynpt_main.parse_gin(["study/confirm.gin"], list(bindings))
  try:
    return gin.get_configurable(grid.StudyConfig)()
  finally:
    gin.clear_config()


def _world(cfg, out_dir):
  """(image bytes, question text) of each downstream `val` record, per task."""
  path = grid.build_world(cfg, str(out_dir))
  return {task: [(r["image/encoded"], r[key]) for r in schema.read_records(path, task, "val")]
          for task, key in DOWNSTREAM_TEXT.items()}


def test_world_seed_changes_every_image_and_the_questions(tmp_path):
  small = ("TOY_SCALE='tiny'", "IMAGE_SIZE=32", "EVAL_EXAMPLES=5",
           "TOY_RECORDS={'train': 2, 'validation': 1, 'val': 1, 'test': 1, 'testA': 1, "
           "'testB': 1}")
  one, two = _confirm(*small, "WORLD_SEED=1"), _confirm(*small, "WORLD_SEED=2")
  assert (one.world_seed, two.world_seed) == (1, 2)
  assert grid.data_dir(one, "/s") != grid.data_dir(two, "/s")
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
  cell = next(c for c in grid.expand(cfg) if c.init == "scratch")
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
