"""BiT ResNet .npz files onto dynpt's ResNet (dynpt/interop/bit.py), on fixtures in
big_vision's layout and in the original BiT release's (whose imported trunk is checked
against an independent numpy forward pass of BiT's ResNet v2)."""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from dynpt.interop import bit, importer, t5x
from dynpt.interop.text_tower import CheckpointMismatchError
from dynpt.models import configs, resnet, t5
from dynpt.models.configs import ResNetConfig
from dynpt.train import export, model_setup
from dynpt.train.config import ModelConfig

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


V2 = ResNetConfig(depth=26, width=0.125, num_groups=4, preactivation=True)


@pytest.fixture(scope="module")
def v2_shapes():
  return bit.expected_shapes(V2)


def _release(units, width=8, seed=1):
  """A random BiT-M release checkpoint (its .npz names) of a bottleneck ResNet v2.

  Written from the release's layout, not from dynpt's names: `units` per stage, stage s
  with nmid = width * 2**s and 4 * nmid output channels; unit `a` normalises the unit
  input and has the projection, `b` holds the (strided) 3x3 conv.
  """
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  out = {"resnet/root_block/standardized_conv2d/kernel": normal(7, 7, 3, width)}
  cin = width
  for s, num in enumerate(units):
    nmid = width * 2 ** s
    for u in range(1, num + 1):
      prefix = f"resnet/block{s + 1}/unit{u:02d}"
      for group, (k, c_in, c_out) in zip(
          "abc", ((1, cin, nmid), (3, nmid, nmid), (1, nmid, 4 * nmid))):
        out[f"{prefix}/{group}/standardized_conv2d/kernel"] = 0.05 * normal(k, k, c_in, c_out)
        out[f"{prefix}/{group}/group_norm/gamma"] = 1 + 0.2 * normal(c_in)
        out[f"{prefix}/{group}/group_norm/beta"] = 0.2 * normal(c_in)
      if u == 1:
        out[f"{prefix}/a/proj/standardized_conv2d/kernel"] = 0.05 * normal(1, 1, cin,
                                                                             4 * nmid)
      cin = 4 * nmid
  out["resnet/block4/unit01/a/group_norm/gamma"] = np.ones(cin, np.float32)
  out["resnet/group_norm/gamma"] = np.ones(8 * width * 4, np.float32)
  out["resnet/head/conv2d/kernel"] = np.zeros((1, 1, 8 * width * 4, 10), np.float32)
  return out


