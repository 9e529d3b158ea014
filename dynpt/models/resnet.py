"""ResNet image encoder (stages 1-3, output stride 16) with GroupNorm + weight standardization.

Layout follows big_vision's `models/bit.py` (ResNet v1.5: the stride sits on the 3x3
conv of the first unit of a stage) and its submodule names: `conv_root`, `gn_root`,
`block{s}/unit{u}/{conv1,gn1,conv2,gn2,conv3,gn3,conv_proj,gn_proj}`.
`ResNetConfig.preactivation` builds BiT's own pre-activation ResNet v2 instead (big_vision's
`models/bit_paper.py`: `conv_root` alone, then units `gn1` -> relu -> `conv1` -> `gn2`
-> relu -> `conv2` -> `gn3` -> relu -> `conv3` plus a `conv_proj` shortcut of the
pre-activated input; `PreActBottleneckUnit`), so the published BiT-M weights compute
BiT's features (`dynpt.interop.bit`).

Why GroupNorm and weight-standardized convolutions instead of BatchNorm: batch
statistics would make an example's features depend on the other examples in its
(per-device) batch. Here a batch mixes many tasks in proportions that change every step
and is sharded over data-parallel devices, so BatchNorm would leak the mixture into the
features, differ between training and inference, and need cross-device reductions and a
`batch_stats` collection in the train state. GroupNorm + WS (as in BiT) normalizes each
example on its own, so the model is a pure function of its params and the train state
has no `batch_stats`.

The layers are written for speed on XLA:CPU without changing the function or the params
(`GroupNorm` reduces per channel before grouping, `max_pool_3x3_s2` takes maxima of
strided views; both are plain jnp that every backend fuses). The convolution layer is
chosen once, where the trunk is built (`conv_layer`), and handed to every unit as its
`conv` (as flax's ResNet example does): `StdConv`, XLA's own convolution, as on TPU and
GPU; or with `ResNetConfig.cpu_kernels`, `CpuStdConv`, which runs 1x1 kernels through the
`matmul` kernel and takes the kernel gradient of larger ones as an im2col product
(`dynpt.models.cpu_kernels`). Both have the same params. See each layer and
docs/performance.md.

Depths: 18 uses basic blocks (two 3x3 convs, as in the original ResNet-18); 26, 50 and
101 use bottleneck blocks. Only stages 1-3 are built: the model consumes the stage-3
("conv4") map, e.g. 14x14x1024 for ResNet-50 at 224 px.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dynpt.models.cpu_kernels import conv as conv_lib
from dynpt.models.cpu_kernels import matmul
from dynpt.models.configs import ResNetConfig

Array = jax.Array
ModuleDef = Callable[..., nn.Module]  # A layer constructor: (features, kernel, strides, name=).

# Units per stage for stages 1-3 (stage 4 is never built).
STAGE_UNITS = {18: (2, 2, 2), 26: (2, 2, 2), 50: (3, 4, 6), 101: (3, 4, 23)}
_CONV_AXES = ('conv_height', 'conv_width', 'conv_in', 'conv_out')
_CONV_INIT = nn.with_logical_partitioning(nn.initializers.he_normal(), _CONV_AXES)
# 1x1 convs with at least this many input and output channels run as dots: all of them.
# With the malloc settings of `dynpt.hostalloc` the dot also wins at the `tiny` trunk's
# 8-32 channels (toy step 1.03x: the conv kernel gradients wrote the activations
# transposed batch-minor, at 32 KB strides); before those settings the two were even
# there and the threshold was 64 (docs/performance.md). `CpuStdConv.dot_min_channels`
# keeps the convolution path reachable for A/B runs and for its tests.
FAST_PATH_MIN_CHANNELS = 1


def pointwise_dot(x: Array, w: Array) -> Array:
  """A 1x1 convolution as a dot over channels: [N, H, W, C] x [C, D] -> [N, H, W, D].

  `matmul.matmul`, whose gradients are two plain matrix products over the N*H*W pixels
  (autodiff's made XLA:CPU write each GroupNorm-backward output transposed first).
  """
  return matmul.matmul(x, w)


def spatial_conv(x: Array, w: Array, strides: int) -> Array:
  """A 'same'-padded kxk convolution (k > 1): `conv.conv2d`, whose kernel gradient is an
  im2col matrix product on CPU (XLA:CPU's own ran 3-4x slower than the forward pass)."""
  return conv_lib.conv2d(x, w, strides)


def weight_standardize(kernel: Array, eps: float = 1e-5,
                       variance_eps: float | None = None) -> Array:
  """Standardizes a conv kernel [h, w, in, out] to zero mean, unit std per output.

  Divides by `std + eps`, or with `variance_eps` by `sqrt(var + variance_eps)` as the
  BiT release does (`1e-10` there). The two differ by 5% on kernels with std 0.01, so a
  trunk loading BiT's weights has to use BiT's form to compute BiT's function.
  """
  kernel = kernel - jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
  if variance_eps is not None:
    return kernel * lax.rsqrt(jnp.mean(jnp.square(kernel), axis=(0, 1, 2), keepdims=True)
                              + variance_eps)
  return kernel / (jnp.std(kernel, axis=(0, 1, 2), keepdims=True) + eps)


class StdConv(nn.Module):
  """A bias-free, 'same'-padded conv whose kernel is weight-standardized on every use.

  The kernel param is [kernel, kernel, in, out] as in `nn.Conv`, and the conv is XLA's
  own (`lax.conv_general_dilated`), which TPU and GPU run best.
  """
  features: int
  kernel_size: int
  strides: int = 1
  dtype: Any = jnp.float32
  variance_eps: float | None = None  # BiT's standardization (`weight_standardize`).

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    kernel = self.param('kernel', _CONV_INIT, (k, k, x.shape[-1], self.features),
                        jnp.float32)
    kernel = weight_standardize(kernel, variance_eps=self.variance_eps).astype(
        self.dtype)  # [k, k, in, out]
    return self._convolve(x.astype(self.dtype), kernel)  # x: [N, H, W, in]

  def _convolve(self, x: Array, kernel: Array) -> Array:
    return conv_lib.same_conv(x, kernel, self.strides)


class CpuStdConv(StdConv):
  """`StdConv` through the XLA:CPU kernels: the same params and function.

  A 1x1 kernel with at least `dot_min_channels` input and output channels (default:
  always) runs as the `matmul` kernel over channels on the strided input: XLA:CPU sends
  the backward pass of 1x1 convolutions through its generic convolution code (slowest
  on large maps), while the dot's gradients are dots too (docs/performance.md). Larger
  kernels run as XLA's convolution through `spatial_conv`, whose kernel gradient is an
  im2col matrix product where that is faster (`dynpt.models.cpu_kernels.conv`).
  """
  dot_min_channels: int = FAST_PATH_MIN_CHANNELS

  def _convolve(self, x: Array, kernel: Array) -> Array:
    k, s = self.kernel_size, self.strides
    if k == 1 and min(x.shape[-1], self.features) >= self.dot_min_channels:
      # A 1x1 conv without padding reads every s-th pixel: [N, ceil(H/s), ceil(W/s), in].
      return pointwise_dot(x[:, ::s, ::s], kernel[0, 0])
    if k == 1:  # A 1x1 conv below dot_min_channels: XLA's convolution.
      return conv_lib.same_conv(x, kernel, s)
    return spatial_conv(x, kernel, s)


def conv_layer(cpu_kernels: bool, dtype: Any, variance_eps: float | None = None
               ) -> ModuleDef:
  """The trunk's convolution layer, chosen once for every layer it builds.

  Args:
    cpu_kernels: `ResNetConfig.cpu_kernels`: `CpuStdConv`, else `StdConv`.
    dtype: the compute dtype.
    variance_eps: BiT's weight standardization (`weight_standardize`), or None.

  Returns:
    `(features, kernel_size, strides, name=...) -> module`.
  """
  return functools.partial(CpuStdConv if cpu_kernels else StdConv, dtype=dtype,
                           variance_eps=variance_eps)


class GroupNorm(nn.Module):
  """GroupNorm over [N, H, W, C] (statistics per example and group), params `scale`, `bias`.

  Computes the same function as `nn.GroupNorm` (float32 statistics, one-pass variance
  clipped at zero, epsilon 1e-6) but reduces each channel over H x W first and only then
  combines the channels of a group in a tiny [N, C] array. `nn.GroupNorm` reshapes the
  map to [N, H, W, G, C/G] and reduces over the last axis, a 2-wide minor dimension at
  64 channels and 32 groups: its fwd+bwd is 2-4x slower on CPU (docs/performance.md).
  """
  num_groups: int
  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  zero_scale: bool = False

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n, c, g = x.shape[0], x.shape[-1], self.num_groups
    if c % g:
      raise ValueError(f'GroupNorm {self.name}: num_groups={g} does not divide {c} channels')
    scale_init = nn.initializers.zeros if self.zero_scale else nn.initializers.ones
    scale = self.param('scale', nn.with_logical_partitioning(scale_init, ('conv_out',)),
                       (c,), jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                           ('conv_out',)), (c,), jnp.float32)
    xf = x.astype(jnp.float32)
    spatial = tuple(range(1, x.ndim - 1))
    mean = jnp.mean(jnp.mean(xf, axis=spatial).reshape(n, g, c // g), axis=-1)  # [N, G]
    mean_sq = jnp.mean(jnp.mean(jnp.square(xf), axis=spatial).reshape(n, g, c // g),
                       axis=-1)  # [N, G]
    inv = lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + self.epsilon)
    per_channel = (n,) + (1,) * len(spatial) + (c,)
    mean = jnp.repeat(mean, c // g, axis=-1).reshape(per_channel)  # [N, 1, 1, C]
    mul = (jnp.repeat(inv, c // g, axis=-1) * scale).reshape(per_channel)  # [N, 1, 1, C]
    return ((xf - mean) * mul + bias).astype(self.dtype)


def max_pool_3x3_s2(x: Array, min_channels: int = 1) -> Array:
  """3x3 max pool, stride 2, padding 1 ([N, H, W, C] -> [N, ceil(H/2), ceil(W/2), C]).

  With at least `min_channels` channels (default: always), written as maxima of strided
  views rather than `nn.max_pool`: the gradient of `reduce_window` is a
  select-and-scatter that XLA:CPU runs 3-6x slower than the elementwise maxima at
  112x112x64 (batch 8); at 8 channels (the toy step) it also materialises four int32
  index maps of the padded input (9 ms of a 185 ms step), and the whole toy step is
  1.6% faster with the strided views (docs/performance.md). Both give
  the max's gradient to the maximal input; they differ only on exact ties, which after
  the preceding ReLU are zeros whose gradient the ReLU drops anyway.
  """
  n, h, w, c = x.shape
  if c < min_channels:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  ho, wo = (h + 1) // 2, (w + 1) // 2
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  # Separable: the max over 3 rows (stride 2), then over 3 columns of that. 6 maxima
  # instead of 9, and a smaller backward (the whole small step 1.04x, docs/performance.md).
  rows = None
  for i in range(3):
    view = lax.slice(xp, (0, i, 0, 0), (n, i + 2 * ho - 1, w + 2, c),
                     (1, 2, 1, 1))  # [N, ho, W + 2, C]
    rows = view if rows is None else jnp.maximum(rows, view)
  out = None
  for j in range(3):
    view = lax.slice(rows, (0, 0, j, 0), (n, ho, j + 2 * wo - 1, c),
                     (1, 1, 2, 1))  # [N, ho, wo, C]
    out = view if out is None else jnp.maximum(out, view)
  return out


def _norm(num_groups: int, name: str, dtype: Any, zero_scale: bool = False) -> GroupNorm:
  return GroupNorm(num_groups=num_groups, dtype=dtype, zero_scale=zero_scale, name=name)


class BottleneckUnit(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 residual unit with 4x channel expansion."""
  nmid: int
  strides: int
  num_groups: int
  conv: ModuleDef = StdConv  # The trunk's `conv_layer`.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    nout = self.nmid * 4
    residual = x
    if x.shape[-1] != nout or self.strides != 1:
      residual = self.conv(nout, 1, self.strides, name='conv_proj')(x)
      residual = _norm(self.num_groups, 'gn_proj', self.dtype)(residual)
    y = self.conv(self.nmid, 1, 1, name='conv1')(x)
    y = nn.relu(_norm(self.num_groups, 'gn1', self.dtype)(y))
    y = self.conv(self.nmid, 3, self.strides, name='conv2')(y)
    y = nn.relu(_norm(self.num_groups, 'gn2', self.dtype)(y))
    y = self.conv(nout, 1, 1, name='conv3')(y)
    # Zero-initialized last scale: each unit starts as (a projection of) the identity.
    y = _norm(self.num_groups, 'gn3', self.dtype, zero_scale=True)(y)
    return nn.relu(residual + y)


class BasicUnit(nn.Module):
  """3x3 (strided) -> 3x3 residual unit, used by ResNet-18."""
  nmid: int
  strides: int
  num_groups: int
  conv: ModuleDef = StdConv  # The trunk's `conv_layer`.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    residual = x
    if x.shape[-1] != self.nmid or self.strides != 1:
      residual = self.conv(self.nmid, 1, self.strides, name='conv_proj')(x)
      residual = _norm(self.num_groups, 'gn_proj', self.dtype)(residual)
    y = self.conv(self.nmid, 3, self.strides, name='conv1')(x)
    y = nn.relu(_norm(self.num_groups, 'gn1', self.dtype)(y))
    y = self.conv(self.nmid, 3, 1, name='conv2')(y)
    y = _norm(self.num_groups, 'gn2', self.dtype, zero_scale=True)(y)
    return nn.relu(residual + y)


# BiT's epsilons for the pre-activation trunk: GroupNorm's on the group variance, weight
# standardization's on the kernel variance (big_vision `bit_paper.py`, big_transfer
# `bit_jax/models.py`). dynpt's own defaults (1e-6; std + 1e-5) stay for the v1.5 trunk.
BIT_GN_EPSILON = 1e-5
BIT_WS_VARIANCE_EPSILON = 1e-10


def _bit_norm(num_groups: int, name: str, dtype: Any) -> GroupNorm:
  return GroupNorm(num_groups=num_groups, epsilon=BIT_GN_EPSILON, dtype=dtype, name=name)


class PreActBottleneckUnit(nn.Module):
  """BiT's pre-activation (ResNet v2) bottleneck unit, for `ResNetConfig.preactivation`.

      a = relu(gn1(x));  shortcut = conv_proj(a) if the shape changes, else x
      y = conv1(a) -> relu(gn2) -> conv2 (3x3, strided) -> relu(gn3) -> conv3
      return y + shortcut                  (unnormalised, no ReLU)

  The names are those big_vision's `bit_paper.py` gives the BiT release's tensors
  (`a/group_norm` -> gn1, `b/...` -> gn2, `c/...` -> gn3, `a/proj` -> conv_proj), and the
  norms and standardization use BiT's epsilons (its `conv` standardizes with
  `BIT_WS_VARIANCE_EPSILON`), so an imported release computes BiT's features rather
  than only holding its filters.
  """
  nmid: int
  strides: int
  num_groups: int
  conv: ModuleDef = StdConv  # The trunk's `conv_layer`, with BiT's standardization.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    nout = self.nmid * 4
    a = nn.relu(_bit_norm(self.num_groups, 'gn1', self.dtype)(x))
    shortcut = x
    if x.shape[-1] != nout or self.strides != 1:
      shortcut = self.conv(nout, 1, self.strides, name='conv_proj')(a)
    y = self.conv(self.nmid, 1, 1, name='conv1')(a)
    y = nn.relu(_bit_norm(self.num_groups, 'gn2', self.dtype)(y))
    y = self.conv(self.nmid, 3, self.strides, name='conv2')(y)
    y = nn.relu(_bit_norm(self.num_groups, 'gn3', self.dtype)(y))
    y = self.conv(nout, 1, 1, name='conv3')(y)
    return y + shortcut.astype(y.dtype)


class ResNetStage(nn.Module):
  """`num_units` residual units named unit1..unitN; the first one may downsample."""
  unit_cls: Any
  num_units: int
  nmid: int
  first_strides: int
  num_groups: int
  conv: ModuleDef = StdConv  # The trunk's `conv_layer`.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for i in range(self.num_units):
      x = self.unit_cls(nmid=self.nmid, strides=self.first_strides if i == 0 else 1,
                        num_groups=self.num_groups, conv=self.conv, dtype=self.dtype,
                        name=f'unit{i + 1}')(x)
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
  if config.preactivation and config.depth == 18:
    raise ValueError('ResNetConfig.preactivation builds BiT v2 bottleneck units; depth 18 '
                     'has basic units (use 26, 50 or 101)')
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
    if cfg.preactivation:
      unit_cls = PreActBottleneckUnit
    else:
      unit_cls = BasicUnit if cfg.depth == 18 else BottleneckUnit
    if cfg.remat:
      unit_cls = nn.remat(unit_cls)

    # The one place the convolution is chosen: every layer below is built from it.
    conv = conv_layer(cfg.cpu_kernels, dtype,
                      BIT_WS_VARIANCE_EPSILON if cfg.preactivation else None)

    images = jnp.asarray(images, dtype)
    x = conv(base, 7, 2, name='conv_root')(images)
    if not cfg.preactivation:  # BiT v2's root is the conv alone (its units normalise).
      x = nn.relu(_norm(cfg.num_groups, 'gn_root', dtype)(x))
    x = max_pool_3x3_s2(x)  # stride 4
    for stage, num_units in enumerate(STAGE_UNITS[cfg.depth]):
      x = ResNetStage(unit_cls=unit_cls, num_units=num_units, nmid=base * 2 ** stage,
                      first_strides=1 if stage == 0 else 2, num_groups=cfg.num_groups,
                      conv=conv, dtype=dtype, name=f'block{stage + 1}')(x)
    # With `preactivation` this is stage 3's unnormalised residual sum, as BiT computes
    # it: BiT normalises a stage's output only as the next unit's gn1 (stage 4, not
    # built) or its pre-head norm (after stage 4), so nothing here has weights for a norm;
    # the VL model's `visual_norm` after the projection does that job.
    return nn.with_logical_constraint(x, ('batch', None, None, None))
