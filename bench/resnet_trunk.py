"""Where the ResNet trunk's time goes: sub-block profile, reference vs current layers.

The trunk (stem, max pool, stages 1-3) of a model size is cut into sub-blocks; each is
jitted as forward + backward (gradients of its params and, except for the stem, of its
input, as in the train step) in several versions (bench/patches.VERSIONS): with the
pre-speed-up flax layers, with one kind of layer switched to the current one, and with
dynpt/models/resnet.py as it is. Versions alternate in
`--rounds` rounds so that the load of the shared machine hits both alike; the table gives
the median milliseconds, XLA's FLOP count (`cost_analysis`) and the GFLOP/s achieved.

  python bench/resnet_trunk.py --size=small --versions=reference,conv1x1,norm,current
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench import common, patches  # noqa: E402
from dynpt import hostalloc  # noqa: E402
from dynpt.models import configs as model_configs  # noqa: E402
from dynpt.models import cpu_kernels  # noqa: E402
from dynpt.models import resnet  # noqa: E402

_SIZE = flags.DEFINE_string("size", "small", "Size whose trunk is profiled.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating rounds per sub-block.")
_VERSIONS = flags.DEFINE_list("versions", ["reference", "current"],
                              "bench/patches.VERSIONS to compare; the first is the baseline.")
_OUT = flags.DEFINE_string("out", None, "Results file name (no .json); default resnet_<size>.")


class _Stem(nn.Module):
  """conv_root + gn_root + ReLU, built from the same helpers as `resnet.ResNet`."""
  cfg: model_configs.ResNetConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    base = int(64 * self.cfg.width)
    conv = resnet.conv_layer(self.cfg.cpu_kernels, jnp.float32)
    x = conv(base, 7, 2, name="conv_root")(x)
    return nn.relu(resnet._norm(self.cfg.num_groups, "gn_root", jnp.float32)(x))


class _Pool(nn.Module):
  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return resnet.max_pool_3x3_s2(x)


def _blocks(cfg: model_configs.ResNetConfig, image_size: int, batch: int
            ) -> list[tuple[str, Callable[[], nn.Module], tuple[int, ...], bool]]:
  """(name, module factory, input shape, differentiate the input) per sub-block."""
  base = int(64 * cfg.width)
  unit = resnet.BasicUnit if cfg.depth == 18 else resnet.BottleneckUnit
  out = [("stem", lambda: _Stem(cfg), (batch, image_size, image_size, 3), False)]
  h = -(-image_size // 2)
  out.append(("max_pool", _Pool, (batch, h, h, base), True))
  h, cin = -(-h // 2), base
  for stage, units in enumerate(resnet.STAGE_UNITS[cfg.depth]):
    nmid = base * 2 ** stage
    strides = 1 if stage == 0 else 2

    def factory(units=units, nmid=nmid, strides=strides):
      return resnet.ResNetStage(unit_cls=unit, num_units=units, nmid=nmid,
                                first_strides=strides, num_groups=cfg.num_groups,
                                conv=resnet.conv_layer(cfg.cpu_kernels, jnp.float32))
    out.append((f"block{stage + 1}", factory, (batch, h, h, cin), True))
    h, cin = -(-h // strides), nmid * (1 if cfg.depth == 18 else 4)
  return out


def _fwd_bwd(module: nn.Module, shape: tuple[int, ...], wrt_input: bool):
  """A jitted fwd+bwd of `module` and its arguments (traced by the caller's context)."""
  x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
  params = nn.meta.unbox(module.init(jax.random.key(1), x))
  params = jax.tree.map(lambda p: p + 0.1, params)  # Nonzero GroupNorm scales.

  def loss(p, x):
    return jnp.mean(jnp.square(module.apply(p, x)))
  fn = jax.jit(jax.grad(loss, argnums=(0, 1) if wrt_input else 0))
  compiled = fn.lower(params, x).compile()
  return compiled, (params, x)


def _time(fn: Callable[..., Any], args: tuple) -> float:
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t


def main(argv):
  del argv
  size = common.SIZES[_SIZE.value]
  # The trunk as a run on this host builds it (`ModelConfig.cpu_kernels='auto'`).
  cfg = model_configs.get_config(size.model, image_size=size.image_size,
                                 cpu_kernels=cpu_kernels.resolve("auto")).resnet
  records = []
  for name, factory, shape, wrt_input in _blocks(cfg, size.image_size, size.batch_size):
    versions = {}
    for version in _VERSIONS.value:
      with patches.reference_layers(patches.VERSIONS[version]):
        versions[version] = _fwd_bwd(factory(), shape, wrt_input)
    times = {v: [] for v in versions}
    for v, (fn, args) in versions.items():
      _time(fn, args)  # warm-up
    for _ in range(_ROUNDS.value):
      for v, (fn, args) in versions.items():
        times[v].append(_time(fn, args))
    rec = {"block": name, "input_shape": list(shape)}
    for v, (fn, _) in versions.items():
      ms = common.median(times[v]) * 1e3
      flops = common.xla_flops(fn) or 0.0
      rec.update({f"{v}_ms": ms, f"{v}_gflop": flops / 1e9,
                  f"{v}_gflop_per_s": flops / ms / 1e6, f"{v}_times_ms":
                  [round(t * 1e3, 1) for t in times[v]]})
    base = _VERSIONS.value[0]
    for v in versions:
      rec[f"{v}_speedup"] = rec[f"{base}_ms"] / rec[f"{v}_ms"]
    records.append(rec)
    common.print_table(
        records, ["block", f"{base}_gflop"] + [f"{v}_ms" for v in versions]
        + [f"{v}_gflop_per_s" for v in versions], title=f"ResNet trunk ({size.name})")
  for v in _VERSIONS.value:
    total = sum(r[f"{v}_ms"] for r in records)
    print(f"sum of sub-blocks, {v}: {total:.0f} ms "
          f"({sum(r[f'{base}_ms'] for r in records) / total:.2f}x)")
  print(f"wrote {common.write_results(_OUT.value or f'resnet_{size.name}', records)}")


if __name__ == "__main__":
  hostalloc.configure_process()
  app.run(main)
