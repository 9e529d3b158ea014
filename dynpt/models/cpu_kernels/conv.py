"""A 'same'-padded 2-D convolution whose kernel gradient is one matrix product (XLA:CPU).

`conv2d(x, w, strides)` is `lax.conv_general_dilated` over NHWC x HWIO with padding
(k - 1) // 2, the function of the ResNet's 3x3 and 7x7 convolutions. The forward pass
and the input gradient are XLA's own convolutions; only the kernel gradient is spelled
out, as im2col:

    patches[p, (i, j, c)] = x_padded[n, s*h + i, s*w + j, c]   over pixels p = (n, h, w)
    dw[(i, j, c), o]      = sum_p patches[p, (i, j, c)] * g[p, o]

Why: XLA:CPU computes a convolution's kernel gradient as another convolution over
operands it first transposes to batch-minor layouts, and runs it at 35-70 GFLOP/s on
the ResNet's 56x56x64 and 28x28x128 maps (batch 8), 3-4x slower than the forward
convolution of the same FLOPs. Building the k*k-times larger patch matrix costs about
two elementwise passes over it, and the product then runs at matrix speed: the kernel
gradient of a 56x56x64 3x3 layer goes from 48 to 30 ms, of the 7x7 stem from 48 to 33
ms (batch 8, docs/performance.md, fifth round).

Where it applies (`im2col_applies`): layers with at least 64 output channels and either
a wide kernel (k >= 5: the 7x7 stem, 1.5-1.8x faster at every batch measured) or at
least 6272 output pixels (N * Ho * Wo) and a patch matrix of at least 6272 x 1152
entries (29 MB in fp32). Those bounds are measured, not derived:
XLA:CPU's own kernel gradient runs at matrix speed on small maps and batches (8x14x14x256,
4x28x28x128, 2x56x56x64: im2col 0.7-0.85x there) and on few output channels (the toy
trunk's 8-32: 0.35-0.8x), and slows down 3-4x past them (bench/results, docs/performance.md).
On TPU/GPU, whose convolution units compute kernel gradients at full speed, materializing
patches would only cost memory bandwidth, so the ResNet calls `conv2d` only when the model
is built with the CPU kernels (`dynpt.models.cpu_kernels`). The function, params and math
are the same either way.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# When the im2col kernel gradient is used (see the module doc and `im2col_applies`).
IM2COL_MIN_OUT_CHANNELS = 64
IM2COL_MIN_KERNEL_SIZE = 5  # Wide kernels (the stem) always, given the channels.
IM2COL_MIN_PIXELS = 6272  # N * Ho * Wo, e.g. 8 x 28 x 28.
IM2COL_MIN_PATCH_ENTRIES = 6272 * 1152  # N * Ho * Wo * k * k * C_in.
_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def same_conv(x: Array, w: Array, strides: int) -> Array:
  """XLA's 'same' convolution, NHWC x HWIO, padding (k - 1) // 2: gradients by autodiff."""
  pad = (w.shape[0] - 1) // 2
  return lax.conv_general_dilated(x, w, (strides, strides), [(pad, pad)] * 2,
                                  dimension_numbers=_DIMENSION_NUMBERS)


def _out_size(size: int, strides: int) -> int:
  return -(-size // strides)


def im2col_applies(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], strides: int
                   ) -> bool:
  """Whether `conv2d` computes this layer's kernel gradient by im2col (see module doc)."""
  k, _, c_in, c_out = kernel_shape
  if c_out < IM2COL_MIN_OUT_CHANNELS:
    return False
  if k >= IM2COL_MIN_KERNEL_SIZE:
    return True
  n, h, w = x_shape[:3]
  pixels = n * _out_size(h, strides) * _out_size(w, strides)
  return pixels >= IM2COL_MIN_PIXELS and pixels * k * k * c_in >= IM2COL_MIN_PATCH_ENTRIES


def patches(x: Array, kernel_size: int, strides: int, out_hw: tuple[int, int]) -> Array:
  """The im2col matrix [N * Ho * Wo, k * k * C] of a 'same'-padded conv, (i, j, c) order."""
  n, _, _, c = x.shape
  k, s, pad = kernel_size, strides, (kernel_size - 1) // 2
  ho, wo = out_hw
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  taps = [lax.slice(xp, (0, i, j, 0), (n, i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, c),
                    (1, s, s, 1)) for i in range(k) for j in range(k)]
  return jnp.stack(taps, axis=3).reshape(n * ho * wo, k * k * c)


def kernel_gradient(x: Array, g: Array, kernel_shape: tuple[int, ...], strides: int
                    ) -> Array:
  """d(sum(conv2d(x, w) * g)) / dw by im2col: one [k*k*C, P] x [P, O] product."""
  k, _, c_in, c_out = kernel_shape
  n, ho, wo, _ = g.shape
  cols = patches(x, k, strides, (ho, wo))  # [P, k*k*C]
  dw_t = lax.dot_general(g.reshape(n * ho * wo, c_out), cols,
                         (((0,), (0,)), ((), ())))  # [O, k*k*C]
  return dw_t.T.reshape(k, k, c_in, c_out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d_im2col(x: Array, w: Array, strides: int) -> Array:
  return same_conv(x, w, strides)


def _conv2d_im2col_fwd(x: Array, w: Array, strides: int):
  return same_conv(x, w, strides), (x, w)


def _conv2d_im2col_bwd(strides: int, residuals, g: Array):
  x, w = residuals
  # The input gradient is autodiff's (a transposed convolution); XLA drops it when x
  # needs none, as for the stem's images.
  dx = jax.vjp(lambda x: same_conv(x, w, strides), x)[1](g)[0]
  dw = kernel_gradient(x, g, w.shape, strides)
  return dx, dw.astype(w.dtype)


_conv2d_im2col.defvjp(_conv2d_im2col_fwd, _conv2d_im2col_bwd)


def conv2d(x: Array, w: Array, strides: int = 1) -> Array:
  """'Same' conv [N, H, W, C] x [k, k, C, O] -> [N, ceil(H/s), ceil(W/s), O].

  The kernel gradient is an im2col matrix product where `im2col_applies`, autodiff's
  elsewhere; values and gradients are the same function either way.
  """
  if w.shape[0] != w.shape[1] or w.shape[0] % 2 != 1:
    raise ValueError(f'conv2d: kernel must be square with an odd size, got {w.shape}')
  if im2col_applies(x.shape, w.shape, strides):
    return _conv2d_im2col(x, w, strides)
  return same_conv(x, w, strides)
