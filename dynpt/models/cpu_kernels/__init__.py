"""XLA:CPU kernels for the model's contractions, used only when a run is on CPU devices.

Two custom-VJP kernels live here: `matmul` (a dense contraction whose gradients are two
plain matrix products) and `conv` (a 'same' convolution whose kernel gradient is an im2col
matrix product). Each module says why XLA:CPU needs it. Neither changes a param or the
function computed: they spell out the backward pass in a form XLA:CPU runs faster.

On TPU and GPU the model is plain flax layers (`nn.Dense`'s own `lax.dot_general`, XLA's
convolution), which XLA fuses, shards and rematerialises as it does for any flax model.
So the choice is made once, by the caller that builds a model for a set of devices:
`ModelConfig.cpu_kernels` ('auto' | 'on' | 'off') -> `resolve` -> a bool in the frozen
model config (`T5Config.cpu_kernels`, `ResNetConfig.cpu_kernels`), which the layers read.
Nothing in the model asks `jax.default_backend()` while it is traced.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
from jax import lax

from dynpt.models.cpu_kernels import matmul

# `ModelConfig.cpu_kernels`: 'auto' uses the kernels exactly when the devices are CPUs.
MODES = ('auto', 'on', 'off')


def resolve(mode: str, devices: Sequence[jax.Device] | None = None) -> bool:
  """Whether a model for `devices` (default: `jax.devices()`) uses the CPU kernels.

  Args:
    mode: 'on', 'off', or 'auto' (on iff every device is a CPU device).
    devices: the devices of the mesh the model runs on; only read for 'auto'.

  Raises:
    ValueError: for a mode outside `MODES`.
  """
  if mode not in MODES:
    raise ValueError(f'cpu_kernels={mode!r}: expected one of {", ".join(MODES)}')
  if mode != 'auto':
    return mode == 'on'
  devices = list(jax.devices() if devices is None else devices)
  return bool(devices) and all(d.platform == 'cpu' for d in devices)


def dense_dot_general(enabled: bool) -> Callable:
  """The `dot_general` of a dense layer: the `matmul` kernel when enabled, else lax's."""
  return matmul.dense_dot_general if enabled else lax.dot_general
