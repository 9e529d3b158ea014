"""The grounding probe (true vs shuffled images) and the transfer table."""

import jax
import numpy as np
import pytest

from dynpt.downstream import grounding
from dynpt.metrics import transfer
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
