"""T5X checkpoint folders, as t5x's `checkpoints.py` writes them.

A folder (e.g. `t5_1_1_base/checkpoint_1000000/`) holds one msgpack file, `checkpoint`:
{'version': 3, 'optimizer': {'target': {params}, 'state': {step, param_states}}}. Each
leaf is either the array itself (small, unpartitioned ones) or a TensorStore spec
({'driver': 'zarr', 'kvstore': {'driver': 'file', 'path': 'target.encoder.layers_0...'},
'metadata': {...}}) whose zarr array sits in the folder under that relative path (a
'gcs' kvstore names the same relative path; specs written with tensorstore < 0.1.14 keep
`path` beside the kvstore). T5X's T5 1.1 param names are dynpt's
(`dynpt.models.t5`), so the text tower is `optimizer/target` as it is.

The writer stores every param as a gzip'd zarr array and the step; it writes no
optimizer state (an export has none), so T5X reads it with
`checkpoints.load_t5x_checkpoint` or as an initial checkpoint restored params-only.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flax import serialization, traverse_util

from dynpt import fs
from dynpt.interop import text_tower
from dynpt.interop.text_tower import CheckpointMismatchError

CHECKPOINT_FILE = "checkpoint"
VERSION = 3
_CHUNK_BYTES = 64 * 1024 * 1024  # T5X's desired chunk size.


def checkpoint_dir(path: str) -> str:
  """The folder holding the `checkpoint` file: `path` or its latest checkpoint_<step>."""
  if fs.isfile(fs.join(path, CHECKPOINT_FILE)):
    return path
  if fs.basename(path) == CHECKPOINT_FILE and fs.isfile(path):
    return fs.dirname(path)
  steps = []
  if fs.isdir(path):
    for name in fs.listdir(path):
      prefix, _, step = name.partition("_")
      if (prefix == "checkpoint" and step.isascii() and step.isdigit()
          and fs.isfile(fs.join(path, name, CHECKPOINT_FILE))):
        steps.append(int(step))
  if not steps:
    raise FileNotFoundError(f"{path}: no T5X checkpoint (a folder with a msgpack "
                            f"'{CHECKPOINT_FILE}' file, or checkpoint_<step>/ folders)")
  return fs.join(path, f"checkpoint_{max(steps)}")


_DRIVERS = ("zarr", "zarr3")  # What T5X writes; a spec may not reach elsewhere.


def _is_spec(leaf: Any) -> bool:
  return isinstance(leaf, dict) and "driver" in leaf and "kvstore" in leaf


def _read_array(spec: Mapping[str, Any], folder: str, name: str) -> np.ndarray:
  import tensorstore as ts

  spec = dict(spec)
  kvstore = spec["kvstore"] if isinstance(spec["kvstore"], dict) else {}
  # tensorstore >= 0.1.14 keeps the path in the kvstore; older t5x specs beside it.
  relative = kvstore.get("path") or spec.pop("path", None)
  if not relative:
    raise CheckpointMismatchError(f"{folder}: tensor {name!r} has no kvstore path")
  parts = relative.rstrip("/").split("/") if isinstance(relative, str) else [""]
  if any(p in ("", ".", "..") for p in parts) or "\\" in relative or "://" in relative:
    raise CheckpointMismatchError(f"{folder}: tensor {name!r} names {relative!r}, which "
                                  "is not a path inside the checkpoint folder")
  if spec.get("driver") not in _DRIVERS:
    raise CheckpointMismatchError(f"{folder}: tensor {name!r} has TensorStore driver "
                                  f"{spec.get('driver')!r}; T5X writes {_DRIVERS}")
  spec["kvstore"] = fs.tensorstore_kvstore(fs.join(folder, relative))
  try:
    return np.asarray(ts.open(spec, open=True, read=True).result().read().result())
  except (ValueError, RuntimeError, TypeError, KeyError) as e:  # Missing or bad data.
    raise CheckpointMismatchError(f"{folder}: tensor {name!r} could not be read from "
                                  f"{relative} ({e})") from e


def read_target(path: str) -> tuple[dict[str, Any], int | None]:
  """(the `target` params as nested numpy arrays, step) of a T5X checkpoint."""
  folder = checkpoint_dir(path)
  file = fs.join(folder, CHECKPOINT_FILE)
  raw = fs.read_bytes(file)
  try:
    contents = serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises several unrelated types.
    raise CheckpointMismatchError(f"{file}: not a msgpack T5X checkpoint ({e})") from e
  if not isinstance(contents, dict):
    raise CheckpointMismatchError(f"{file}: not a T5X checkpoint (no dict at the top)")
  state = contents.get("optimizer", contents)
  if not isinstance(state, dict) or "target" not in state:
    raise CheckpointMismatchError(f"{file}: no 'optimizer/target' params (keys: "
                                  f"{sorted(state) if isinstance(state, dict) else state})")
  step = state.get("state", {}).get("step") if isinstance(state.get("state"), dict) else None
  if _is_spec(step):
    step = _read_array(step, folder, "state/step")
  if not isinstance(state["target"], dict) or not state["target"]:
    raise CheckpointMismatchError(f"{file}: 'target' is not a tree of params")
  flat = traverse_util.flatten_dict(state["target"], sep="/",
                                    is_leaf=lambda _, v: _is_spec(v))
  arrays = {k: _numeric(_read_array(v, folder, "target/" + k) if _is_spec(v) else v,
                        file, "target/" + k)
            for k, v in flat.items()}
  if step is not None:
    step = _numeric(step, file, "state/step")
    if step.size != 1 or step.dtype.kind not in "iu":
      raise CheckpointMismatchError(f"{file}: 'state/step' is not one integer")
  return traverse_util.unflatten_dict(arrays, sep="/"), (None if step is None
                                                         else int(step.reshape(())))


def _numeric(value: Any, file: str, name: str) -> np.ndarray:
  """`value` as an array of numbers (bfloat16 included), else a named error."""
  try:
    array = np.asarray(value)
    np.asarray(array, np.float32)  # Strings, bytes and objects do not convert.
  except (TypeError, ValueError, OverflowError) as e:
    raise CheckpointMismatchError(f"{file}: {name} is not an array of numbers "
                                  f"({type(e).__name__}: {e})") from e
  if array.dtype.kind in "OSUV" and array.dtype.name != "bfloat16":
    raise CheckpointMismatchError(f"{file}: {name} holds {array.dtype}, not numbers")
  return array


def read(path: str, max_distance: int = 128) -> tuple[Any, dict[str, Any], int | None]:
  """(T5Config, text tower params, step) of a T5X T5 1.1 checkpoint.

  The sizes are read off the shapes (`text_tower.infer_sizes`); `max_distance` is the
  one size shapes do not carry.

  Raises:
    FileNotFoundError: no checkpoint file.
    CheckpointMismatchError: not a T5 1.1 tree, naming the tensor.
  """
  target, step = read_target(path)
  source = fs.join(checkpoint_dir(path), CHECKPOINT_FILE)
  tower = text_tower.text_tower_of(target, source)
  extra = sorted(set(target) - set(text_tower.TEXT_TOWER_KEYS))
  if extra:
    raise CheckpointMismatchError(f"{source}: target/{extra[0]} is not part of a T5 1.1 "
                                  "encoder-decoder")
  sizes, vocab_size = text_tower.infer_sizes(tower, source, max_distance,
                                                 prefix="target/")
  cfg = text_tower.t5_config(sizes, vocab_size)
  tower = text_tower.as_float32(tower)
  text_tower.check_text_tower(tower, cfg, source, prefix="target/")
  return cfg, tower, step


def _chunks(shape: tuple[int, ...], itemsize: int) -> list[int]:
  """Halves the largest axis until a chunk is at most T5X's 64 MiB."""
  chunks = list(shape) or [1]
  while np.prod(chunks) * itemsize > _CHUNK_BYTES:
    i = int(np.argmax(chunks))
    chunks[i] = -(-chunks[i] // 2)
  return [int(c) for c in chunks]


def write(out_dir: str, params: Mapping[str, Any], step: int = 0) -> str:
  """Writes `{'target': params}` as a T5X checkpoint folder; returns its msgpack file.

  Every leaf becomes a gzip'd zarr array under its dotted name, as t5x writes
  partitioned params, so a large tower is never held twice in the msgpack.
  """
  import tensorstore as ts

  fs.makedirs(out_dir)
  flat = traverse_util.flatten_dict({"target": dict(params)}, sep="/")
  specs = {}
  for path, value in flat.items():
    value = np.asarray(value)
    name = path.replace("/", ".")
    metadata = {"shape": list(value.shape), "chunks": _chunks(value.shape, value.itemsize),
                "compressor": {"id": "gzip"}}
    spec = {"driver": "zarr", "dtype": value.dtype.name,
            "kvstore": {"driver": "file", "path": name}, "metadata": metadata}
    store = ts.open(dict(spec, kvstore=fs.tensorstore_kvstore(fs.join(out_dir, name))),
                    create=True, delete_existing=True).result()
    store.write(value).result()
    specs[path] = spec
  tree = traverse_util.unflatten_dict(specs, sep="/")
  contents = {"version": VERSION,
              "optimizer": {"target": tree["target"],
                            "state": {"step": np.asarray(step, np.int32)}}}
  file = fs.join(out_dir, CHECKPOINT_FILE)
  fs.write_bytes(file, serialization.msgpack_serialize(contents))
  return file
