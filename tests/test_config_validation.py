"""Wrong types, out-of-range values and misspelt macros fail before anything is built."""
import dataclasses
import glob
import os
import subprocess
import sys

import gin
import pytest
from hypothesis import given, strategies as st

from dynpt import main as dynpt_main
from dynpt.downstream import finetune
from dynpt.train import config, loop, model_setup, optim
from dynpt.train.config import (ConfigError, DataConfig, ModelConfig,
                                SamplerConfig, TrainConfig)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("cfg, key", [
    (TrainConfig(num_steps="three"), "TrainConfig.num_steps='three'"),
    (TrainConfig(checkpoint_every="2"), "TrainConfig.checkpoint_every='2'"),
    (TrainConfig(num_steps=True), "TrainConfig.num_steps=True"),
    (TrainConfig(num_steps=2.5), "TrainConfig.num_steps=2.5"),
    (TrainConfig(progress_bar="no"), "TrainConfig.progress_bar='no'"),
    (TrainConfig(run_dir=None), "TrainConfig.run_dir=None"),
    (optim.OptimizerConfig(learning_rate="2e-3"),
     "OptimizerConfig.learning_rate='2e-3'"),
    (optim.OptimizerConfig(learning_rate=float("nan")),
     "OptimizerConfig.learning_rate=nan"),
    (DataConfig(image_size="224"), "DataConfig.image_size='224'"),
    (SamplerConfig(options=[1, 2]), "SamplerConfig.options=[1, 2]"),
    (ModelConfig(dropout_rate="0.1"), "ModelConfig.dropout_rate='0.1'"),
    (ModelConfig(resnet_preactivation="yes"), "ModelConfig.resnet_preactivation='yes'"),
])
def test_wrong_types_name_the_key_and_value(cfg, key):
  with pytest.raises(ConfigError) as err:
    config.validate_configs(cfg)
  assert str(err.value).startswith(key)


@pytest.mark.parametrize("cfg, message", [
    (TrainConfig(num_steps=0), "TrainConfig.num_steps=0: must be >= 1"),
    (TrainConfig(checkpoint_every=-1),
     "TrainConfig.checkpoint_every=-1: must be >= 0"),
    (TrainConfig(label_smoothing=1.0),
     "TrainConfig.label_smoothing=1.0: must be < 1"),
    (optim.OptimizerConfig(learning_rate=0.0),
     "OptimizerConfig.learning_rate=0.0: must be > 0"),
    (optim.OptimizerConfig(b2=1.0), "OptimizerConfig.b2=1.0: must be < 1"),
    (DataConfig(max_damaged_fraction=1.5),
     "DataConfig.max_damaged_fraction=1.5: must be <= 1"),
    (TrainConfig(partition_mode="nope"), "TrainConfig.partition_mode='nope'"),
    (ModelConfig(visual_fusion="middle"),
     "ModelConfig.visual_fusion='middle': expected one of decoder, encoder"),
])
def test_out_of_range_values_are_rejected(cfg, message):
  with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
    config.validate_configs(cfg)


def test_defaults_and_ints_for_floats_are_valid():
  config.validate_configs(TrainConfig(), DataConfig(), SamplerConfig(),
                          ModelConfig(), optim.OptimizerConfig(learning_rate=1))


@given(st.integers(min_value=1, max_value=10**9))
def test_any_positive_int_is_a_valid_num_steps(n):
  config.validate_configs(TrainConfig(num_steps=n))


@given(st.one_of(st.text(), st.floats(), st.booleans(), st.none(),
                 st.lists(st.integers())))
def test_no_non_int_is_a_valid_num_steps(value):
  with pytest.raises(ConfigError, match="TrainConfig.num_steps"):
    config.validate_configs(TrainConfig(num_steps=value))


def test_bad_type_fails_before_the_model_or_run_dir_exists(tmp_path,
                                                           monkeypatch):
  def must_not_build(*a, **k):
    raise AssertionError("built the model before validating the config")

  monkeypatch.setattr(model_setup, "build_model", must_not_build)
  run_dir = tmp_path / "run"
  with pytest.raises(ConfigError, match="checkpoint_every='2'"):
    loop.train(TrainConfig(run_dir=str(run_dir), checkpoint_every="2"))
  assert not run_dir.exists()


def test_every_shipped_config_validates():
  paths = sorted(glob.glob(os.path.join(ROOT, "gin_configs/pretrain/*.gin"))
                 + glob.glob(os.path.join(ROOT, "gin_configs/finetune/*.gin")))
  for path in paths:
    gin.clear_config()
    dynpt_main.parse_gin([path], ["RUN_DIR='/tmp/x'"] + (
        ["INIT_FROM='/tmp/e'"] if "finetune" in path else []) + (
        ["DOREMI_REFERENCE_RUN='/tmp/r'"] if path.endswith("sampler_doremi.gin") else []))
    cfgs = [gin.get_configurable(c)() for c in (
        TrainConfig, DataConfig, SamplerConfig, optim.OptimizerConfig,
        ModelConfig, finetune.EvalConfig)]
    config.validate_configs(*cfgs)
  gin.clear_config()


def test_a_misspelt_macro_is_rejected_with_a_suggestion():
  gin.clear_config()
  with pytest.raises(ValueError, match=r"NUM_STEP\b.*did you mean NUM_STEPS"):
    dynpt_main.parse_gin(["pretrain/toy_cpu.gin"],
                         ["RUN_DIR='/tmp/x'", "NUM_STEP=2"])
  gin.clear_config()
  # Macros a config references, and full parameter bindings, are accepted.
  dynpt_main.parse_gin(["pretrain/toy_cpu.gin"],
                       ["RUN_DIR='/tmp/x'", "NUM_STEPS=2",
                        "config.TrainConfig.log_every=5"])
  assert gin.query_parameter("%NUM_STEPS") == 2
  gin.clear_config()


def test_main_reports_a_wrong_type_as_one_error_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  run_dir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "dynpt.main", "--gin_file=pretrain/toy_cpu.gin",
       f"--gin.RUN_DIR='{run_dir}'", "--gin.NUM_STEPS='three'"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
  assert proc.returncode == dynpt_main.EXIT_ERROR, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last == ("error: TrainConfig.num_steps='three': expected int, got str")
  assert not (run_dir / "checkpoints").exists()


def test_every_config_field_has_a_checked_type():
  # A new field must use an annotation `check_fields` understands.
  for cls in (TrainConfig, DataConfig, SamplerConfig, ModelConfig,
              optim.OptimizerConfig, finetune.EvalConfig):
    for field in dataclasses.fields(cls):
      bad = object()
      with pytest.raises(ConfigError, match=f"{cls.__name__}.{field.name}"):
        config.check_fields(dataclasses.replace(cls(), **{field.name: bad}))
