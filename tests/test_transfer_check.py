"""The grounding probe (true vs shuffled images), the transfer check's resumable rows and its table."""

import os

import jax
import numpy as np
import pytest

from dynpt.downstream import grounding
from dynpt.study import provenance, transfer
from dynpt.train import model_setup
from dynpt.train.config import DataConfig, ModelConfig


def _probe(data_dir, params_fn, examples=16):
  data_cfg = DataConfig(mixture="oi_exists", data_dir=data_dir, image_size=32,
                        target_length=16)
  run_model = model_setup.build_run_model(ModelConfig("tiny"), data_cfg)
  params = params_fn(run_model.model, data_cfg)
  return grounding.answer_accuracy(["oi_exists", "cc3m_itm"], params, run_model,
                                   examples=examples, batch_size=8)


def _init(model, data_cfg):
  return model_setup.init_params_fn(model, data_cfg)(jax.random.PRNGKey(0))


def test_grounding_probe_reports_both_images(toy_data_dir):
  import flax.linen as nn

  res = _probe(toy_data_dir, lambda m, d: nn.meta.unbox(_init(m, d)))
  assert set(res) == {"oi_exists", "cc3m_itm"}
  for r in res.values():
    assert r["examples"] == 16
    assert 0.0 <= r["true"] <= 1.0 and 0.0 <= r["shuffled"] <= 1.0
    assert r["gap"] == pytest.approx(r["true"] - r["shuffled"])
    assert r["loss_true"] > 0 and r["loss_shuffled"] > 0
  # A random model's logits depend on the image, so its losses differ.
  assert res["oi_exists"]["loss_true"] != res["oi_exists"]["loss_shuffled"]


def test_grounding_probe_blind_model_has_no_gap(toy_data_dir):
  """With the visual projection zeroed the image cannot matter: equal accuracy and loss."""
  import flax.linen as nn

  def blind(model, data_cfg):
    params = nn.meta.unbox(_init(model, data_cfg))
    params["visual_projection"] = jax.tree.map(np.zeros_like, params["visual_projection"])
    return params

  for r in _probe(toy_data_dir, blind).values():
    assert r["gap"] == 0.0
    assert r["loss_true"] == pytest.approx(r["loss_shuffled"], rel=1e-6)


def _ft(seed, task, init, score):
  return {"kind": "finetune", "seed": seed, "task": task, "init": init, "score": score}


def test_summarize_mean_std_and_gain():
  results = [_ft(0, "vqav2", "pretrained", 50.0), _ft(0, "vqav2", "scratch", 40.0),
             _ft(1, "vqav2", "pretrained", 60.0), _ft(1, "vqav2", "scratch", 40.0),
             _ft(2, "vqav2", "pretrained", 70.0)]  # Seed 2 lacks its scratch arm.
  lines = transfer.summarize(results, ["vqav2", "gqa"])
  vqa = lines[1].split()
  # pretrained 55.0 +- 7.1, scratch 40.0 +- 0.0, gain 15.0 +- 7.1 over seeds 0,1.
  assert vqa[:10] == ["vqav2", "55.0", "+-", "7.1", "40.0", "+-", "0.0", "15.0", "+-", "7.1"]
  assert vqa[-1] == "0,1"
  assert "no seed with both arms" in lines[2]


def test_transfer_runs_what_is_missing_once_and_stamps_each_row(tmp_path, monkeypatch):
  """Fake runs: each missing run runs once, in order, and its row names the code."""
  from dynpt.toyworld import build

  calls = []
  monkeypatch.setattr(build, "build_toy_world", lambda *a, **k: calls.append("world"))

  def pretrain(cfg, seed, run_dir, data_dir):
    calls.append(("pretrain", seed))
    return {"kind": "pretrain", "seed": seed, "run_dir": run_dir, "export": f"/export{seed}",
            "seconds": 1.0, "grounding": {}}

  def finetune(cfg, seed, task, init_from, run_dir, data_dir):
    calls.append(("finetune", seed, task, init_from))
    return {"kind": "finetune", "seed": seed, "task": task, "run_dir": run_dir,
            "init": "pretrained" if init_from else "scratch", "seconds": 1.0, "step": 2,
            "score": 50.0 + seed if init_from else 40.0, "metrics": {}}

  monkeypatch.setattr(transfer, "pretrain", pretrain)
  monkeypatch.setattr(transfer, "finetune", finetune)
  cfg = transfer.TransferConfig(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "out"),
                                seeds=(0, 1), tasks=("vqav2",))
  rows = transfer.run(cfg)
  assert calls == ["world", ("pretrain", 0), ("finetune", 0, "vqav2", "/export0"),
                   ("finetune", 0, "vqav2", None), ("pretrain", 1),
                   ("finetune", 1, "vqav2", "/export1"), ("finetune", 1, "vqav2", None)]
  version = provenance.of_gin_files([cfg.pretrain_gin, "finetune/toy_study_vqav2.gin"])
  assert len(rows) == 6 and all({k: r[k] for k in provenance.KEYS} == version for r in rows)
  path = tmp_path / "out" / "results.jsonl"
  lines = path.read_text().splitlines()
  assert len(lines) == 6
  calls.clear()
  transfer.run(cfg)
  assert calls == ["world"]  # Everything is done.
  path.write_text("\n".join(lines[:-1]) + "\n")  # Seed 1's scratch arm is lost.
  calls.clear()
  rows = transfer.run(cfg)
  assert calls == ["world", ("finetune", 1, "vqav2", None)]
  assert transfer.summarize(rows, cfg.tasks)[1].split()[7:10] == ["10.5", "+-", "0.7"]
  (line,) = transfer.code_lines(rows)
  assert line.startswith(f"rows of commit {version['commit'][:10]}") and line.endswith(": 6")


@pytest.mark.parametrize("flag", ["data_dir", "out_dir"])
def test_a_bucket_folder_is_refused_before_anything_runs(tmp_path, monkeypatch, flag):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(transfer, "pretrain", lambda *a: pytest.fail("pretrained"))
  folders = {"data_dir": str(tmp_path / "data"), "out_dir": str(tmp_path / "out"),
             flag: "gs://bucket/check"}
  with pytest.raises(ValueError, match=f"--{flag}=gs://bucket/check: .* local folders"):
    transfer.run(transfer.TransferConfig(**folders, seeds=(0,), tasks=("vqav2",)))
  assert os.listdir(tmp_path) == []
