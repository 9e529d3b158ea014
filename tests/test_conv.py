"""`dynpt.models.cpu_kernels.conv`: the im2col kernel gradient is autodiff's, and the rule that picks it.

The custom rule only changes how the kernel gradient is computed; these tests hold its
values, input gradients and dtypes to autodiff of `lax.conv_general_dilated` for the
kernel sizes and strides the ResNet uses (odd and even maps, so the 'same' padding's
edges are covered), check the patch matrix against a loop over taps, and pin where the
rule applies (the measured bounds; the model uses it only with `cpu_kernels`).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynpt.models import configs as model_configs
from dynpt.models import resnet
from dynpt.models.cpu_kernels import conv


def _normal(shape, seed, dtype=jnp.float32):
  return jnp.asarray(np.random.RandomState(seed).normal(0.0, 1.0, shape), dtype)


@pytest.mark.parametrize('n,h,c_in,c_out,k,s', [
    (2, 9, 5, 4, 3, 1), (2, 9, 5, 4, 3, 2), (2, 8, 5, 4, 3, 2), (2, 11, 3, 6, 7, 2),
    (1, 6, 4, 3, 5, 1)])
@pytest.mark.parametrize('dtype,tol', [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_im2col_conv_values_and_gradients_match_autodiff(n, h, c_in, c_out, k, s, dtype,
                                                         tol):
  x, w = _normal((n, h, h, c_in), 0, dtype), _normal((k, k, c_in, c_out), 1, dtype)
  out, vjp = jax.vjp(jax.jit(conv._conv2d_im2col, static_argnums=2), x, w, s)
  expected, expected_vjp = jax.vjp(lambda x, w: conv.same_conv(x, w, s), x, w)
  assert out.shape == (n, -(-h // s), -(-h // s), c_out) and out.dtype == dtype
  np.testing.assert_allclose(np.float32(out), np.float32(expected), rtol=tol, atol=tol)
  g = _normal(out.shape, 2, dtype)
  for got, want in zip(vjp(g)[:2], expected_vjp(g)):
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = float(jnp.max(jnp.abs(jnp.float32(want))))
    np.testing.assert_allclose(np.float32(got), np.float32(want), atol=tol * scale)


def test_patches_are_the_taps_of_the_padded_input():
  x = _normal((2, 5, 4, 3), 0)
  k, s = 3, 2
  cols = conv.patches(x, k, s, (3, 2))
  xp = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.stack([xp[b, s * i + di, s * j + dj, :]
                   for b in range(2) for i in range(3) for j in range(2)
                   for di in range(k) for dj in range(k)]).reshape(12, k * k * 3)
  np.testing.assert_array_equal(np.asarray(cols), want)


def test_kernel_gradient_of_a_scalar_loss_under_jit():
  # As the train step uses it: jit(grad(loss of the kernel)) through the custom rule.
  x = _normal((2, 10, 10, 4), 0)
  loss = lambda w: jnp.sum(jnp.sin(conv._conv2d_im2col(x, w, 2)))  # noqa: E731
  ref = lambda w: jnp.sum(jnp.sin(conv.same_conv(x, w, 2)))  # noqa: E731
  w = _normal((3, 3, 4, 6), 1)
  np.testing.assert_allclose(jax.jit(jax.grad(loss))(w), jax.grad(ref)(w),
                             rtol=1e-5, atol=1e-5)


def test_rule_applies_within_the_measured_bounds():
  applies = conv.im2col_applies
  # The small trunk at batch 8: stem and stages 1-2 yes, stage 3 (14x14x256) no.
  assert applies((8, 224, 224, 3), (7, 7, 3, 64), 2)
  assert applies((8, 56, 56, 64), (3, 3, 64, 64), 1)
  assert applies((8, 56, 56, 128), (3, 3, 128, 128), 2)
  assert applies((8, 28, 28, 128), (3, 3, 128, 128), 1)
  assert not applies((8, 14, 14, 256), (3, 3, 256, 256), 1)
  # Few output channels (the toy trunk) and small batches stay with XLA's own gradient.
  assert not applies((96, 64, 64, 3), (7, 7, 3, 8), 2)
  assert not applies((96, 16, 16, 8), (3, 3, 8, 8), 1)
  assert not applies((2, 56, 56, 64), (3, 3, 64, 64), 1)
  assert not applies((4, 28, 28, 128), (3, 3, 128, 128), 1)


def test_conv2d_routes_by_the_rule_and_computes_the_same_function(monkeypatch):
  calls = []
  original = conv._conv2d_im2col
  monkeypatch.setattr(conv, '_conv2d_im2col',
                      lambda x, w, s: calls.append(w.shape) or original(x, w, s))
  x, w = _normal((2, 8, 8, 4), 0), _normal((3, 3, 4, 5), 1)
  small = conv.conv2d(x, w, 1)
  assert not calls  # Below the bounds: XLA's convolution, autodiff's gradient.
  monkeypatch.setattr(conv, 'IM2COL_MIN_OUT_CHANNELS', 1)
  monkeypatch.setattr(conv, 'IM2COL_MIN_PIXELS', 1)
  monkeypatch.setattr(conv, 'IM2COL_MIN_PATCH_ENTRIES', 1)
  routed = conv.conv2d(x, w, 1)
  assert calls == [(3, 3, 4, 5)]
  np.testing.assert_allclose(routed, small, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match='odd size'):
    conv.conv2d(x, _normal((2, 2, 4, 5), 1), 1)


def test_resnet_param_gradients_are_the_same_with_the_im2col_rule(monkeypatch):
  cfg = model_configs.ResNetConfig(depth=26, width=0.125, num_groups=4, cpu_kernels=True)
  model = resnet.ResNet(cfg)
  images = _normal((2, 32, 32, 3), 0)
  params = model.init(jax.random.PRNGKey(0), images)
  loss = lambda p: jnp.sum(jnp.square(model.apply(p, images)))  # noqa: E731
  without = jax.jit(jax.grad(loss))(params)
  for name, value in (('IM2COL_MIN_OUT_CHANNELS', 1), ('IM2COL_MIN_PIXELS', 1),
                      ('IM2COL_MIN_PATCH_ENTRIES', 1)):
    monkeypatch.setattr(conv, name, value)
  with_rule = jax.jit(jax.grad(loss))(params)
  for a, b in zip(jax.tree.leaves(with_rule), jax.tree.leaves(without)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
