"""BiT ResNet .npz files onto dynpt's ResNet (dynpt/interop/bit.py), on fixtures in
big_vision's layout and in the original BiT release's."""
import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from dynpt.interop import bit
from dynpt.interop.text_tower import CheckpointMismatchError
from dynpt.models import resnet
from dynpt.models.configs import ResNetConfig

CFG = ResNetConfig(depth=26, width=0.125, num_groups=4)  # The tiny model's ResNet.


@pytest.fixture(scope="module")
def shapes():
  return bit.expected_shapes(CFG)


def _random(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def test_big_vision_layout_maps_one_to_one(shapes, tmp_path):
  flat = _random(shapes)
  stored = {f"params/{k}": (v.reshape(1, 1, 1, -1) if "/gn" in "/" + k else v)
            for k, v in flat.items()}  # Old linen: GN params [1, 1, 1, C].
  stored["params/block4/unit1/conv1/kernel"] = np.zeros((1, 1, 32, 64), np.float32)
  stored["params/head/kernel"] = np.zeros((128, 10), np.float32)
  stored["opt/1/0/mu/conv_root/kernel"] = np.zeros_like(flat["conv_root/kernel"])
  path = str(tmp_path / "bv.npz")
  np.savez(path, **stored)
  got = traverse_util.flatten_dict(bit.read(path, CFG), sep="/")
  assert sorted(got) == sorted(flat)  # Stage 4 and the head are dropped.
  for k, v in flat.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)


def _release(shapes, seed=1):
  """The BiT release's names for a pre-activation net with dynpt's kernel shapes."""
  rng = np.random.default_rng(seed)
  out = {"resnet/root_block/standardized_conv2d/kernel": rng.normal(
      size=shapes["conv_root/kernel"]).astype(np.float32)}
  units = sorted({k.rsplit("/", 2)[0] for k in shapes if k.startswith("block")})
  for unit in units:
    block, u = unit.split("/")
    prefix = f"resnet/{block}/unit{int(u[4:]):02d}"
    cin = shapes[f"{unit}/conv1/kernel"][2]
    nmid = shapes[f"{unit}/conv1/kernel"][3]
    for group, conv, channels in (("a", "conv1", cin), ("b", "conv2", nmid),
                                  ("c", "conv3", nmid)):
      out[f"{prefix}/{group}/standardized_conv2d/kernel"] = rng.normal(
          size=shapes[f"{unit}/{conv}/kernel"]).astype(np.float32)
      out[f"{prefix}/{group}/group_norm/gamma"] = rng.normal(size=channels).astype(
          np.float32)
      out[f"{prefix}/{group}/group_norm/beta"] = rng.normal(size=channels).astype(
          np.float32)
    if f"{unit}/conv_proj/kernel" in shapes:
      out[f"{prefix}/a/proj/standardized_conv2d/kernel"] = rng.normal(
          size=shapes[f"{unit}/conv_proj/kernel"]).astype(np.float32)
  out["resnet/group_norm/gamma"] = np.ones(8, np.float32)
  out["resnet/head/conv2d/kernel"] = np.zeros((1, 1, 8, 10), np.float32)
  return out


def test_release_layout_loads_kernels_and_inner_norms(shapes, tmp_path):
  stored = _release(shapes)
  path = str(tmp_path / "BiT-M-R26x0.125.npz")
  np.savez(path, **stored)
  got = traverse_util.flatten_dict(bit.read(path, CFG), sep="/")
  assert sorted(got) == sorted(shapes)
  np.testing.assert_array_equal(got["conv_root/kernel"],
                                stored["resnet/root_block/standardized_conv2d/kernel"])
  r = "resnet/block2/unit01"
  np.testing.assert_array_equal(got["block2/unit1/conv2/kernel"],
                                stored[f"{r}/b/standardized_conv2d/kernel"])
  np.testing.assert_array_equal(got["block2/unit1/conv_proj/kernel"],
                                stored[f"{r}/a/proj/standardized_conv2d/kernel"])
  # The norm after conv1 (b) is dynpt's gn1; after conv2 (c) its gn2.
  np.testing.assert_array_equal(got["block2/unit1/gn1/scale"], stored[f"{r}/b/group_norm/gamma"])
  np.testing.assert_array_equal(got["block2/unit1/gn2/bias"], stored[f"{r}/c/group_norm/beta"])
  # No counterpart in a pre-activation net: identity affines.
  np.testing.assert_array_equal(got["block2/unit1/gn3/scale"], 1.0)
  np.testing.assert_array_equal(got["gn_root/bias"], 0.0)


def test_missing_tensor_is_named(shapes, tmp_path):
  stored = _release(shapes)
  del stored["resnet/block3/unit02/b/standardized_conv2d/kernel"]
  path = str(tmp_path / "bit.npz")
  np.savez(path, **stored)
  with pytest.raises(CheckpointMismatchError, match="'block3/unit2/conv2/kernel' is missing"):
    bit.read(path, CFG)


def test_a_deeper_resnet_does_not_fit(shapes, tmp_path):
  deeper = ResNetConfig(depth=50, width=0.125, num_groups=4)
  path = str(tmp_path / "r50.npz")
  np.savez(path, **_random(bit.expected_shapes(deeper)))
  with pytest.raises(CheckpointMismatchError, match="block1/unit3"):
    bit.read(path, CFG)


def test_wrong_width_names_the_shape(shapes, tmp_path):
  wide = bit.expected_shapes(ResNetConfig(depth=26, width=0.25, num_groups=4))
  path = str(tmp_path / "wide.npz")
  np.savez(path, **_random(wide))
  with pytest.raises(CheckpointMismatchError, match=r"'\w+(/\w+)*' has shape .* needs"):
    bit.read(path, CFG)


def test_unknown_layout(tmp_path):
  path = str(tmp_path / "other.npz")
  np.savez(path, **{"encoder/kernel": np.zeros(3)})
  with pytest.raises(CheckpointMismatchError, match="neither big_vision"):
    bit.read(path, CFG)


def test_expected_shapes_are_the_models_at_any_image_size(shapes):
  params = nn.meta.unbox(jax.eval_shape(lambda: resnet.ResNet(CFG).init(
      jax.random.PRNGKey(0), np.zeros((2, 64, 48, 3)))["params"]))
  flat = traverse_util.flatten_dict(params, sep="/")
  assert {k: v.shape for k, v in flat.items()} == shapes
