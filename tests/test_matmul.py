"""`dynpt.models.cpu_kernels.matmul`: the dense contraction with hand-written gradients is autodiff's.

Its backward pass is two plain matrix products instead of autodiff's; these tests hold it
to autodiff's values and dtypes for every shape the model uses it with, and check that
`dense_dot_general` only takes over a dense layer's contraction.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from dynpt.models.cpu_kernels import matmul


def _normal(shape, seed, dtype=jnp.float32):
  return jnp.asarray(np.random.RandomState(seed).normal(0.0, 1.0, shape), dtype)


@pytest.mark.parametrize('x_shape', [(5, 7), (3, 4, 7), (2, 3, 4, 7)])
@pytest.mark.parametrize('dtype,tol', [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_matmul_values_and_gradients_match_autodiff(x_shape, dtype, tol):
  x, w = _normal(x_shape, 0, dtype), _normal((7, 6), 1, dtype)
  g = _normal(x_shape[:-1] + (6,), 2, dtype)
  out, vjp = jax.vjp(jax.jit(matmul.matmul), x, w)
  expected, expected_vjp = jax.vjp(lambda x, w: jnp.tensordot(x, w, axes=1), x, w)
  assert out.shape == x_shape[:-1] + (6,) and out.dtype == dtype
  np.testing.assert_allclose(np.float32(out), np.float32(expected), rtol=tol, atol=tol)
  for got, want in zip(vjp(g), expected_vjp(g)):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=tol, atol=tol * 10)


def test_matmul_gradient_of_a_scalar_loss_under_jit():
  # As the train step uses it: jit(grad(loss)) through the custom VJP.
  x, w = _normal((4, 3, 5), 0), _normal((5, 2), 1)
  loss = lambda w: jnp.sum(jnp.sin(matmul.matmul(x, w)))  # noqa: E731
  ref = lambda w: jnp.sum(jnp.sin(jnp.tensordot(x, w, axes=1)))  # noqa: E731
  np.testing.assert_allclose(jax.jit(jax.grad(loss))(w), jax.grad(ref)(w),
                             rtol=1e-5, atol=1e-5)


def test_dense_dot_general_routes_only_dense_contractions(monkeypatch):
  calls = []
  real = matmul.matmul
  monkeypatch.setattr(matmul, 'matmul', lambda *a: calls.append(1) or real(*a))
  x, w = _normal((2, 3, 4), 0), _normal((4, 5), 1)
  dense = (((2,), (0,)), ((), ()))
  np.testing.assert_allclose(matmul.dense_dot_general(x, w, dense),
                             lax.dot_general(x, w, dense), rtol=1e-6)
  assert calls == [1]
  # A batched contraction (attention-like) and one with a preferred type pass through.
  q, k = _normal((2, 3, 4), 2), _normal((2, 5, 4), 3)
  batched = (((2,), (2,)), ((0,), (0,)))
  np.testing.assert_allclose(matmul.dense_dot_general(q, k, batched),
                             lax.dot_general(q, k, batched), rtol=1e-6)
  out = matmul.dense_dot_general(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), dense,
                                 preferred_element_type=jnp.float32)
  assert out.dtype == jnp.float32 and calls == [1]


def test_flax_dense_with_dense_dot_general_keeps_params_and_function():
  x = _normal((2, 3, 4), 0)
  plain = nn.Dense(5, use_bias=True)
  routed = nn.Dense(5, use_bias=True, dot_general=matmul.dense_dot_general)
  params = plain.init(jax.random.key(0), x)
  assert jax.tree.structure(params) == jax.tree.structure(routed.init(jax.random.key(0), x))
  np.testing.assert_allclose(routed.apply(params, x), plain.apply(params, x), rtol=1e-6)
  grad = lambda m: jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2))(params)  # noqa: E731
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               grad(routed), grad(plain))
