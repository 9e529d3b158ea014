"""Tests for the GroupNorm + weight-standardized ResNet (dynpt/models/resnet.py)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynpt.models import resnet
from dynpt.models.configs import ResNetConfig

TINY = ResNetConfig(depth=26, width=0.125, num_groups=4)
# The executed tests use basic blocks (cheapest to compile); the bottleneck path runs in
# the VLModel tests.
SMALL18 = ResNetConfig(depth=18, width=0.125, num_groups=4)


def _shapes(config, size, batch=1):
  model = resnet.ResNet(config)
  images = jnp.zeros((batch, size, size, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  out = jax.eval_shape(model.apply, nn.meta.unbox(variables), images)
  return variables, out


def _flat(params):
  return {'/'.join(p.key for p in path): leaf.shape
          for path, leaf in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(params))}


@pytest.mark.parametrize('depth,width,size,expected', [
    (26, 0.5, 64, (1, 4, 4, 512)),
    (18, 1.0, 224, (1, 14, 14, 256)),
    (50, 0.125, 100, (1, 7, 7, 128)),  # odd sizes round up at each stride-2 step
])
def test_output_is_stride_16_stage3_map(depth, width, size, expected):
  config = ResNetConfig(depth=depth, width=width, num_groups=8)
  _, out = _shapes(config, size)
  assert out.shape == expected
  assert out.shape[-1] == resnet.output_channels(config)


def _bottleneck_params(cin, mid, proj):
  n = cin * mid + 9 * mid * mid + mid * 4 * mid + 2 * (mid + mid + 4 * mid)
  return n + (cin * 4 * mid + 2 * 4 * mid if proj else 0)


def test_resnet50_names_and_param_count():
  variables, out = _shapes(ResNetConfig(depth=50), 224)
  assert out.shape == (1, 14, 14, 1024)
  assert set(variables) == {'params'}  # GroupNorm: no batch_stats collection
  flat = _flat(variables['params'])
  assert flat['conv_root/kernel'] == (7, 7, 3, 64)
  assert flat['gn_root/scale'] == (64,)
  assert flat['block1/unit1/conv1/kernel'] == (1, 1, 64, 64)
  assert flat['block1/unit1/conv_proj/kernel'] == (1, 1, 64, 256)
  assert flat['block2/unit1/conv2/kernel'] == (3, 3, 128, 128)
  assert flat['block3/unit6/gn3/bias'] == (1024,)
  assert not any(k.startswith('block4') for k in flat)
  assert 'block3/unit7/conv1/kernel' not in flat
  expected = 7 * 7 * 3 * 64 + 2 * 64
  for mid, units, cin in ((64, 3, 64), (128, 4, 256), (256, 6, 512)):
    expected += _bottleneck_params(cin, mid, proj=True)
    expected += (units - 1) * _bottleneck_params(4 * mid, mid, proj=False)
  assert sum(int(np.prod(s)) for s in flat.values()) == expected  # ~8.5M
  specs = nn.get_partition_spec(variables)['params']
  assert tuple(specs['block1']['unit1']['conv2']['kernel']) == (
      'conv_height', 'conv_width', 'conv_in', 'conv_out')


def test_preactivation_resnet50_is_bits_v2_tree():
  """BiT-M R50x1's stages 1-3: no root norm, per unit gn1 on the unit input (Cin),
  gn2/gn3 on the bottleneck, no gn_proj; the same count as the release's tensors."""
  variables, out = _shapes(ResNetConfig(depth=50, preactivation=True), 224)
  assert out.shape == (1, 14, 14, 1024)
  flat = _flat(variables['params'])
  assert 'gn_root/scale' not in flat and not any('gn_proj' in k for k in flat)
  assert flat['block2/unit1/gn1/scale'] == (256,)  # The unit input's norm.
  assert flat['block2/unit1/conv_proj/kernel'] == (1, 1, 256, 512)
  assert flat['block2/unit1/gn3/bias'] == (128,)
  expected = 7 * 7 * 3 * 64
  for mid, units, cin in ((64, 3, 64), (128, 4, 256), (256, 6, 512)):
    for u in range(units):
      c = cin if u == 0 else 4 * mid
      expected += c * mid + 9 * mid * mid + mid * 4 * mid + 2 * (c + mid + mid)
      expected += c * 4 * mid if u == 0 else 0
  assert sum(int(np.prod(s)) for s in flat.values()) == expected


