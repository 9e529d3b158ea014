"""BiT ResNet weights (.npz) onto dynpt's ResNet, stages 1-3.

Two layouts are read, told apart by their names:

* big_vision's (`big_vision/models/bit.py`, a ResNet v1.5 with GroupNorm and weight
  standardisation, what dynpt's ResNet is): `conv_root/kernel`, `gn_root/{scale,bias}`,
  `block{s}/unit{u}/{conv1,conv2,conv3,conv_proj}/kernel` and `.../{gn1,gn2,gn3,
  gn_proj}/{scale,bias}`, optionally under a prefix such as `params/`. The names are
  dynpt's, so every tensor of stages 1-3 maps one-to-one (old checkpoints' [1, 1, 1, C]
  norm params are squeezed, as big_vision's `fix_old_checkpoints` does).

* the original BiT release (`BiT-M-R50x1.npz`, what big_vision's `bit_paper.py` loads):
  `resnet/root_block/standardized_conv2d/kernel`, `resnet/block{s}/unit{uu}/{a,b,c}/
  {standardized_conv2d/kernel, group_norm/{gamma,beta}}`, `.../a/proj/standardized_conv2d/
  kernel`. That net is a pre-activation ResNet (v2), which dynpt builds with
  `ResNetConfig.preactivation=True` (`resnet.PreActBottleneckUnit`): group `a` is the
  unit's input norm and first conv (gn1, conv1), `b` gn2/conv2, `c` gn3/conv3, `a/proj`
  conv_proj, as big_vision maps them; every tensor of stages 1-3 has its place and the
  trunk computes BiT's features. `is_release` tells the importer to build that trunk.

Stage 4 (`block4`) and the head are dropped: dynpt consumes the stage-3 map.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from dynpt import fs
from dynpt.interop.text_tower import CheckpointMismatchError
from dynpt.models import resnet
from dynpt.models.configs import ResNetConfig

_RELEASE_ROOT = "resnet/root_block/standardized_conv2d/kernel"


def expected_shapes(cfg: ResNetConfig) -> dict[str, tuple[int, ...]]:
  """{'block1/unit1/conv1/kernel': shape, ...} of dynpt's ResNet for `cfg`."""
  model = resnet.ResNet(cfg)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 32, 32, 3))))
  flat = traverse_util.flatten_dict(nn.meta.unbox(abstract["params"]), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


# What numpy's .npz reader raises for a truncated or altered file: a zip
# directory that is not there (BadZipFile), a member whose CRC-32 does not
# match (BadZipFile), a bad deflate stream (zlib.error), a bad .npy header.
_NPZ_ERRORS = (ValueError, OSError, EOFError, KeyError, IndexError, TypeError,
               zipfile.BadZipFile, zlib.error, struct.error)


def _load_npz(path: str) -> dict[str, np.ndarray]:
  if not fs.isfile(path):
    raise FileNotFoundError(f"BiT checkpoint {path} not found")
  try:
    with np.load(io.BytesIO(fs.read_bytes(path)), allow_pickle=False) as data:
      tensors = {k: np.asarray(data[k]) for k in data.files}
  except _NPZ_ERRORS as e:
    raise CheckpointMismatchError(
        f"{path}: not a readable .npz file, truncated or damaged "
        f"({type(e).__name__}: {' '.join(str(e).split())})") from e
  for name, value in tensors.items():
    if value.dtype.kind not in "biuf":
      raise CheckpointMismatchError(f"{path}: tensor {name!r} holds {value.dtype}, "
                                    "not numbers")
  return tensors


def _from_big_vision(tensors: dict[str, np.ndarray], path: str) -> dict[str, np.ndarray]:
  """dynpt path -> array for big_vision's names (any prefix before `conv_root`)."""
  roots = [k for k in tensors if k == "conv_root/kernel" or k.endswith("/conv_root/kernel")]
  if not roots:
    raise CheckpointMismatchError(
        f"{path}: neither big_vision's BiT layout ('conv_root/kernel') nor the BiT "
        f"release ('{_RELEASE_ROOT}'); found {sorted(tensors)[:5]}...")
  # A training checkpoint also holds optimizer trees ('opt/.../conv_root/kernel'):
  # the params are the shallowest tree.
  prefix = min(roots, key=lambda k: (k.count("/"), k))[:-len("conv_root/kernel")]
  out = {}
  for key, value in tensors.items():
    if not key.startswith(prefix):
      continue
    name = key[len(prefix):]
    if re.search(r"(^|/)gn\w*/(scale|bias)$", name):
      value = value.reshape(-1)  # Old linen kept GN params [1, 1, 1, C].
    out[name] = value
  return out


def _from_release(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """dynpt path -> array for the original BiT release (see the module docstring)."""
  tensors = {re.sub(r"/standardized_conv2d_\d+/", "/standardized_conv2d/", k): v
             for k, v in tensors.items()}  # Some files number the conv scopes.
  out = {"conv_root/kernel": tensors[_RELEASE_ROOT]}
  names = {"group_norm/gamma": "gn{}/scale", "group_norm/beta": "gn{}/bias",
           "standardized_conv2d/kernel": "conv{}/kernel",
           "proj/standardized_conv2d/kernel": "conv_proj/kernel"}
  for key, value in tensors.items():
    m = re.fullmatch(r"resnet/(block\d+)/unit(\d+)/(a|b|c)/(.+)", key)
    if not m:
      continue
    block, unit, group, rest = m.groups()
    index = "abc".index(group) + 1
    name = names.get(rest, f"{group}/{rest}").format(index)  # Unknown: kept, refused later.
    if rest.startswith("group_norm/"):
      value = value.reshape(-1)  # Some dumps keep GN params [1, 1, 1, C].
    out[f"{block}/unit{int(unit)}/{name}"] = value
  return out


def is_release(path: str) -> bool:
  """Whether `path` is in the BiT release's layout (a pre-activation ResNet v2).

  Raises:
    FileNotFoundError, CheckpointMismatchError: no such file, or not an .npz.
  """
  return _is_release(_load_npz(path))


def _is_release(tensors: dict[str, np.ndarray]) -> bool:
  return any(k.startswith("resnet/root_block/standardized_conv2d") for k in tensors)


def read(path: str, cfg: ResNetConfig) -> dict[str, Any]:
  """dynpt ResNet params (stages 1-3) from a BiT .npz, checked against `cfg`.

  Raises:
    FileNotFoundError: no such file.
    CheckpointMismatchError: an unknown layout, a layout whose trunk is not `cfg`'s
      (`cfg.preactivation` must be `is_release(path)`), or a missing tensor or one
      whose shape differs from the model's, named.
  """
  tensors = _load_npz(path)
  release = _is_release(tensors)
  mapped = _from_release(tensors) if release else _from_big_vision(tensors, path)
  if release != cfg.preactivation:
    layout = ("the BiT release, a pre-activation ResNet v2" if release
              else "big_vision's bit.py layout, a post-norm ResNet v1.5")
    raise CheckpointMismatchError(
        f"{path}: is {layout}, but the ResNet config has "
        f"preactivation={cfg.preactivation}")
  want = expected_shapes(cfg)
  params = {}
  for name, shape in want.items():
    if name not in mapped:
      raise CheckpointMismatchError(f"{path}: tensor for {name!r} is missing (a "
                                    f"ResNet-{cfg.depth} at width {cfg.width} needs it)")
    if tuple(mapped[name].shape) != shape:
      raise CheckpointMismatchError(
          f"{path}: tensor for {name!r} has shape {tuple(mapped[name].shape)}, a "
          f"ResNet-{cfg.depth} at width {cfg.width} needs {shape}")
    params[name] = np.asarray(mapped[name], np.float32)
  kept_blocks = {n.split("/")[0] for n in want if n.startswith("block")}
  extra = sorted(n for n in mapped if n not in want and n.split("/")[0] in kept_blocks)
  if extra:
    raise CheckpointMismatchError(
        f"{path}: tensor for {extra[0]!r} has no place in a ResNet-{cfg.depth} (stages "
        f"1-3 have {resnet.STAGE_UNITS[cfg.depth]} units)")
  if release:
    logging.info("%s is the BiT release: a pre-activation ResNet v2 trunk", path)
  logging.info("loaded %d ResNet tensors (stages 1-3) from %s", len(params), path)
  return traverse_util.unflatten_dict(params, sep="/")
