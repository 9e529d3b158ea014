"""ResNet image encoder (stages 1-3, output stride 16) with GroupNorm + weight standardization.

Layout follows big_vision's `models/bit.py` (ResNet v1.5: the stride sits on the 3x3
conv of the first unit of a stage) and its submodule names: `conv_root`, `gn_root`,
`block{s}/unit{u}/{conv1,gn1,conv2,gn2,conv3,gn3,conv_proj,gn_proj}`.

Why GroupNorm and weight-standardized convolutions instead of BatchNorm: batch
statistics would make an example's features depend on the other examples in its
(per-device) batch. Here a batch mixes many tasks in proportions that change every step
and is sharded over data-parallel devices, so BatchNorm would leak the mixture into the
features, differ between training and inference, and need cross-device reductions and a
`batch_stats` collection in the train state. GroupNorm + WS (as in BiT) normalizes each
example on its own, so the model is a pure function of its params and the train state
has no `batch_stats`.

Depths: 18 uses basic blocks (two 3x3 convs, as in the original ResNet-18); 26, 50 and
101 use bottleneck blocks. Only stages 1-3 are built: the model consumes the stage-3
("conv4") map, e.g. 14x14x1024 for ResNet-50 at 224 px.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dynpt.models.configs import ResNetConfig

Array = jax.Array

# Units per stage for stages 1-3 (stage 4 is never built).
STAGE_UNITS = {18: (2, 2, 2), 26: (2, 2, 2), 50: (3, 4, 6), 101: (3, 4, 23)}
_CONV_AXES = ('conv_height', 'conv_width', 'conv_in', 'conv_out')
_CONV_INIT = nn.with_logical_partitioning(nn.initializers.he_normal(), _CONV_AXES)


def weight_standardize(kernel: Array, eps: float = 1e-5) -> Array:
  """Standardizes a conv kernel [h, w, in, out] to zero mean, unit std per output."""
  kernel = kernel - jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
  return kernel / (jnp.std(kernel, axis=(0, 1, 2), keepdims=True) + eps)


class StdConv(nn.Conv):
  """A bias-free nn.Conv whose kernel is weight-standardized on every use."""

  def param(self, name: str, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    return weight_standardize(value) if name == 'kernel' else value


def _conv(features: int, kernel: int, strides: int, name: str, dtype: Any) -> StdConv:
  pad = (kernel - 1) // 2
  return StdConv(features, (kernel, kernel), (strides, strides), padding=[(pad, pad)] * 2,
                 use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=_CONV_INIT, name=name)


def _norm(num_groups: int, name: str, dtype: Any, zero_scale: bool = False) -> nn.GroupNorm:
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  return nn.GroupNorm(
      num_groups=num_groups, dtype=dtype, param_dtype=jnp.float32,
      scale_init=nn.with_logical_partitioning(scale_init, ('conv_out',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('conv_out',)), name=name)


class BottleneckUnit(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 residual unit with 4x channel expansion."""
  nmid: int
  strides: int
  num_groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    nout = self.nmid * 4
    residual = x
    if x.shape[-1] != nout or self.strides != 1:
      residual = _conv(nout, 1, self.strides, 'conv_proj', self.dtype)(x)
      residual = _norm(self.num_groups, 'gn_proj', self.dtype)(residual)
    y = _conv(self.nmid, 1, 1, 'conv1', self.dtype)(x)
    y = nn.relu(_norm(self.num_groups, 'gn1', self.dtype)(y))
    y = _conv(self.nmid, 3, self.strides, 'conv2', self.dtype)(y)
    y = nn.relu(_norm(self.num_groups, 'gn2', self.dtype)(y))
    y = _conv(nout, 1, 1, 'conv3', self.dtype)(y)
    # Zero-initialized last scale: each unit starts as (a projection of) the identity.
    y = _norm(self.num_groups, 'gn3', self.dtype, zero_scale=True)(y)
    return nn.relu(residual + y)


class BasicUnit(nn.Module):
  """3x3 (strided) -> 3x3 residual unit, used by ResNet-18."""
  nmid: int
  strides: int
  num_groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    residual = x
    if x.shape[-1] != self.nmid or self.strides != 1:
      residual = _conv(self.nmid, 1, self.strides, 'conv_proj', self.dtype)(x)
      residual = _norm(self.num_groups, 'gn_proj', self.dtype)(residual)
    y = _conv(self.nmid, 3, self.strides, 'conv1', self.dtype)(x)
    y = nn.relu(_norm(self.num_groups, 'gn1', self.dtype)(y))
    y = _conv(self.nmid, 3, 1, 'conv2', self.dtype)(y)
    y = _norm(self.num_groups, 'gn2', self.dtype, zero_scale=True)(y)
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`num_units` residual units named unit1..unitN; the first one may downsample."""
  unit_cls: Any
  num_units: int
  nmid: int
  first_strides: int
  num_groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for i in range(self.num_units):
      x = self.unit_cls(nmid=self.nmid, strides=self.first_strides if i == 0 else 1,
                        num_groups=self.num_groups, dtype=self.dtype, name=f'unit{i + 1}')(x)
    return x


def output_channels(config: ResNetConfig) -> int:
  """Channels of the stage-3 feature map (1024 for ResNet-50 at width 1)."""
  base = int(64 * config.width)
  return base * 4 * (1 if config.depth == 18 else 4)


def _check_config(config: ResNetConfig) -> None:
  if config.depth not in STAGE_UNITS:
    raise ValueError(f'ResNetConfig.depth must be one of {sorted(STAGE_UNITS)}, '
                     f'got {config.depth}')
  base = int(64 * config.width)
  if base < 1:
    raise ValueError(f'ResNetConfig.width={config.width} leaves no channels')
  expansion = 1 if config.depth == 18 else 4
  channels = {base * 2 ** s for s in range(3)} | {base * 2 ** s * expansion for s in range(3)}
  bad = sorted(c for c in channels if c % config.num_groups)
  if bad:
    raise ValueError(f'ResNetConfig.num_groups={config.num_groups} does not divide the '
                     f'channel counts {bad} (width={config.width})')


class ResNet(nn.Module):
  """Images [N, H, W, 3] -> stage-3 feature map [N, ceil(H/16), ceil(W/16), C]."""
  config: ResNetConfig

  @nn.compact
  def __call__(self, images: Array) -> Array:
    cfg = self.config
    _check_config(cfg)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'ResNet expects images [N, H, W, 3], got shape {images.shape}')
    dtype = jnp.dtype(cfg.dtype)
    base = int(64 * cfg.width)
    unit_cls = BasicUnit if cfg.depth == 18 else BottleneckUnit
    if cfg.remat:
      unit_cls = nn.remat(unit_cls)

    x = _conv(base, 7, 2, 'conv_root', dtype)(jnp.asarray(images, dtype))
    x = nn.relu(_norm(cfg.num_groups, 'gn_root', dtype)(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # stride 4
    for stage, num_units in enumerate(STAGE_UNITS[cfg.depth]):
      x = ResNetStage(unit_cls=unit_cls, num_units=num_units, nmid=base * 2 ** stage,
                      first_strides=1 if stage == 0 else 2, num_groups=cfg.num_groups,
                      dtype=dtype, name=f'block{stage + 1}')(x)
    return nn.with_logical_constraint(x, ('batch', None, None, None))