def test_resnet18_uses_basic_blocks():
  variables, _ = _shapes(ResNetConfig(depth=18, width=0.25, num_groups=4), 32)
  flat = _flat(variables['params'])
  assert flat['block2/unit1/conv1/kernel'] == (3, 3, 16, 32)
  assert flat['block2/unit1/conv2/kernel'] == (3, 3, 32, 32)
  assert 'block2/unit1/conv3/kernel' not in flat


@pytest.mark.parametrize('config,match', [
    (ResNetConfig(depth=34), 'depth'),
    (ResNetConfig(depth=50, width=0.125, num_groups=32), 'num_groups'),
    (ResNetConfig(depth=18, preactivation=True), 'preactivation'),
])
def test_bad_config_raises(config, match):
  with pytest.raises(ValueError, match=match):
    _shapes(config, 32)


def test_bad_image_shape_raises():
  model = resnet.ResNet(TINY)
  with pytest.raises(ValueError, match='images'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 4)))


def test_weight_standardize_property():
  kernel = np.random.RandomState(0).normal(2.0, 3.0, size=(3, 3, 4, 5))
  std = np.asarray(resnet.weight_standardize(jnp.asarray(kernel)))
  np.testing.assert_allclose(std.mean(axis=(0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(std.std(axis=(0, 1, 2)), 1, atol=1e-4)
  np.testing.assert_allclose(resnet.weight_standardize(jnp.asarray(kernel * 7 - 1.5)), std,
                             atol=1e-4)


@pytest.fixture(scope='module')
def tiny():
  model = resnet.ResNet(SMALL18)
  images = jnp.asarray(np.random.RandomState(1).uniform(-1, 1, (3, 32, 32, 3)), jnp.float32)
  # Random params instead of init: init zeroes each unit's last GroupNorm scale, which
  # would hide the residual branches from these tests.
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), images))
  rng = np.random.RandomState(0)
  variables = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32), shapes)
  return model, jax.jit(model.apply), variables, images


def test_forward_is_per_example_and_affine_invariant(tiny):
  model, apply, variables, images = tiny
  out = apply(variables, images)
  assert out.shape == (3, 2, 2, 32) and bool(jnp.all(jnp.isfinite(out)))
  # No batch statistics: changing other examples leaves example 0 unchanged.
  other = images.at[1:].set(-images[1:] * 0.3)
  np.testing.assert_allclose(apply(variables, other)[0], out[0], atol=1e-5)
  # Weight standardization: an affine change of a conv kernel has no effect.
  params = jax.tree.map(lambda x: x, variables['params'])
  params['block2']['unit2']['conv1']['kernel'] = (
      params['block2']['unit2']['conv1']['kernel'] * 5.0 + 0.3)
  np.testing.assert_allclose(apply({'params': params}, images), out, atol=1e-4)
  params['block2']['unit2']['conv1']['kernel'] = params['block2']['unit2']['conv1']['kernel'][
      ::-1]  # not affine: must change the output
  assert float(jnp.max(jnp.abs(apply({'params': params}, images) - out))) > 1e-2


def test_remat_keeps_params_and_checkpoints_units():
  remat = ResNetConfig(depth=26, width=0.125, num_groups=4, remat=True)
  variables, out = _shapes(remat, 32)
  plain, plain_out = _shapes(TINY, 32)
  assert _flat(variables['params']) == _flat(plain['params']) and out == plain_out
  params = nn.meta.unbox(variables['params'])
  images = jnp.zeros((1, 32, 32, 3))
  def loss(config, p):
    return jnp.sum(resnet.ResNet(config).apply({'params': p}, images))
  assert 'remat' in str(jax.make_jaxpr(jax.grad(lambda p: loss(remat, p)))(params))


def test_bfloat16_matches_float32(tiny):
  _, apply, variables, images = tiny
  bf16 = ResNetConfig(depth=18, width=0.125, num_groups=4, dtype='bfloat16')
  out_bf16 = jax.jit(resnet.ResNet(bf16).apply)(variables, images)
  assert out_bf16.dtype == jnp.bfloat16
  out = apply(variables, images)
  np.testing.assert_allclose(out_bf16.astype(jnp.float32), out,
                             atol=0.05 * float(jnp.max(jnp.abs(out))))
