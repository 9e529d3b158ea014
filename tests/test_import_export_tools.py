"""tools/import_checkpoint.py and tools/export_checkpoint.py --format=hf|t5x, and
pretraining from an import (INIT_FROM, FROZEN in runs/pretrain.gin)."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from dynpt.data import vocab as vocab_lib
from dynpt.interop import t5x
from dynpt.models import configs, t5
from dynpt.train import checkpoints, export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_VOCAB = 640  # The toy sentencepiece model: 512 pieces + 100 extra ids, padded.


def _tool(name, *args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def t5x_checkpoint(tmp_path_factory):
  """A random T5 1.1 text tower of the tiny size, as a T5X checkpoint folder."""
  cfg = configs.get_config("tiny", vocab_size=TOY_VOCAB, dropout_rate=0.0).t5
  tokens = jnp.ones((1, 2), jnp.int32)
  tower = jax.device_get(nn.meta.unbox(
      t5.T5Transformer(cfg).init(jax.random.PRNGKey(2), tokens, tokens)["params"]))
  folder = str(tmp_path_factory.mktemp("t5x") / "checkpoint_11")
  t5x.write(folder, tower, step=11)
  return folder, tower


@pytest.fixture(scope="module")
def imported(t5x_checkpoint, tmp_path_factory):
  folder, _ = t5x_checkpoint
  out_dir = str(tmp_path_factory.mktemp("import") / "export")
  proc = _tool("import_checkpoint.py", "--format=t5x", f"--path={folder}",
               f"--out_dir={out_dir}", "--image_size=32",
               f"--vocabulary={vocab_lib.default_vocab_path()}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out_dir


def test_import_tool_writes_an_export(imported, t5x_checkpoint):
  params, info = export.load_export(imported)
  assert info["model"] == "tiny" and info["t5_overrides"] is None  # Sizes matched.
  assert info["step"] == 11 and info["vocab_size"] == TOY_VOCAB
  assert info["vocabulary_path"] == os.path.join(imported, "spiece.model")
  assert os.path.isfile(info["vocabulary_path"])
  np.testing.assert_array_equal(
      params["encoder"]["layers_1"]["mlp"]["wo"]["kernel"],
      t5x_checkpoint[1]["encoder"]["layers_1"]["mlp"]["wo"]["kernel"])
  assert params["visual_row_embedding"].shape == (2, 32)  # 32 px: a 2x2 grid.


def test_import_tool_error_is_one_line_and_writes_nothing(t5x_checkpoint, tmp_path):
  folder, _ = t5x_checkpoint
  out_dir = str(tmp_path / "out")
  proc = _tool("import_checkpoint.py", "--format=hf", f"--path={folder}",
               f"--out_dir={out_dir}")
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "config.json" in last, proc.stderr[-2000:]
  assert not os.path.exists(out_dir)


def test_export_tool_writes_hf_and_t5x(imported, t5x_checkpoint, tmp_path):
  hf_dir, t5x_dir = str(tmp_path / "hf"), str(tmp_path / "t5x")
  proc = _tool("export_checkpoint.py", "--format=hf", f"--export_dir={imported}",
               f"--out_dir={hf_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert {"config.json", "model.safetensors", "spiece.model"} <= set(os.listdir(hf_dir))
  with open(os.path.join(hf_dir, "config.json")) as f:
    assert json.load(f)["d_model"] == 32
  proc = _tool("export_checkpoint.py", "--format=t5x", f"--export_dir={imported}",
               f"--out_dir={t5x_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  _, tower, step = t5x.read(t5x_dir)
  assert step == 11
  want = traverse_util.flatten_dict(t5x_checkpoint[1], sep="/")
  for k, v in traverse_util.flatten_dict(tower, sep="/").items():
    np.testing.assert_array_equal(v, want[k], err_msg=k)
  proc = _tool("export_checkpoint.py", "--format=hf", f"--out_dir={hf_dir}")
  assert proc.returncode != 0 and "error: " in proc.stderr


def test_pretraining_starts_from_an_import_with_a_frozen_encoder(imported, toy_data_dir,
                                                                  tmp_path):
  from dynpt import main as dynpt_main

  run_dir = str(tmp_path / "run")
  dynpt_main.parse_gin(["models/tiny.gin", "runs/pretrain.gin"], [
      f"RUN_DIR='{run_dir}'", f"DATA_DIR='{toy_data_dir}'",
      "MIXTURE='cc3m_cap,oi_exists'", "SAMPLER='uniform'",
      "SAMPLER_OPTIONS={'min_per_task': 1}", "NUM_STEPS=2", "BATCH_SIZE=4",
      "IMAGE_SIZE=32", "TARGET_LENGTH=16", "WARMUP_STEPS=1", "LEARNING_RATE=1e-3",
      f"VOCABULARY='{os.path.join(imported, 'spiece.model')}'",
      f"INIT_FROM='{imported}'", "FROZEN=('^encoder/',)",
      "config.TrainConfig.progress_bar=False", "config.TrainConfig.async_checkpoints=False",
      "config.TrainConfig.checkpoint_every=2"])
  try:
    dynpt_main.write_config(run_dir)
    dynpt_main.run_mode("pretrain")
  finally:
    gin.clear_config()
  start, _ = export.load_export(imported)
  trained, step = checkpoints.restore_params(run_dir)
  assert step == 2
  for k, v in traverse_util.flatten_dict(start["encoder"], sep="/").items():
    np.testing.assert_array_equal(traverse_util.flatten_dict(
        trained["encoder"], sep="/")[k], v, err_msg=k)  # Frozen.
  moved = np.abs(trained["decoder"]["logits_dense"]["kernel"]
                 - start["decoder"]["logits_dense"]["kernel"])
  assert 0 < moved.max() < 0.05  # Trained from the import, not from a fresh init.
  # The run's text tower, straight to Hugging Face.
  hf_dir = str(tmp_path / "hf")
  proc = _tool("export_checkpoint.py", "--format=hf", f"--run_dir={run_dir}",
               f"--out_dir={hf_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  from dynpt.interop import hf

  cfg, tower = hf.read(hf_dir)
  assert cfg.num_decoder_layers == 2
  np.testing.assert_array_equal(tower["decoder"]["logits_dense"]["kernel"],
                                trained["decoder"]["logits_dense"]["kernel"])
  with open(os.path.join(hf_dir, "spiece.model"), "rb") as a, open(
      os.path.join(imported, "spiece.model"), "rb") as b:
    assert a.read() == b.read()  # The run's vocabulary, not the toy default.


def test_an_export_with_another_vocabulary_is_refused(imported, tmp_path):
  from dynpt.train import finetune, model_setup
  from dynpt.train.config import DataConfig, ModelConfig

  other = str(tmp_path / "other.model")
  with open(os.path.join(imported, "spiece.model"), "rb") as f:
    data = f.read()
  with open(other, "wb") as f:
    f.write(data + b"\0")  # Another file (the check compares contents).
  data_cfg = DataConfig(image_size=32, vocabulary_path=other)
  model = model_setup.build_model(ModelConfig("tiny"), vocab_lib.get_vocabulary(),
                                  data_cfg.image_size)
  with pytest.raises(ValueError, match="trained with the vocabulary"):
    finetune.load_init_params(imported, model, data_cfg)


def test_t5_overrides_must_name_t5_sizes():
  cfg = configs.get_config("tiny", t5_overrides={"num_decoder_layers": 3})
  assert cfg.t5.num_decoder_layers == 3 and cfg.resnet.depth == 26
  with pytest.raises(ValueError, match="unknown keys \\['depth'\\]"):
    configs.get_config("tiny", t5_overrides={"depth": 50})
