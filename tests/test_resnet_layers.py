"""The CPU-fast ResNet layers compute what the flax layers they replace compute.

`resnet.StdConv` (XLA's convolution) and `resnet.CpuStdConv` (1x1 kernels as dots), `resnet.GroupNorm` (per-channel statistics first) and `resnet.max_pool_3x3_s2` (maxima of strided views) are checked against
`lax.conv_general_dilated`, `nn.GroupNorm` and `nn.max_pool`, forward and backward.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dynpt.models import resnet


def _images(shape, seed=0, relu=False):
  x = np.random.RandomState(seed).normal(0.5, 2.0, shape).astype(np.float32)
  return jnp.asarray(np.maximum(x, 0) if relu else x)


@pytest.mark.parametrize('kernel,strides,size,dot_min_channels,cpu_kernels', [
    (1, 1, 6, 1, True), (1, 2, 7, 1, True), (1, 2, 8, 1, True), (1, 2, 7, 64, True),
    (3, 2, 7, 1, True), (1, 2, 7, 1, False), (3, 2, 7, 1, False)])
def test_std_conv_matches_lax_conv(kernel, strides, size, dot_min_channels, cpu_kernels):
  x = _images((2, size, size, 5))
  if cpu_kernels:
    conv = resnet.CpuStdConv(6, kernel, strides, dot_min_channels=dot_min_channels)
  else:
    conv = resnet.StdConv(6, kernel, strides)
  params = nn.meta.unbox(conv.init(jax.random.key(0), x))
  assert params['params']['kernel'].shape == (kernel, kernel, 5, 6)
  pad = (kernel - 1) // 2

  def reference(p, x):
    k = resnet.weight_standardize(p['params']['kernel'])
    return lax.conv_general_dilated(x, k, (strides, strides), [(pad, pad)] * 2,
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  out = jax.jit(conv.apply)(params, x)
  np.testing.assert_allclose(out, jax.jit(reference)(params, x), rtol=1e-5, atol=1e-5)
  assert out.shape == (2, -(-size // strides), -(-size // strides), 6)
  grads = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(conv.apply(p, x))),
                          argnums=(0, 1)))(params, x)
  expected = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(reference(p, x))),
                              argnums=(0, 1)))(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
               grads, expected)


@pytest.mark.parametrize('channels,groups', [(8, 4), (6, 2), (4, 4)])
def test_group_norm_matches_flax(channels, groups):
  x = _images((3, 5, 4, channels), seed=1) * 3 + 2
  ours, theirs = resnet.GroupNorm(num_groups=groups), nn.GroupNorm(num_groups=groups)
  params = nn.meta.unbox(ours.init(jax.random.key(0), x))
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, theirs.init(jax.random.key(0), x))
  rng = np.random.RandomState(2)
  params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  np.testing.assert_allclose(jax.jit(ours.apply)(params, x), jax.jit(theirs.apply)(params, x),
                             atol=2e-5)

  def grad(module):
    return jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.cos(module.apply(p, x)) * x),
                            argnums=(0, 1)))
  grads, expected = grad(ours)(params, x), grad(theirs)(params, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
               grads, expected)


def test_group_norm_rejects_groups_not_dividing_channels():
  with pytest.raises(ValueError, match='num_groups=4 does not divide 6'):
    resnet.GroupNorm(num_groups=4).init(jax.random.key(0), jnp.zeros((1, 2, 2, 6)))


def test_group_norm_zero_scale_dtype_and_logical_axes():
  x = _images((2, 3, 3, 4))
  norm = resnet.GroupNorm(num_groups=2, zero_scale=True, dtype=jnp.bfloat16)
  variables = norm.init(jax.random.key(0), x)
  assert tuple(nn.get_partition_spec(variables)['params']['scale']) == ('conv_out',)
  params = nn.meta.unbox(variables)
  assert not np.any(params['params']['scale'])
  out = norm.apply(params, x)
  assert out.dtype == jnp.bfloat16 and not np.any(np.asarray(out, np.float32))


def _flax_max_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


@pytest.mark.parametrize('height,width,min_channels', [(1, 1, 1), (2, 5, 1), (7, 8, 1),
                                                     (7, 8, 64)])
def test_max_pool_matches_flax(height, width, min_channels):
  pre = _images((2, height, width, 3), seed=height) - 0.5

  @jax.jit
  def both(pre):
    # As in the stem, a ReLU precedes the pool: ties (zeros) get no gradient either way.
    fns = (lambda x: resnet.max_pool_3x3_s2(x, min_channels), _flax_max_pool)
    outs = [fn(jax.nn.relu(pre)) for fn in fns]
    grads = [jax.grad(lambda p, fn=fn: jnp.sum(jnp.sin(fn(jax.nn.relu(p)))))(pre)
             for fn in fns]
    return outs, grads
  (out, expected), (grad, expected_grad) = both(pre)
  assert out.shape == (2, -(-height // 2), -(-width // 2), 3)
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_allclose(grad, expected_grad, atol=1e-6)