def _conv_ref(x, w, stride):
  """BiT's weight-standardised conv (kernel / sqrt(var + 1e-10)), padding (k - 1) // 2."""
  w = w.astype(np.float64)
  w = w - w.mean(axis=(0, 1, 2), keepdims=True)
  w = w / np.sqrt(np.square(w).mean(axis=(0, 1, 2), keepdims=True) + 1e-10)
  k, pad = w.shape[0], (w.shape[0] - 1) // 2
  n, h, wd, _ = x.shape
  ho, wo = -(-h // stride), -(-wd // stride)
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = np.zeros((n, ho, wo, w.shape[3]))
  for i in range(k):
    for j in range(k):
      out += xp[:, i:i + stride * ho:stride, j:j + stride * wo:stride] @ w[i, j]
  return out


def _gn_ref(x, gamma, beta, groups=4):
  """GroupNorm with BiT's two-pass variance and epsilon 1e-5."""
  n, h, w, c = x.shape
  g = x.reshape(n, h, w, groups, c // groups)
  g = g - g.mean(axis=(1, 2, 4), keepdims=True)
  g = g / np.sqrt(np.square(g).mean(axis=(1, 2, 4), keepdims=True) + 1e-5)
  return g.reshape(x.shape) * gamma + beta


def _bit_v2_reference(ckpt, images, units):
  """BiT's ResNet v2 forward pass through stage 3, in float64 numpy."""
  relu = lambda v: np.maximum(v, 0.0)
  x = _conv_ref(images.astype(np.float64), ckpt["resnet/root_block/standardized_conv2d/kernel"],
                2)
  n, h, w, c = x.shape  # 3x3/2 max-pool, padding 1 (of -inf).
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  ho, wo = -(-h // 2), -(-w // 2)
  x = np.max([xp[:, i:i + 2 * ho:2, j:j + 2 * wo:2] for i in range(3) for j in range(3)],
             axis=0)
  for s, num in enumerate(units):
    for u in range(1, num + 1):
      p = f"resnet/block{s + 1}/unit{u:02d}"
      stride = 2 if s > 0 and u == 1 else 1
      gn = lambda v, g: _gn_ref(v, ckpt[f"{p}/{g}/group_norm/gamma"],
                                ckpt[f"{p}/{g}/group_norm/beta"])
      conv = lambda v, g, st=1: _conv_ref(v, ckpt[f"{p}/{g}/standardized_conv2d/kernel"], st)
      a = relu(gn(x, "a"))
      proj = f"{p}/a/proj/standardized_conv2d/kernel"
      shortcut = _conv_ref(a, ckpt[proj], stride) if proj in ckpt else x
      y = conv(a, "a")
      y = conv(relu(gn(y, "b")), "b", stride)
      y = conv(relu(gn(y, "c")), "c")
      x = y + shortcut
  return x


def test_imported_release_computes_bits_function(tmp_path):
  units = resnet.STAGE_UNITS[26]
  ckpt = _release(units)
  path = str(tmp_path / "BiT-M-R26x0.125.npz")
  np.savez(path, **ckpt)
  assert bit.is_release(path)
  params = bit.read(path, V2)
  images = np.random.default_rng(3).normal(size=(2, 48, 40, 3)).astype(np.float32)
  # The second image is faint: the root map's variance (~1e-4) is near GroupNorm's
  # epsilon, so BiT's epsilons (1e-5 there, 1e-10 in the standardization) are checked.
  images[1] *= 1e-3
  got = np.asarray(jax.jit(resnet.ResNet(V2).apply)({"params": params}, images))
  want = _bit_v2_reference(ckpt, images, units)
  assert got.shape == want.shape == (2, 3, 3, resnet.output_channels(V2))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_release_maps_every_tensor_by_name(v2_shapes, tmp_path):
  ckpt = _release(resnet.STAGE_UNITS[26])
  path = str(tmp_path / "bit.npz")
  np.savez(path, **ckpt)
  got = traverse_util.flatten_dict(bit.read(path, V2), sep="/")
  assert sorted(got) == sorted(v2_shapes)  # Stage 4, the pre-head norm, the head: dropped.
  r = "resnet/block2/unit01"
  for name, key in (("block2/unit1/gn1/scale", f"{r}/a/group_norm/gamma"),
                    ("block2/unit1/conv1/kernel", f"{r}/a/standardized_conv2d/kernel"),
                    ("block2/unit1/conv_proj/kernel", f"{r}/a/proj/standardized_conv2d/kernel"),
                    ("block2/unit1/gn2/bias", f"{r}/b/group_norm/beta"),
                    ("block2/unit1/conv2/kernel", f"{r}/b/standardized_conv2d/kernel"),
                    ("block2/unit1/gn3/scale", f"{r}/c/group_norm/gamma"),
                    ("block2/unit1/conv3/kernel", f"{r}/c/standardized_conv2d/kernel"),
                    ("conv_root/kernel", "resnet/root_block/standardized_conv2d/kernel")):
    np.testing.assert_array_equal(got[name], ckpt[key], err_msg=name)


def test_release_needs_the_preactivation_trunk(tmp_path):
  path = str(tmp_path / "bit.npz")
  np.savez(path, **_release(resnet.STAGE_UNITS[26]))
  with pytest.raises(CheckpointMismatchError, match="pre-activation.*preactivation=False"):
    bit.read(path, CFG)


def test_big_vision_layout_needs_the_default_trunk(shapes, tmp_path):
  path = str(tmp_path / "bv.npz")
  np.savez(path, **_random(shapes))
  assert not bit.is_release(path)
  with pytest.raises(CheckpointMismatchError, match="post-norm.*preactivation=True"):
    bit.read(path, V2)


def test_stray_release_tensor_is_refused(tmp_path):
  ckpt = _release(resnet.STAGE_UNITS[26])
  ckpt["resnet/block1/unit01/b/group_norm/moving_mean"] = np.zeros(8, np.float32)
  path = str(tmp_path / "bit.npz")
  np.savez(path, **ckpt)
  with pytest.raises(CheckpointMismatchError, match="b/group_norm/moving_mean.*no place"):
    bit.read(path, V2)


def test_missing_tensor_is_named(tmp_path):
  stored = _release(resnet.STAGE_UNITS[26])
  del stored["resnet/block3/unit02/b/standardized_conv2d/kernel"]
  path = str(tmp_path / "bit.npz")
  np.savez(path, **stored)
  with pytest.raises(CheckpointMismatchError, match="'block3/unit2/conv2/kernel' is missing"):
    bit.read(path, V2)


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


def test_import_of_the_release_records_the_preactivation_trunk(tmp_path):
  """import_checkpoint --visual=bit:<release> writes a preactivation model and says so."""
  vocab = 256
  t5_cfg = configs.get_config("tiny", vocab_size=vocab).t5
  tokens = jnp.ones((1, 2), jnp.int32)
  tower = jax.device_get(nn.meta.unbox(
      t5.T5Transformer(t5_cfg).init(jax.random.PRNGKey(0), tokens, tokens)["params"]))
  t5x.write(str(tmp_path / "checkpoint_3"), tower, step=3)
  ckpt = _release(resnet.STAGE_UNITS[26])
  np.savez(str(tmp_path / "bit.npz"), **ckpt)
  out_dir = str(tmp_path / "export")
  importer.import_checkpoint("t5x", str(tmp_path / "checkpoint_3"), out_dir,
                             visual=f"bit:{tmp_path / 'bit.npz'}", image_size=32)
  params, info = export.load_export(out_dir)
  assert info["resnet_preactivation"] is True
  np.testing.assert_array_equal(params["resnet"]["block3"]["unit2"]["gn1"]["bias"],
                                ckpt["resnet/block3/unit02/a/group_norm/beta"])
  # What a run binds to start from this export (docs/model.md) builds a model it fits.
  model = model_setup.build_model(ModelConfig(name="tiny", resnet_preactivation=True),
                                  types.SimpleNamespace(vocab_size=vocab), image_size=32)
  want = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                           tokens, tokens)["params"])
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, nn.meta.unbox(want))
