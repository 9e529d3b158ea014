"""`ModelConfig.cpu_kernels`: one switch between the XLA:CPU kernels and plain flax layers.

With the kernels on or off the model has the same params (tree, names, shapes, init
values) and computes the same loss and gradients; 'auto' turns them on exactly for a CPU
mesh; with them off the traced train step holds no custom-VJP call (it is the plain flax
model TPU and GPU compile); a mistyped mode is a config error naming the key.
"""
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynpt.models import configs, cpu_kernels
from dynpt.models.vl_model import VLModel, normalize_image
from dynpt.train import model_setup, optim, partitioning
from dynpt.train import state as state_lib
from dynpt.train import step as step_lib
from dynpt.train.config import ConfigError, DataConfig, ModelConfig, validate_configs

_VOCAB = 32
_BATCH = 2


def _batch():
  rng = np.random.RandomState(0)
  tokens = lambda: jnp.asarray(rng.randint(2, _VOCAB, (_BATCH, 6)), jnp.int32)  # noqa: E731
  return {'image': jnp.asarray(rng.randint(0, 256, (_BATCH, 32, 32, 3)), jnp.uint8),
          'encoder_input_tokens': tokens(), 'decoder_input_tokens': tokens(),
          'decoder_target_tokens': tokens()}


def _model(on: bool) -> VLModel:
  # The tiny trunk (every kind of conv) with one text layer each side: quicker to build.
  return VLModel(configs.get_config(
      'tiny', vocab_size=_VOCAB, image_size=32, dropout_rate=0.0, cpu_kernels=on,
      t5_overrides=dict(num_encoder_layers=1, num_decoder_layers=1)))


def _loss(model, params, batch):
  logits = model.apply({'params': params}, normalize_image(batch['image']),
                       batch['encoder_input_tokens'], batch['decoder_input_tokens'])
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, batch['decoder_target_tokens'][..., None], -1))


def test_params_loss_and_gradients_are_the_same_with_and_without():
  # (The im2col kernel gradient's bounds leave the tiny trunk's 8-32 channels with XLA's
  # own; tests/test_conv.py holds a trunk routed through it to the same gradients.)
  batch = _batch()
  params, results = {}, {}
  for on in (True, False):
    model = _model(on)
    params[on] = jax.jit(lambda rng, model=model: model.init(  # noqa: E731
        rng, normalize_image(batch['image']), batch['encoder_input_tokens'],
        batch['decoder_input_tokens'])['params'])(jax.random.key(0))
    results[on] = jax.jit(jax.value_and_grad(functools.partial(_loss, model)))(
        params[on], batch)
  on_params, off_params = (jax.tree_util.tree_flatten_with_path(params[k])
                           for k in (True, False))
  assert on_params[1] == off_params[1]  # Same tree and names...
  for (path, a), (_, b) in zip(on_params[0], off_params[0]):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))  # ...and values.
  (loss_on, grads_on), (loss_off, grads_off) = results[True], results[False]
  np.testing.assert_allclose(loss_on, loss_off, rtol=1e-5)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_off))
  for a, b in zip(jax.tree.leaves(grads_on), jax.tree.leaves(grads_off)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_auto_means_on_exactly_for_cpu_devices():
  mesh = partitioning.create_mesh(1)
  assert cpu_kernels.resolve('auto', mesh.devices.flat)
  assert cpu_kernels.resolve('on', mesh.devices.flat)
  assert not cpu_kernels.resolve('off', mesh.devices.flat)
  tpu, cpu = types.SimpleNamespace(platform='tpu'), types.SimpleNamespace(platform='cpu')
  assert not cpu_kernels.resolve('auto', [tpu, tpu])
  assert not cpu_kernels.resolve('auto', [cpu, tpu])
  assert cpu_kernels.resolve('on', [tpu])
  with pytest.raises(ValueError, match="cpu_kernels='yes'"):
    cpu_kernels.resolve('yes', [cpu])


def test_the_run_path_resolves_the_switch_into_both_towers(toy_vocab):
  for mode, devices, want in (('auto', None, True), ('off', None, False),
                              ('auto', [types.SimpleNamespace(platform='gpu')], False)):
    model = model_setup.build_model(ModelConfig(cpu_kernels=mode), toy_vocab, 32, devices)
    assert (model.config.t5.cpu_kernels, model.config.resnet.cpu_kernels) == (want, want)


def _custom_vjp_calls(jaxpr) -> int:
  count = 0
  for eqn in jaxpr.eqns:
    count += 'custom_vjp' in eqn.primitive.name
    for sub in jax.core.jaxprs_in_params(eqn.params):
      count += _custom_vjp_calls(sub)
  return count


def test_without_the_kernels_the_traced_step_has_no_custom_vjp(toy_vocab):
  data_cfg = DataConfig(image_size=32, input_length=6, target_length=6)
  mesh = partitioning.create_mesh(1)
  rules = partitioning.logical_axis_rules('data_parallel')
  tx = optim.make_optimizer(optim.OptimizerConfig())
  batch = dict(_batch(), decoder_loss_weights=jnp.ones((_BATCH, 6), jnp.float32),
               task_id=jnp.zeros((_BATCH,), jnp.int32))
  calls = {}
  for mode in ('on', 'off'):
    model = model_setup.build_model(ModelConfig(cpu_kernels=mode), toy_vocab, 32,
                                    mesh.devices.flat)
    state = jax.eval_shape(lambda model=model: state_lib.create_train_state(  # noqa: E731
        model_setup.init_params_fn(model, data_cfg), tx, mesh, rules)[0])
    calls[mode, 'forward'] = _custom_vjp_calls(jax.make_jaxpr(
        functools.partial(_loss, model))(state.params, batch).jaxpr)
  step = jax.jit(partitioning.traced_under_rules(  # The 'off' model's train step.
      functools.partial(step_lib.train_step, model=model, num_tasks=1), mesh,
      'data_parallel'))
  calls['off', 'step'] = _custom_vjp_calls(jax.make_jaxpr(step)(
      state, batch, jnp.ones((1,), jnp.float32)).jaxpr)
  assert calls['on', 'forward'] > 0  # The check sees the kernels when they are there...
  assert calls['off', 'forward'] == calls['off', 'step'] == 0  # ...and none without.


def test_a_mistyped_mode_is_a_config_error():
  validate_configs(ModelConfig(cpu_kernels='off'))
  with pytest.raises(ConfigError, match="ModelConfig.cpu_kernels='yes'.*auto, on, off"):
    validate_configs(ModelConfig(cpu_kernels='yes'))
