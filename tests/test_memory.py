"""Per-device memory estimate, the partitioning presets and tools/check_config.py."""

import functools
import os
import subprocess
import sys

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynpt import main as dynpt_main
from dynpt.models import configs, vl_model
from dynpt.train import config, memory, optim, partitioning
from dynpt.train import state as state_lib
from dynpt.train import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 640
TARGET = 16


def _tiny(**kw):
  return configs.get_config("tiny", vocab_size=VOCAB, image_size=32, **kw)


def _init_fn(model):
  image = jnp.zeros((1, 32, 32, 3), jnp.float32)
  tokens = jnp.ones((1, 32), jnp.int32)
  targets = jnp.ones((1, TARGET), jnp.int32)
  return lambda rng: model.init(rng, image, tokens, targets)["params"]


@pytest.fixture(scope="module")
def tiny_state():
  model = vl_model.VLModel(_tiny())
  tx = optim.make_optimizer(optim.OptimizerConfig())
  mesh = partitioning.create_mesh(1)
  state, shardings = state_lib.create_train_state(
      _init_fn(model), tx, mesh, partitioning.logical_axis_rules(), seed=0)
  return model, tx, state, shardings


def _nbytes(tree):
  return sum(x.nbytes for x in jax.tree.leaves(tree))


def test_params_and_optimizer_bytes_match_the_real_state(tiny_state):
  model, tx, state, shardings = tiny_state
  est = memory.estimate(model.config, global_batch_size=8, mesh_shape=(1, 1),
                        target_length=TARGET, optimizer=tx)
  assert est.params == _nbytes(state.params)
  assert est.gradients == est.params
  assert est.optimizer == _nbytes(state.opt_state)
  assert est.num_params == sum(x.size for x in jax.tree.leaves(state.params))
  from_state = memory.estimate_for_state(
      state, shardings, model.config, global_batch_size=8, mesh_shape=(1, 1),
      partition_mode="data_parallel", target_length=TARGET)
  assert from_state == est
  assert est.total == (est.params + est.gradients + est.optimizer
                       + est.activations + est.batch)


def test_sharding_modes_divide_the_state():
  cfg = _tiny()
  dp = memory.estimate(cfg, global_batch_size=8, mesh_shape=(4, 1))
  fsdp = memory.estimate(cfg, global_batch_size=8, mesh_shape=(4, 1),
                         partition_mode="fsdp")
  mp = memory.estimate(cfg, global_batch_size=8, mesh_shape=(1, 4),
                       partition_mode="model_parallel")
  for est in (fsdp, mp):
    assert dp.params / 4 <= est.params < dp.params
    assert dp.optimizer / 4 <= est.optimizer < dp.optimizer
  # The batch is split over `data` only: model parallelism keeps 8 examples
  # per device but splits the heads, MLP and vocabulary activations.
  assert dp.per_device_batch == 2 and mp.per_device_batch == 8
  assert mp.activations < 4 * dp.activations


def test_activations_scale_with_batch_and_shrink_with_remat_and_bf16():
  cfg = _tiny()
  a2 = memory.activation_bytes(cfg, 2)
  assert memory.activation_bytes(cfg, 4) == pytest.approx(2 * a2, rel=1e-6)
  assert memory.activation_bytes(_tiny(remat=True), 2) < a2
  assert memory.activation_bytes(_tiny(dtype="bfloat16"), 2) < a2
  assert memory.activation_bytes(cfg, 2, num_frames=4) > a2


def test_activation_estimate_is_close_to_xla(tiny_state):
  """The analytic activations (+ gradients) vs XLA's temporary buffers."""
  model, _, state, _ = tiny_state
  batch = 8
  shapes = {"image": ((batch, 32, 32, 3), jnp.uint8),
            "encoder_input_tokens": ((batch, 32), jnp.int32),
            "decoder_input_tokens": ((batch, TARGET), jnp.int32),
            "decoder_target_tokens": ((batch, TARGET), jnp.int32),
            "decoder_loss_weights": ((batch, TARGET), jnp.float32),
            "task_id": ((batch,), jnp.int32)}
  abstract = {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shapes.items()}
  step = jax.jit(functools.partial(step_lib.train_step, model=model, num_tasks=2))
  compiled = step.lower(state, abstract, jnp.ones((2,), jnp.float32)).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  est = memory.estimate(model.config, global_batch_size=batch, mesh_shape=(1, 1),
                        target_length=TARGET)
  assert 0.5 < (est.activations + est.gradients) / temp < 2.0


