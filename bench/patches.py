"""The ResNet layers as they were before the CPU speed-ups, for side-by-side benchmarks.

`dynpt/models/resnet.py` runs 1x1 convolutions as dots, GroupNorm with per-channel
statistics and the stem's max pool as maxima of strided views (docs/performance.md,
"ResNet trunk"). `reference_layers` swaps the original flax layers back in (nn.Conv,
nn.GroupNorm, nn.max_pool; same params, same function), so one process can compile both
versions of the step and time them in alternation. The swap acts at trace time: build
*and* compile the step inside the context.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dynpt.models import resnet
from dynpt.models.cpu_kernels import conv


class _FlaxStdConv(nn.Conv):
  """The original `resnet.StdConv`: an nn.Conv standardizing its kernel on every use."""

  def param(self, name: str, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    return resnet.weight_standardize(value) if name == "kernel" else value


def _flax_conv(features: int, kernel: int, strides: int = 1, *, name: str,
               dtype: Any) -> nn.Module:
  pad = (kernel - 1) // 2
  return _FlaxStdConv(features, (kernel, kernel), (strides, strides),
                      padding=[(pad, pad)] * 2, use_bias=False, dtype=dtype,
                      param_dtype=jnp.float32, kernel_init=resnet._CONV_INIT, name=name)


def _flax_conv_layer(cpu_kernels: bool, dtype: Any, variance_eps: float | None = None):
  """`resnet.conv_layer` as it was: flax's conv whatever the model's switch says (and
  dynpt's own standardization: the reference predates the BiT trunk)."""
  del cpu_kernels, variance_eps
  return functools.partial(_flax_conv, dtype=dtype)


def _flax_norm(num_groups: int, name: str, dtype: Any, zero_scale: bool = False
               ) -> nn.Module:
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  return nn.GroupNorm(
      num_groups=num_groups, dtype=dtype, param_dtype=jnp.float32,
      scale_init=nn.with_logical_partitioning(scale_init, ("conv_out",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
      name=name)


def _flax_max_pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _autodiff_pointwise_dot(x: jax.Array, w: jax.Array) -> jax.Array:
  """`resnet.pointwise_dot` as the second and third rounds had it: gradients by autodiff."""
  return jnp.einsum("nhwc,cd->nhwd", x, w)


# Layer kinds that `reference_layers` can switch back: resnet attribute -> original.
REFERENCE = {"conv": ("conv_layer", _flax_conv_layer), "norm": ("_norm", _flax_norm),
             "pool": ("max_pool_3x3_s2", _flax_max_pool),
             "dotgrad": ("pointwise_dot", _autodiff_pointwise_dot),
             # The fourth round's kxk convs: XLA's own kernel gradient.
             "kgrad": ("spatial_conv", conv.same_conv)}
# Named versions of the trunk for A/B runs: name -> kinds switched back to the reference.
VERSIONS = {
    "reference": ("conv", "norm", "pool", "dotgrad", "kgrad"),  # before the speed-ups
    "conv1x1": ("norm", "pool"),  # only 1x1 convs as dots
    "norm": ("conv", "pool"),  # only the per-channel GroupNorm
    "pool": ("conv", "norm"),  # only the max pool as strided maxima
    "autodiff_dot": ("dotgrad", "kgrad"),  # third round: 1x1 dots, autodiff gradients
    "autodiff_kgrad": ("kgrad",),  # fourth round: XLA's own 3x3/7x7 kernel gradients
    "current": (),  # dynpt/models/resnet.py as it is
}


@contextlib.contextmanager
def reference_layers(kinds: tuple[str, ...] = tuple(REFERENCE)):
  """Within the context, `resnet.ResNet` traces with the original layers of `kinds`."""
  unknown = set(kinds) - set(REFERENCE)
  if unknown:
    raise ValueError(f"reference_layers: unknown kinds {sorted(unknown)}; "
                     f"known: {sorted(REFERENCE)}")
  saved = {attr: getattr(resnet, attr) for attr, _ in REFERENCE.values()}
  try:
    for kind in kinds:
      attr, layer = REFERENCE[kind]
      setattr(resnet, attr, layer)
    yield
  finally:
    for attr, value in saved.items():
      setattr(resnet, attr, value)
