"""The downstream package evaluates under the run's mesh and rules (4 simulated devices)."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np

from dynpt.downstream import grounding
from dynpt.train import model_setup
from dynpt.train.config import DataConfig, ModelConfig, TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ["oi_exists"]


def _probe(data_dir: str, partition_mode: str) -> dict:
  """Grounding probe of the tiny model's init params, and how the params were placed."""
  data_cfg = DataConfig(mixture="oi_exists", data_dir=data_dir, image_size=32,
                        target_length=16)
  run_model = model_setup.build_run_model(
      ModelConfig("tiny"), data_cfg, TrainConfig(partition_mode=partition_mode))
  params = nn.meta.unbox(run_model.init_fn()(jax.random.PRNGKey(0)))
  placed = run_model.place(params)
  sharded = sum(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(placed))
  res = grounding.answer_accuracy(TASKS, params, run_model, examples=8, batch_size=8)
  return {"devices": len(jax.devices()), "mesh": dict(run_model.mesh.shape),
          "sharded_leaves": sharded, "result": res}


def test_grounding_probe_runs_under_fsdp_on_four_devices(toy_data_dir):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
                 [ROOT] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
  code = ("import json, tasks; from tests.test_downstream import _probe; "
          f"print(json.dumps(_probe({toy_data_dir!r}, 'fsdp')))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  fsdp = json.loads(proc.stdout.strip().splitlines()[-1])
  assert fsdp["devices"] == 4 and fsdp["mesh"] == {"data": 4, "model": 1}
  assert fsdp["sharded_leaves"] > 0  # fsdp really split params over the devices
  single = _probe(toy_data_dir, "data_parallel")  # this process: one device
  for key in ("true", "shuffled", "loss_true", "loss_shuffled"):
    np.testing.assert_allclose(fsdp["result"]["oi_exists"][key],
                               single["result"]["oi_exists"][key], rtol=1e-4, atol=1e-5)
