"""Finetuning from an export on toy VQA, downstream eval, freezing."""
import collections
import json
import os

import numpy as np
import pytest

from dynpt.data import schema
from dynpt.data import vocab as vocab_lib
from dynpt.downstream import finetune
from dynpt.train import export, init_params, loop, optim
from dynpt.train.config import DataConfig, ModelConfig, SamplerConfig, TrainConfig


@pytest.fixture(scope="module")
def vqa_data_dir(tmp_path_factory):
  """A larger toy VQA set (500 train / 200 val at 32 px) than the tiny world."""
  from dynpt.toyworld.build import build_toy_world

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


@pytest.fixture(scope="module")
def refcoco_data_dir(tmp_path_factory):
  """Toy RefCOCO at 64 px with 20k training expressions (~50 s to build)."""
  from dynpt.toyworld.build import build_toy_world

  data_dir = str(tmp_path_factory.mktemp("toy_refcoco"))
  build_toy_world(data_dir, seed=0, scale="default", image_size=64, datasets=["refcoco"],
                  records={"train": 20000, "val": 300, "testA": 1, "testB": 1},
                  progress=False)
  return data_dir


def _constant_box_baseline(data_dir):
  """acc@0.5 of always answering the median training box (the best constant guess)."""
  from dynpt import metrics
  from dynpt.data import boxes

  train = schema.read_records(data_dir, "refcoco", "train")
  bins = np.median([boxes.box_to_bins(r["refexp/bbox"], (64, 64)) for r in train], 0)
  text = " ".join(str(int(b)) for b in bins)
  val = schema.read_records(data_dir, "refcoco", "val")
  return float(np.mean([metrics.refcoco_hit(text, r["refexp/bbox"], (64, 64)) for r in val]))


def test_position_tables_are_resampled_for_another_image_size(pretrained_export):
  from dynpt.train import model_setup

  params, _ = export.load_export(pretrained_export)  # pretrained at 32 px: 2 x 2 grid
  model = model_setup.build_model(ModelConfig("tiny"), vocab_lib.get_vocabulary(), 64)
  data_cfg = DataConfig(image_size=64, target_length=16)
  abstract = init_params.abstract_params(model, data_cfg)
  resized = init_params.resize_visual_positions(abstract, params, "test")
  for name in ("visual_row_embedding", "visual_col_embedding"):
    old, new = np.asarray(params[name]), resized[name]
    assert old.shape[0] == 2 and new.shape == (4, old.shape[1])
    # Linear interpolation: the outer cells keep the old rows, the inner ones lie between.
    np.testing.assert_allclose(new[0], old[0], atol=1e-6)
    np.testing.assert_allclose(new[-1], old[-1], atol=1e-6)
    np.testing.assert_allclose(new[1], 0.75 * old[0] + 0.25 * old[1], atol=1e-6)
  init_params._check_params_match(abstract, resized, "test")  # everything else fits
  with pytest.raises(ValueError, match="visual_(row|col)_embedding has shape \(2, 32\)"):
    init_params._check_params_match(abstract, params, "test")


def test_an_export_of_the_other_fusion_is_refused(pretrained_export):
  from dynpt.train import model_setup

  early = model_setup.build_model(ModelConfig("tiny", visual_fusion="encoder"),
                                  vocab_lib.get_vocabulary(), 32)
  with pytest.raises(ValueError, match="visual_fusion='decoder', the run uses 'encoder'"):
    init_params.load_init_params(pretrained_export, early, DataConfig(image_size=32))


def test_finetune_refcoco_beats_the_constant_box(pretrained_export, refcoco_data_dir,
                                                 tmp_path):
  """Boxes as text from a toy-pretrained checkpoint: clearly above the best constant box."""
  run_dir = str(tmp_path)
  steps = 3000
  summary = finetune.finetune(
      TrainConfig(run_dir=run_dir, num_steps=steps, global_batch_size=32,
                  progress_bar=False, log_every=500, checkpoint_every=10000),
      DataConfig(mixture="refcoco", data_dir=refcoco_data_dir, image_size=64,
                 target_length=8),
      optim.OptimizerConfig(learning_rate=5e-3, warmup_steps=50, total_steps=steps),
      ModelConfig("tiny", dropout_rate=0.0), SamplerConfig("uniform", {"min_per_task": 1}),
      finetune.EvalConfig(split="val", every=1000, batch_size=100),
      init_from=pretrained_export)
  results = summary["eval"]["tasks"]["refcoco"]
  baseline = 100 * _constant_box_baseline(refcoco_data_dir)
  print(f"toy RefCOCO acc@0.5 {results['acc@0.5']:.1f} vs constant box {baseline:.1f}")
  assert results["unparseable"] < 5.0
  assert results["acc@0.5"] > baseline + 8.0
