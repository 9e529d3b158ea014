"""Finetuning from an export on toy VQA, downstream eval, freezing."""
import collections
import json
import os

import numpy as np
import pytest

from dynpt.data import schema
from dynpt.train import export, finetune, loop, optim
from dynpt.train.config import DataConfig, ModelConfig, SamplerConfig, TrainConfig


@pytest.fixture(scope="module")
def vqa_data_dir(tmp_path_factory):
  """A larger toy VQA set (500 train / 200 val at 32 px) than the tiny world."""
  from dynpt.data.toyworld.build import build_toy_world

  data_dir = str(tmp_path_factory.mktemp("toy_vqa"))
  build_toy_world(data_dir, seed=0, scale="default", image_size=32,
                  datasets=["vqav2"], progress=False)
  return data_dir


@pytest.fixture(scope="module")
def pretrained_export(toy_data_dir, tmp_path_factory):
  """A short toy pretraining run, exported (params only + T5X text tower)."""
  run_dir = str(tmp_path_factory.mktemp("pt"))
  loop.train(
      TrainConfig(run_dir=run_dir, num_steps=4, global_batch_size=8,
                  progress_bar=False, log_every=2),
      DataConfig(mixture="cc3m_cap,oi_exists", data_dir=toy_data_dir,
                 image_size=32, target_length=16),
      SamplerConfig("uniform", {"min_per_task": 1}),
      optim.OptimizerConfig(learning_rate=1e-3, warmup_steps=1, total_steps=4),
      ModelConfig("tiny"))
  out = export.export(run_dir, model_cfg=ModelConfig("tiny"),
                      data_cfg=DataConfig(image_size=32, target_length=16))
  return out["out_dir"]


def _majority_baseline(data_dir):
  """Accuracy of always answering the most common training answer."""
  from dynpt import metrics

  train = schema.read_records(data_dir, "vqav2", "train")
  common = collections.Counter(
      a.decode() for r in train for a in r["answers"]).most_common(1)[0][0]
  val = schema.read_records(data_dir, "vqav2", "val")
  return float(np.mean([metrics.vqa_accuracy(common, [a.decode() for a in r["answers"]])
                        for r in val]))


def test_export_layout(pretrained_export):
  params, info = export.load_export(pretrained_export)
  assert {"token_embedder", "encoder", "decoder"} <= set(params)
  assert info["model"] == "tiny" and info["step"] == 4
  tower = export.checkpoints.load_params(
      os.path.join(pretrained_export, "t5x_text_tower"))
  assert set(tower["target"]) == {"token_embedder", "encoder", "decoder"}
  np.testing.assert_array_equal(tower["target"]["token_embedder"]["embedding"],
                                params["token_embedder"]["embedding"])


def test_finetune_vqa_beats_the_majority_answer(pretrained_export, vqa_data_dir,
                                                tmp_path):
  run_dir = str(tmp_path)
  summary = finetune.finetune(
      TrainConfig(run_dir=run_dir, num_steps=240, global_batch_size=32,
                  progress_bar=False, log_every=40, checkpoint_every=1000),
      DataConfig(mixture="vqav2", data_dir=vqa_data_dir, image_size=32,
                 target_length=8),
      optim.OptimizerConfig(learning_rate=3e-3, warmup_steps=20, total_steps=240),
      ModelConfig("tiny"), SamplerConfig("uniform", {"min_per_task": 1}),
      finetune.EvalConfig(split="val", every=120, batch_size=50),
      init_from=pretrained_export)
  acc = summary["eval"]["tasks"]["vqav2"]["vqa_accuracy"]
  baseline = 100 * _majority_baseline(vqa_data_dir)
  print(f"toy VQA accuracy {acc:.1f} vs majority answer {baseline:.1f}")
  assert acc > baseline + 5.0
  best = json.load(open(os.path.join(run_dir, "best.json")))
  assert best["score"] >= acc - 1e-6
  assert os.path.exists(os.path.join(run_dir, "eval", "240", "vqav2.json"))
  preds = open(os.path.join(run_dir, "eval", "240",
                            "vqav2.predictions.jsonl")).readlines()
  assert len(preds) == 200


def test_frozen_encoder_does_not_change(pretrained_export, toy_data_dir, tmp_path):
  data_cfg = DataConfig(mixture="vqav2", data_dir=toy_data_dir, image_size=32,
                        target_length=8)
  finetune.finetune(
      TrainConfig(run_dir=str(tmp_path), num_steps=3, global_batch_size=8,
                  progress_bar=False),
      data_cfg, optim.OptimizerConfig(learning_rate=1e-2, warmup_steps=1,
                                      total_steps=3),
      ModelConfig("tiny"), eval_cfg=finetune.EvalConfig(max_examples=8, every=0,
                                                        batch_size=8),
      init_from=pretrained_export, frozen_patterns=("^encoder/", "^resnet"))
  before, _ = export.load_export(pretrained_export)
  after, _ = export.checkpoints.restore_params(str(tmp_path))
  np.testing.assert_array_equal(
      after["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"],
      before["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"])
  assert not np.array_equal(after["decoder"]["logits_dense"]["kernel"],
                            before["decoder"]["logits_dense"]["kernel"])


def test_unmatched_frozen_pattern_is_an_error(toy_data_dir, tmp_path):
  with pytest.raises(ValueError, match="match no parameter"):
    finetune.finetune(
        TrainConfig(run_dir=str(tmp_path), num_steps=1, global_batch_size=8),
        DataConfig(mixture="vqav2", data_dir=toy_data_dir, image_size=32),
        model_cfg=ModelConfig("tiny"), frozen_patterns=("^no_such_tower/",))
