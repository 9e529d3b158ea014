"""Dense contractions whose gradients are written as plain matrix products.

`matmul(x, w)` contracts the last axis of `x` [..., K] with the first of `w` [K, N]: the
function of every dense layer here (T5's projections and MLPs, the logits layer, the
visual projection) and of the ResNet's 1x1 convolutions. Its forward pass is the same
dot that autodiff would differentiate; only the backward pass is spelled out, over the
flattened rows M = prod(x.shape[:-1]):

    dx = g @ w.T      ([M, N] x [K, N] -> [M, K], contracting N, minor in both)
    dw = x.T @ g      ([M, K] x [M, N] -> [K, N], contracting M, major in both)

Why: autodiff of `dot_general` (and of `einsum`) yields the kernel gradient as a dot
with its output axes swapped, [N, K], followed by a transpose. XLA:CPU folds that
transpose into the dot's operands and then needs `g` with M minor, so every kernel
gradient first wrote `g` transposed, fused into whatever produced `g` (a GroupNorm or
MLP backward) at strides of M floats. With the two products above no operand is
transposed: a 56x56x64->256 ResNet layer's backward went from 62 to 16 ms at batch 8,
and the `small` train step from 1.84 to 1.60 s (docs/performance.md, fourth round). The
math is unchanged; TPU and GPU run `nn.Dense`'s own contraction instead
(`dynpt.models.cpu_kernels`).

`dense_dot_general` has `lax.dot_general`'s signature, for flax's `nn.Dense(...,
dot_general=...)`: it routes a dense layer's contraction to `matmul` and passes any
other contraction through to `lax.dot_general`.
"""

from __future__ import annotations

import functools

import jax
from jax import lax

Array = jax.Array


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x: Array, w: Array, precision=None) -> Array:
  """x [..., K] @ w [K, N] -> [..., N], with plain matrix-product gradients."""
  return _matmul_fwd(x, w, precision)[0]


def _matmul_fwd(x: Array, w: Array, precision):
  y = lax.dot_general(x.reshape(-1, x.shape[-1]), w, (((1,), (0,)), ((), ())),
                      precision=precision)
  return y.reshape(*x.shape[:-1], w.shape[-1]), (x, w)


def _matmul_bwd(precision, residuals, g: Array):
  x, w = residuals
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  dx = lax.dot_general(g2, w, (((1,), (1,)), ((), ())), precision=precision)  # [M, K]
  dw = lax.dot_general(x2, g2, (((0,), (0,)), ((), ())), precision=precision)  # [K, N]
  return dx.reshape(x.shape).astype(x.dtype), dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dense_dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None,
                      preferred_element_type=None) -> Array:
  """`lax.dot_general`, through `matmul` when it is a dense layer's contraction."""
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  if (rhs.ndim == 2 and tuple(lhs_contract) == (lhs.ndim - 1,)
      and tuple(rhs_contract) == (0,) and not lhs_batch and not rhs_batch
      and preferred_element_type is None):
    return matmul(lhs, rhs, precision)
  return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                         preferred_element_type=preferred_element_type)
