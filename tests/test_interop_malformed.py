"""Malformed input to the import tools' readers (dynpt/interop): each is one
`CheckpointMismatchError` naming the file and what is wrong, which the tool prints
as one `error:` line; nothing is read from outside the checkpoint's folder."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import serialization

from dynpt.interop import bit, hf, importer, t5x
from dynpt.interop.text_tower import CheckpointMismatchError
from dynpt.models.configs import ResNetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = ResNetConfig(depth=26, width=0.125, num_groups=4)
HF_CONFIG = {"model_type": "t5", "feed_forward_proj": "gated-gelu", "d_model": 16,
             "num_heads": 2, "d_kv": 8, "d_ff": 24, "num_layers": 2,
             "num_decoder_layers": 1, "vocab_size": 640}


def _npz(path):
  rng = np.random.default_rng(0)
  np.savez(path, **{k: rng.normal(size=s).astype(np.float32)
                    for k, s in list(bit.expected_shapes(CFG).items())[:6]})
  return str(path)


def _flip(path, at):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    data[at] ^= 0x55
    f.seek(0)
    f.write(bytes(data))


def _cut(path, keep):
  with open(path, "r+b") as f:
    f.truncate(keep)


@pytest.mark.parametrize("damage", ["truncated", "flipped_data_byte", "flipped_zip_header"])
def test_a_damaged_bit_npz_is_named(tmp_path, damage):
  path = _npz(tmp_path / "bit.npz")
  size = os.path.getsize(path)
  if damage == "truncated":
    _cut(path, size // 2)
  elif damage == "flipped_data_byte":
    _flip(path, size // 3)  # Inside an array: the member's CRC-32 fails.
  else:
    _flip(path, size - 10)  # The zip's central directory.
  with pytest.raises(CheckpointMismatchError, match=f"{path}: not a readable .npz"):
    bit.read(path, CFG)
  with pytest.raises(CheckpointMismatchError, match=path):
    bit.is_release(path)


def test_the_import_tool_names_a_truncated_bit_file_in_one_line(tmp_path):
  path = _npz(tmp_path / "bit.npz")
  _cut(path, 100)
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tools", "import_checkpoint.py"), "--format=t5x",
       f"--path={tmp_path}", f"--out_dir={tmp_path / 'out'}", f"--visual=bit:{path}"],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {path}: not a readable .npz file"), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "out").exists()


def _hf_folder(folder, config=HF_CONFIG):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, hf.CONFIG_FILE), "w") as f:
    f.write(config if isinstance(config, str) else json.dumps(config))
  return str(folder)


@pytest.mark.parametrize("index", [{"metadata": {"total_size": 4}}, {"weight_map": []},
                                   [1, 2], "not json"])
def test_a_sharded_index_without_weight_map_is_named(tmp_path, index):
  folder = _hf_folder(tmp_path / "hf")
  path = os.path.join(folder, hf.WEIGHTS_FILE + ".index.json")
  with open(path, "w") as f:
    f.write(index if isinstance(index, str) else json.dumps(index))
  with pytest.raises(CheckpointMismatchError, match=f"{path}: .*(weight_map|JSON)"):
    hf.read(folder)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/abs/outside.safetensors",
                                   "missing-00001-of-00001.safetensors"])
def test_a_sharded_index_reads_only_its_own_files(tmp_path, shard):
  from safetensors.numpy import save_file

  folder = _hf_folder(tmp_path / "hf")
  save_file({"shared.weight": np.zeros((640, 16), np.float32)},
            str(tmp_path / "outside.safetensors"))
  path = os.path.join(folder, hf.WEIGHTS_FILE + ".index.json")
  with open(path, "w") as f:
    json.dump({"weight_map": {"shared.weight": shard}}, f)
  with pytest.raises(CheckpointMismatchError,
                     match=f"{path}: .*(not a file name inside|does not exist)"):
    hf.read(folder)


def _safetensors_header(header, data=b""):
  raw = json.dumps(header).encode()
  return len(raw).to_bytes(8, "little") + raw + data


MALFORMED_SAFETENSORS = {
    "garbage": b"\x01\x02garbage",
    "header_past_the_end": (10 ** 6).to_bytes(8, "little") + b"{}",
    "header_not_an_object": _safetensors_header([1, 2]),
    "bf16_offsets_not_a_pair": _safetensors_header(
        {"shared.weight": {"dtype": "BF16", "shape": [2], "data_offsets": "x"}}, b"\0" * 4),
    "bf16_truncated_data": _safetensors_header(
        {"shared.weight": {"dtype": "BF16", "shape": [640, 16],
                           "data_offsets": [0, 640 * 16 * 2]}}, b"\0" * 10),
    "bf16_entry_not_an_object": _safetensors_header({"shared.weight": 3}),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED_SAFETENSORS))
def test_a_malformed_safetensors_file_is_named(tmp_path, kind):
  folder = _hf_folder(tmp_path / "hf")
  path = os.path.join(folder, hf.WEIGHTS_FILE)
  with open(path, "wb") as f:
    f.write(MALFORMED_SAFETENSORS[kind])
  with pytest.raises(CheckpointMismatchError, match=f"{path}: "):
    importer.read_text_tower("hf", folder)


@pytest.mark.parametrize("config", [
    "[1, 2]", b"\xff\xfe{}", dict(HF_CONFIG, num_layers="two"),
    dict(HF_CONFIG, d_model=-16), dict(HF_CONFIG, layer_norm_epsilon="small"),
    dict(HF_CONFIG, vocab_size=[640])])
def test_a_malformed_config_json_is_named(tmp_path, config):
  folder = str(tmp_path / "hf")
  os.makedirs(folder)
  with open(os.path.join(folder, hf.CONFIG_FILE), "wb") as f:
    f.write(config if isinstance(config, bytes) else
            (config if isinstance(config, str) else json.dumps(config)).encode())
  with pytest.raises(CheckpointMismatchError, match=os.path.join(folder, hf.CONFIG_FILE)):
    importer.read_text_tower("hf", folder)


def _t5x(folder, target, step=7):
  os.makedirs(folder, exist_ok=True)
  contents = {"version": 3, "optimizer": {"target": target, "state": {"step": step}}}
  with open(os.path.join(folder, t5x.CHECKPOINT_FILE), "wb") as f:
    f.write(serialization.msgpack_serialize(contents))
  return os.path.join(folder, t5x.CHECKPOINT_FILE)


def _spec(path, driver="zarr"):
  return {"driver": driver, "dtype": "float32", "kvstore": {"driver": "file", "path": path},
          "metadata": {"shape": [2], "chunks": [2], "compressor": None}}


@pytest.mark.parametrize("target,wanted", [
    ({"token_embedder": {"embedding": _spec("../../outside")}}, "not a path inside"),
    ({"token_embedder": {"embedding": _spec("/etc/outside")}}, "not a path inside"),
    ({"token_embedder": {"embedding": _spec("x", driver="json")}}, "driver 'json'"),
    ({"token_embedder": {"embedding": "a string"}}, "not an array of numbers"),
    ({"token_embedder": {"embedding": b"bytes"}}, "not an array of numbers"),
    ([1, 2], "not a tree of params"),
])
def test_a_malformed_t5x_checkpoint_is_named(tmp_path, target, wanted):
  file = _t5x(str(tmp_path / "ckpt"), target)
  with pytest.raises(CheckpointMismatchError, match=wanted) as err:
    importer.read_text_tower("t5x", str(tmp_path / "ckpt"))
  assert str(err.value).startswith(os.path.dirname(file))


def test_a_t5x_step_that_is_no_integer_is_named(tmp_path):
  file = _t5x(str(tmp_path / "ckpt"), {"token_embedder": {"embedding": np.zeros(2)}},
              step="seven")
  with pytest.raises(CheckpointMismatchError, match=f"{file}: state/step"):
    t5x.read_target(str(tmp_path / "ckpt"))


def test_a_checkpoint_folder_with_a_non_ascii_digit_is_no_step(tmp_path):
  os.makedirs(tmp_path / "checkpoint_\u2460")
  (tmp_path / "checkpoint_\u2460" / t5x.CHECKPOINT_FILE).write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="no T5X checkpoint"):
    t5x.checkpoint_dir(str(tmp_path))
