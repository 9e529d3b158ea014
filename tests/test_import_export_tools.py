"""tools/import_checkpoint.py and tools/export_checkpoint.py --format=hf|t5x, and
pretraining from an import (INIT_FROM, FROZEN in runs/pretrain.gin)."""
import json
import os
import shutil
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
  from dynpt.train import init_params, model_setup
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
    init_params.load_init_params(imported, model, data_cfg)


def test_t5_overrides_must_name_t5_sizes():
  cfg = configs.get_config("tiny", t5_overrides={"num_decoder_layers": 3})
  assert cfg.t5.num_decoder_layers == 3 and cfg.resnet.depth == 26
  with pytest.raises(ValueError, match="unknown keys \\['depth'\\]"):
    configs.get_config("tiny", t5_overrides={"depth": 50})


# ------------------------------------ exports appear whole or not at all (issue 28)

def _tree_bytes(folder):
  out = {}
  for d, _, files in os.walk(folder):
    for f in files:
      with open(os.path.join(d, f), "rb") as fh:
        out[os.path.relpath(os.path.join(d, f), folder)] = fh.read()
  return out


def _leftovers(parent):
  return [n for n in os.listdir(parent) if ".staging-" in n or ".old-" in n]


def test_import_refuses_an_existing_export_without_overwrite(imported, t5x_checkpoint,
                                                             tmp_path):
  folder, _ = t5x_checkpoint
  out_dir = str(tmp_path / "export")
  shutil.copytree(imported, out_dir)
  before = _tree_bytes(out_dir)
  proc = _tool("import_checkpoint.py", "--format=t5x", f"--path={folder}",
               f"--out_dir={out_dir}", "--image_size=32", "--seed=5")
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {out_dir} holds a dynpt export already") and (
      "--overwrite" in last), proc.stderr[-2000:]
  assert _tree_bytes(out_dir) == before
  assert _leftovers(tmp_path) == []


def _second_save_fails(monkeypatch, error: OSError) -> list[str]:
  """Makes `checkpoints.save_params` raise `error` on its second call (a disk that
  fails half way through writing an export); returns the folders it was given."""
  save_params = checkpoints.save_params
  calls = []

  def fails_on_the_second_save(directory, params):
    calls.append(directory)
    if len(calls) == 2:
      raise error
    save_params(directory, params)

  monkeypatch.setattr(checkpoints, "save_params", fails_on_the_second_save)
  return calls


def test_import_failing_half_way_leaves_the_old_export_intact(imported, t5x_checkpoint,
                                                              tmp_path, monkeypatch):
  from dynpt.interop import importer

  folder, _ = t5x_checkpoint
  out_dir = str(tmp_path / "export")
  shutil.copytree(imported, out_dir)
  before = _tree_bytes(out_dir)
  calls = _second_save_fails(monkeypatch, OSError(28, "No space left on device"))
  with pytest.raises(OSError, match="No space left"):
    importer.import_checkpoint("t5x", folder, out_dir, image_size=32, seed=5,
                               vocabulary=vocab_lib.default_vocab_path(), overwrite=True)
  assert not calls[0].startswith(out_dir + os.sep)  # Written beside, not into it.
  assert _tree_bytes(out_dir) == before
  assert _leftovers(tmp_path) == []
  monkeypatch.undo()
  info = importer.import_checkpoint("t5x", folder, out_dir, image_size=32, seed=5,
                                    vocabulary=vocab_lib.default_vocab_path(),
                                    overwrite=True)
  params, written = export.load_export(out_dir)
  assert written == dict(json.loads(json.dumps(info)), params="params",
                        t5x_text_tower="t5x_text_tower")
  assert info["vocabulary_path"] == os.path.join(out_dir, "spiece.model")
  assert os.path.isfile(info["vocabulary_path"])
  old = export.load_export(imported)[0]["visual_row_embedding"]
  assert not np.array_equal(params["visual_row_embedding"], old)  # Seed 5's init.
  assert _leftovers(tmp_path) == []