def test_bad_mesh_or_mode_is_rejected():
  with pytest.raises(ValueError, match="not divisible"):
    memory.estimate(_tiny(), global_batch_size=6, mesh_shape=(4, 1))
  with pytest.raises(ValueError, match="partition mode"):
    memory.estimate(_tiny(), global_batch_size=8, mesh_shape=(4, 1),
                    partition_mode="zero3")


PRESETS = {
    "partitioning/base_dp.gin": ("data_parallel", 1),
    "partitioning/base_fsdp.gin": ("fsdp", 1),
    "partitioning/large_fsdp_mp.gin": ("fsdp_model_parallel", 2),
    "partitioning/large_fsdp.gin": ("fsdp", 1),
}


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_partition_presets_bind_mode_remat_and_bf16(preset, clean_gin):
  dynpt_main.parse_gin(["pretrain/paper_base.gin", preset], ["RUN_DIR='/tmp/x'"])
  train_cfg = gin.get_configurable(config.TrainConfig)()
  model_cfg = gin.get_configurable(config.ModelConfig)()
  mode, model_parallel = PRESETS[preset]
  assert train_cfg.partition_mode == mode
  assert train_cfg.num_model_partitions == model_parallel
  assert model_cfg.dtype == "bfloat16" and model_cfg.remat is True
  assert model_cfg.name == "base"  # A preset partitions; it does not pick the model.
  train_cfg.validate()


def test_paper_large_uses_the_large_model_and_its_preset(clean_gin):
  dynpt_main.parse_gin(["pretrain/paper_large.gin"], ["RUN_DIR='/tmp/x'"])
  train_cfg = gin.get_configurable(config.TrainConfig)()
  assert gin.get_configurable(config.ModelConfig)().name == "large"
  assert (train_cfg.partition_mode, train_cfg.num_model_partitions) == ("fsdp", 1)
  assert train_cfg.global_batch_size == 4096


def test_check_config_prints_the_table():
  proc = subprocess.run(
      [sys.executable, "tools/check_config.py", "--gin_file=pretrain/paper_base.gin",
       "--gin_file=partitioning/base_fsdp.gin", "--devices=16",
       "--device_memory_gib=32"],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "mesh (data=16, model=1), fsdp" in out
  assert "256 examples per device" in out
  rows = {line.split()[0]: float(line.split()[1]) for line in out.splitlines()
          if line.split() and line.split()[0] in ("params", "optimizer", "total")}
  assert 0 < rows["params"] < 0.2 and rows["optimizer"] == pytest.approx(
      2 * rows["params"], rel=0.05)
  assert "fits in 32 GiB per device" in out
  assert np.isfinite(rows["total"])


def test_paper_base_is_partitioned_to_fit_a_v4_chip(clean_gin):
  """The recipe runs as base_fsdp.gin (bf16, remat) unless a preset after it says otherwise."""
  dynpt_main.parse_gin(["pretrain/paper_base.gin"], ["RUN_DIR='/tmp/x'"])
  train_cfg = gin.get_configurable(config.TrainConfig)()
  model_cfg = gin.get_configurable(config.ModelConfig)()
  assert (train_cfg.partition_mode, model_cfg.dtype, model_cfg.remat) == (
      "fsdp", "bfloat16", True)
  assert train_cfg.global_batch_size == 4096 and model_cfg.name == "base"
  gin.clear_config()
  dynpt_main.parse_gin(["pretrain/paper_base.gin", "partitioning/base_dp.gin"],
                       ["RUN_DIR='/tmp/x'"])
  assert gin.get_configurable(config.TrainConfig)().partition_mode == "data_parallel"
