"""Candidate speed-ups for dynpt, applied by the benchmarks to measure them before they
are proposed for the library (see docs/performance.md, "Findings").

`conv1x1_as_matmul`: XLA's CPU backend runs the backward pass of 1x1 convolutions
(input and kernel gradients) through its generic convolution path at 18-23 GFLOP/s on
this machine, while the same contraction written as a dot runs at 45-70. A 1x1
convolution is a matmul over the channel axis (after striding the input), so
`MatmulStdConv` computes exactly the same function with the same parameters.
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp

from dynpt.models import resnet


class MatmulStdConv(resnet.StdConv):
  """`resnet.StdConv` whose 1x1 kernels run as a dot over channels (same params)."""

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    if tuple(self.kernel_size) != (1, 1):
      return super().__call__(inputs)
    kernel = self.param("kernel", self.kernel_init,
                        (1, 1, inputs.shape[-1], self.features), self.param_dtype)
    sh, sw = self.strides
    x = inputs[:, ::sh, ::sw, :]  # [N, H/s, W/s, Cin]: a 1x1 conv with padding 0.
    dtype = self.dtype or jnp.result_type(inputs, kernel)
    return jnp.einsum("nhwc,cd->nhwd", x.astype(dtype), kernel[0, 0].astype(dtype))


@contextlib.contextmanager
def conv1x1_as_matmul(enabled: bool = True):
  """Within the context, ResNets built by `dynpt.models.resnet` use `MatmulStdConv`."""
  if not enabled:
    yield
    return
  original = resnet.StdConv
  resnet.StdConv = MatmulStdConv
  try:
    yield
  finally:
    resnet.StdConv = original
