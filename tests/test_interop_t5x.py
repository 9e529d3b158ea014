"""T5X checkpoint folders (dynpt/interop/t5x.py) on fixtures written in t5x's layout."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util

from dynpt.interop import bit, exporter, importer, t5x, text_tower
from dynpt.interop.text_tower import CheckpointMismatchError
from dynpt.models import configs, t5
from dynpt.train import export

CFG = configs.T5Config(vocab_size=640, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=24,
                       num_encoder_layers=2, num_decoder_layers=1, dropout_rate=0.0)


@pytest.fixture(scope="module")
def tower():
  tokens = jnp.ones((1, 2), jnp.int32)
  params = t5.T5Transformer(CFG).init(jax.random.PRNGKey(1), tokens, tokens)["params"]
  return jax.tree.map(np.asarray, jax.device_get(nn.meta.unbox(params)))


def _write_t5x_layout(folder, tree, inline=(), gcs=(), old=(), step=7):
  """A checkpoint as t5x's Checkpointer.save writes it, written here independently:
  zarr arrays under dotted names (`inline` paths go into the msgpack instead, as t5x
  does for unpartitioned leaves; `gcs` ones carry a gcs kvstore), plus Adafactor-like
  param_states that a reader must ignore."""
  import tensorstore as ts

  os.makedirs(folder)
  flat = traverse_util.flatten_dict({"target": tree}, sep="/")
  written = {}
  for path, value in flat.items():
    if path in inline:
      written[path] = value
      continue
    name = path.replace("/", ".")
    metadata = {"compressor": {"id": "gzip"}, "shape": list(value.shape),
                "chunks": list(value.shape)}
    store = ts.open({"driver": "zarr", "kvstore": {"driver": "file",
                                                   "path": os.path.join(folder, name)},
                     "metadata": metadata, "dtype": value.dtype.name},
                    create=True).result()
    store.write(value).result()
    kvstore = ({"driver": "gcs", "bucket": "t5x-dummy-bucket", "path": name}
               if path in gcs else {"driver": "file", "path": name})
    written[path] = {"driver": "zarr", "dtype": value.dtype.name, "kvstore": kvstore,
                     "metadata": metadata}
    if path in old:  # tensorstore < 0.1.14: the path beside the kvstore.
      written[path]["kvstore"] = {"driver": "gcs", "bucket": "t5x-dummy-bucket"}
      written[path]["path"] = name
  states = {k: np.zeros(2, np.float32) for k in flat}
  contents = {"version": 3, "optimizer": {
      "target": traverse_util.unflatten_dict(written, sep="/")["target"],
      "state": {"step": np.asarray(step, np.int32),
                "param_states": traverse_util.unflatten_dict(
                    {k: {"v_row": v} for k, v in states.items()}, sep="/")}}}
  with open(os.path.join(folder, "checkpoint"), "wb") as f:
    f.write(serialization.msgpack_serialize(contents))
  return folder


def _equal(a, b):
  fa = traverse_util.flatten_dict(a, sep="/")
  fb = traverse_util.flatten_dict(b, sep="/")
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k], np.float32), fb[k], err_msg=k)


def test_reads_t5x_layout_with_inline_gcs_old_and_bfloat16_leaves(tower, tmp_path):
  tree = dict(tower)
  tree["encoder"] = jax.tree.map(lambda x: x, tower["encoder"])
  tree["encoder"]["encoder_norm"] = {
      "scale": np.asarray(tower["encoder"]["encoder_norm"]["scale"], jnp.bfloat16)}
  model_dir = tmp_path / "model"
  _write_t5x_layout(str(model_dir / "checkpoint_7"), tree,
                    inline=("target/decoder/decoder_norm/scale",),
                    gcs=("target/token_embedder/embedding",),
                    old=("target/decoder/logits_dense/kernel",))
  cfg, got, step = t5x.read(str(model_dir))  # The latest checkpoint_<step> is found.
  assert step == 7 and cfg == CFG
  want = jax.tree.map(lambda x: np.asarray(x, np.float32), tree)
  _equal(want, got)


def test_write_then_read_round_trips(tower, tmp_path):
  file = t5x.write(str(tmp_path / "ckpt"), tower, step=3)
  with open(file, "rb") as f:
    contents = serialization.msgpack_restore(f.read())
  assert contents["version"] == 3
  spec = contents["optimizer"]["target"]["encoder"]["layers_0"]["attention"]["query"][
      "kernel"]
  assert spec["kvstore"] == {"driver": "file",
                             "path": "target.encoder.layers_0.attention.query.kernel"}
  cfg, got, step = t5x.read(str(tmp_path / "ckpt"))
  assert (cfg, step) == (CFG, 3)
  _equal(tower, got)


def _bit_npz(path, seed=0):
  """A big_vision-layout BiT file for the tiny model's ResNet; returns its params."""
  shapes = bit.expected_shapes(configs.get_config("tiny").resnet)
  rng = np.random.default_rng(seed)
  flat = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  np.savez(path, **flat)
  return flat