def test_an_export_never_replaces_a_folder_that_is_no_export(imported, t5x_checkpoint,
                                                             tmp_path):
  from dynpt.interop import exporter, importer

  folder, _ = t5x_checkpoint
  other = tmp_path / "notes"
  other.mkdir()
  (other / "keep.txt").write_text("mine")
  with pytest.raises(export.OutputExistsError, match="not a dynpt export"):
    importer.import_checkpoint("t5x", folder, str(other), image_size=32, overwrite=True)
  with pytest.raises(export.OutputExistsError, match="not a hf checkpoint"):
    exporter.export_text_tower("hf", imported, str(other))
  assert os.listdir(other) == ["keep.txt"]


def _fake_run(run_dir):
  """A run dir with config.gin and one checkpoint whose params have the text tower's
  top-level keys (all an export needs); no training."""
  from dynpt import main as dynpt_main

  os.makedirs(run_dir)
  dynpt_main.parse_gin(["pretrain/toy_cpu.gin"], [f"RUN_DIR={run_dir!r}"])
  try:
    dynpt_main.write_config(run_dir)
  finally:
    gin.clear_config()
  tower = {"token_embedder": {"embedding": jnp.ones((4, 2))},
           "encoder": {"w": jnp.ones((2,))}, "decoder": {"w": jnp.full((2,), 2.0)}}
  ckpt = checkpoints.Checkpointer(run_dir, keep=2, async_save=False)
  ckpt.save(3, {"params": tower, "step": jnp.asarray(3)}, {}, {})
  ckpt.close()


def test_export_tool_takes_a_run_dir_with_quotes(tmp_path):
  run_dir = str(tmp_path / "it's a \"run\"")
  _fake_run(run_dir)
  proc = _tool("export_checkpoint.py", f"--run_dir={run_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  params, info = export.load_export(os.path.join(run_dir, "export"))
  assert info["step"] == 3 and info["source_run_dir"] == run_dir
  np.testing.assert_array_equal(params["decoder"]["w"], [2.0, 2.0])
  out_dir = str(tmp_path / "out 'x'")
  proc = _tool("export_checkpoint.py", f"--run_dir={run_dir}", f"--out_dir={out_dir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert export.load_export(out_dir)[1]["step"] == 3
  # A backslash gets through gin, but TensorStore would read it as a folder
  # separator: refused with one line, nothing written.
  slashed = str(tmp_path / "a\\b")
  proc = _tool("export_checkpoint.py", f"--run_dir={run_dir}", f"--out_dir={slashed}")
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {slashed}") and "backslash" in last, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert sorted(os.listdir(tmp_path)) == ["it's a \"run\"", "out 'x'"]
  with pytest.raises(ValueError, match="backslash"):
    checkpoints.Checkpointer(slashed)


def test_a_run_export_failing_half_way_leaves_the_old_export(tmp_path, monkeypatch):
  run_dir = str(tmp_path / "run")
  _fake_run(run_dir)
  out_dir = os.path.join(run_dir, "export")
  export.export(run_dir)
  before = _tree_bytes(out_dir)
  ckpt = checkpoints.Checkpointer(run_dir, keep=2, async_save=False)
  tower = {"token_embedder": {"embedding": jnp.zeros((4, 2))},
           "encoder": {"w": jnp.zeros((2,))}, "decoder": {"w": jnp.zeros((2,))}}
  ckpt.save(4, {"params": tower, "step": jnp.asarray(4)}, {}, {})  # A newer step.
  ckpt.close()
  _second_save_fails(monkeypatch, OSError(5, "Input/output error"))
  with pytest.raises(OSError, match="Input/output error"):
    export.export(run_dir)
  assert _tree_bytes(out_dir) == before  # Step 3's export, whole.
  assert _leftovers(run_dir) == []
  monkeypatch.undo()
  assert export.export(run_dir)["step"] == 4
  assert export.load_export(out_dir)[1]["step"] == 4
  assert _leftovers(run_dir) == []
