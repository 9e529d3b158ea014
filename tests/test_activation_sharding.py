"""The model's logical activation constraints take effect on a mesh of 8 devices.

One subprocess with 8 simulated CPU devices jits the tiny train step exactly as
the loop does (`partitioning.traced_under_rules`), for every partitioning
preset, and reports: the sharding constraints in the lowered program, the
compiled per-device memory, and the loss. The test then checks that the
activations are sharded as the rules say, that the memory is within 20% of
`tools/check_config.py`'s estimate (`memory.estimate`), and that every preset's
loss equals the one-device run's.
"""

import dataclasses
import functools
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, TARGET, BATCH, EMBED = 640, 16, 16, 32
# (partition mode, model-axis size) on 8 devices.
PRESETS = (("data_parallel", 1), ("fsdp", 1), ("model_parallel", 2),
           ("fsdp_model_parallel", 2))
_CONSTRAINT = re.compile(r"sdy\.sharding_constraint %\S+ <@\w+, \[(.*?)\]> : tensor<([\dx]+)x")


def _probe() -> None:
  """Runs in the 8-device subprocess; prints one JSON line of results."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from dynpt.models import configs, decoding, vl_model
  from dynpt.train import memory, optim, partitioning
  from dynpt.train import state as state_lib
  from dynpt.train import step as step_lib

  cfg = configs.get_config("tiny", vocab_size=VOCAB, image_size=32)
  # One layer per stack keeps the five compilations short; every kind of layer stays.
  cfg = dataclasses.replace(cfg, t5=dataclasses.replace(
      cfg.t5, num_encoder_layers=1, num_decoder_layers=1))
  assert cfg.t5.emb_dim == EMBED
  model = vl_model.VLModel(cfg)

  def init_fn(rng):
    return model.init(rng, jnp.zeros((1, 32, 32, 3)), jnp.ones((1, 32), jnp.int32),
                      jnp.ones((1, TARGET), jnp.int32))["params"]

  rng = np.random.default_rng(0)
  batch = {
      "image": rng.integers(0, 255, (BATCH, 32, 32, 3)).astype(np.uint8),
      "encoder_input_tokens": rng.integers(2, VOCAB, (BATCH, 32)).astype(np.int32),
      "decoder_input_tokens": rng.integers(2, VOCAB, (BATCH, TARGET)).astype(np.int32),
      "decoder_target_tokens": rng.integers(2, VOCAB, (BATCH, TARGET)).astype(np.int32),
      "decoder_loss_weights": np.ones((BATCH, TARGET), np.float32),
      "task_id": (np.arange(BATCH) % 2).astype(np.int32)}
  tx = optim.make_optimizer(optim.OptimizerConfig())
  step_fn = functools.partial(step_lib.train_step, model=model, num_tasks=2)
  out = {}
  # One initialisation, placed on each mesh (an 8-device init compiles for ~30 s).
  host_state = jax.device_get(state_lib.create_train_state(
      init_fn, tx, partitioning.create_mesh(1, devices=jax.devices()[:1]),
      partitioning.logical_axis_rules(), seed=0)[0])
  runs = [(mode, mp, jax.devices()) for mode, mp in PRESETS]
  runs.append(("one_device", 1, jax.devices()[:1]))
  for mode, mp, devices in runs:
    partition_mode = "data_parallel" if mode == "one_device" else mode
    mesh = partitioning.create_mesh(mp, devices=devices)
    rules = partitioning.logical_axis_rules(partition_mode)
    _, shardings = state_lib.state_shardings(init_fn, tx, mesh, rules, seed=0)
    state = jax.device_put(host_state, shardings)
    repl = partitioning.replicated(mesh)
    p_step = jax.jit(partitioning.traced_under_rules(step_fn, mesh, partition_mode),
                     in_shardings=(shardings, partitioning.batch_sharding(mesh), repl),
                     out_shardings=(shardings, repl), donate_argnums=(0,))
    lowered = p_step.lower(state, batch, jnp.ones((2,), jnp.float32))
    compiled = lowered.compile()
    ma = compiled.memory_analysis()
    est = memory.estimate(cfg, global_batch_size=BATCH,
                          mesh_shape=(mesh.shape["data"], mesh.shape["model"]),
                          partition_mode=partition_mode, target_length=TARGET)
    _, metrics = compiled(state, batch, jnp.ones((2,), jnp.float32))
    out[mode] = {
        "constraints": _CONSTRAINT.findall(lowered.as_text()),
        "compiled_bytes": (ma.argument_size_in_bytes + ma.output_size_in_bytes
                           - ma.alias_size_in_bytes + ma.temp_size_in_bytes),
        "estimate_bytes": est.total,
        "loss": float(metrics["loss"])}
  # Decoding is traced under the same context (finetuning's evaluation).
  mesh = partitioning.create_mesh(2)
  decode = decoding.make_batch_decoder(
      model, max_decode_length=4,
      trace_context=partitioning.trace_context(mesh, "fsdp_model_parallel"))
  text = decode.lower(host_state.params, batch["image"],
                      batch["encoder_input_tokens"]).as_text()
  out["decode_constraints"] = len(_CONSTRAINT.findall(text))
  print(json.dumps(out))


@pytest.fixture(scope="module")
def probe():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
                 [ROOT] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
  proc = subprocess.run(
      [sys.executable, "-c",
       "from tests.test_activation_sharding import _probe; _probe()"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _specs(constraints):
  """[(per-dim mesh axes, shape)] of the lowered program's sharding constraints."""
  out = []
  for dims, shape in constraints:
    axes = [re.findall(r'"(\w+)"', d) for d in re.findall(r"\{[^}]*\}", dims)]
    out.append((axes, tuple(int(s) for s in shape.split("x"))))
  return out


@pytest.mark.parametrize("mode", [m for m, _ in PRESETS])
def test_activations_are_sharded_as_the_rules_say(probe, mode):
  specs = _specs(probe[mode]["constraints"])
  assert len(specs) > 20  # encoder, decoder, fusion and logits layers
  model_parallel = mode.endswith("model_parallel")
  for axes, shape in specs:
    assert axes[0] == ["data"] and shape[0] == BATCH  # batch over `data`
    assert all(a in ([], ["model"]) for a in axes[1:]), axes
    if shape[-1] == EMBED:
      assert axes[-1] == []  # an activation's embed stays whole, fsdp or not
  sharded_over_model = [s for s in specs if ["model"] in s[0][1:]]
  assert bool(sharded_over_model) == model_parallel
  if model_parallel:  # heads, mlp and vocab activations
    assert {s[1][-1] for s in sharded_over_model} >= {VOCAB}


@pytest.mark.parametrize("mode", [m for m, _ in PRESETS])
def test_compiled_memory_is_within_20_percent_of_the_estimate(probe, mode):
  ratio = probe[mode]["estimate_bytes"] / probe[mode]["compiled_bytes"]
  assert 0.8 <= ratio <= 1.2, (mode, probe[mode])


@pytest.mark.parametrize("mode", [m for m, _ in PRESETS])
def test_losses_equal_the_one_device_run(probe, mode):
  assert probe[mode]["loss"] == pytest.approx(probe["one_device"]["loss"], rel=1e-5)


def test_decoding_is_traced_under_the_rules(probe):
  assert probe["decode_constraints"] > 10