def test_import_and_export_keep_the_tower(tower, tmp_path):
  src = t5x.write(str(tmp_path / "src"), tower, step=5)
  resnet = _bit_npz(str(tmp_path / "bit.npz"))
  info = importer.import_checkpoint("t5x", os.path.dirname(src), str(tmp_path / "exp"),
                                    model="tiny", visual=f"bit:{tmp_path / 'bit.npz'}")
  assert info["step"] == 5 and info["t5_overrides"] == text_tower.t5_sizes(CFG)
  params, _ = export.load_export(str(tmp_path / "exp"))
  got = traverse_util.flatten_dict(params["resnet"], sep="/")
  for k, v in resnet.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  exporter.export_text_tower("t5x", str(tmp_path / "exp"), str(tmp_path / "out"))
  _, got, step = t5x.read(str(tmp_path / "out"))
  assert step == 5
  _equal(tower, got)


@pytest.mark.parametrize("breakage, message", [
    ("drop", "'target/decoder/layers_0/mlp/wo/kernel' is missing"),
    ("shape", "'target/encoder/layers_1/mlp/wi_1/kernel' has shape"),
    ("garbage", "not a msgpack T5X checkpoint"),
])
def test_a_broken_checkpoint_names_the_tensor_and_writes_nothing(tower, tmp_path,
                                                                 breakage, message):
  tree = jax.tree.map(lambda x: x, tower)
  if breakage == "drop":
    del tree["decoder"]["layers_0"]["mlp"]["wo"]
  if breakage == "shape":
    tree["encoder"]["layers_1"]["mlp"]["wi_1"]["kernel"] = np.zeros((16, 8), np.float32)
  folder = _write_t5x_layout(str(tmp_path / "ckpt"), tree)
  if breakage == "garbage":
    with open(os.path.join(folder, "checkpoint"), "wb") as f:
      f.write(b"\xc1 not msgpack")
  with pytest.raises(CheckpointMismatchError, match=message):
    importer.import_checkpoint("t5x", folder, str(tmp_path / "out"), model="tiny")
  assert not os.path.exists(tmp_path / "out")


def test_a_bit_file_that_does_not_fit_writes_nothing(tower, tmp_path):
  src = t5x.write(str(tmp_path / "src"), tower)
  np.savez(str(tmp_path / "bit.npz"), **{"conv_root/kernel": np.zeros((7, 7, 3, 9))})
  with pytest.raises(CheckpointMismatchError, match="bit.npz: tensor for 'block1/unit1/"):
    importer.import_checkpoint("t5x", os.path.dirname(src), str(tmp_path / "exp"),
                               model="tiny", visual=f"bit:{tmp_path / 'bit.npz'}")
  assert not os.path.exists(tmp_path / "exp")


def test_not_a_checkpoint_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="no T5X checkpoint"):
    t5x.read(str(tmp_path))
