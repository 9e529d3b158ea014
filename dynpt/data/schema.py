"""The one on-disk example schema that every data source is written in.

Real-data converters (`tools/convert.py`) and the built-in toy world
(`tools/make_toy_data.py`) both write this schema, so every seqio task reads
any source the same way. Layout under a data dir::

  DATA_DIR/<dataset>/<split>/<dataset>-<split>.tfrecord-00000-of-00004

Each record is a `tf.train.Example`. Every feature except `image/id` is
optional; a source writes the ones it has (see `docs/data.md`):

  image/id         bytes      unique id of the image (or video) in its dataset
  image/encoded    bytes      JPEG or PNG bytes of a still image
  video/frames     bytes[]    JPEG/PNG bytes of each frame, in time order
  image/width      int64      width of the image in pixels
  image/height     int64      height of the image in pixels
  text/captions    bytes[]    captions, alt-text or narratives
  objects/label    bytes[]    object class names (may be non-exhaustive)
  objects/bbox     float[]    4 per object, pixel [x0, y0, x1, y1]; empty if none
  question         bytes      a question about the image
  answers          bytes[]    ground-truth answers (10 for VQAv2)
  hypothesis       bytes      visual-entailment hypothesis
  label            bytes      entailment | neutral | contradiction
  refexp           bytes      referring expression
  refexp/bbox      float[4]   pixel [x0, y0, x1, y1] of the referred object

All boxes in the schema are in pixels of the stored image, `xyxy` order; the
box-as-text conversion (`dynpt.data.boxes`) does the normalisation.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

import numpy as np

DATA_DIR_ENV = "DYNPT_DATA_DIR"

BYTES_FEATURES = ("image/id", "image/encoded", "question", "hypothesis",
                  "label", "refexp")
BYTES_LIST_FEATURES = ("video/frames", "text/captions", "objects/label",
                       "answers")
INT_FEATURES = ("image/width", "image/height")
FLOAT_LIST_FEATURES = ("objects/bbox", "refexp/bbox")
ALL_FEATURES = (BYTES_FEATURES + BYTES_LIST_FEATURES + INT_FEATURES +
                FLOAT_LIST_FEATURES)

LABELS_SNLI = ("entailment", "neutral", "contradiction")


def get_data_dir(data_dir: str | None = None) -> str:
  """Returns `data_dir`, else $DYNPT_DATA_DIR, else `./data/toy`."""
  return data_dir or os.environ.get(DATA_DIR_ENV) or os.path.join("data", "toy")


def split_dir(data_dir: str, dataset: str, split: str) -> str:
  return os.path.join(data_dir, dataset, split)


def file_pattern(data_dir: str, dataset: str, split: str) -> str:
  return os.path.join(split_dir(data_dir, dataset, split),
                      f"{dataset}-{split}.tfrecord-?????-of-?????")


def shard_path(data_dir: str, dataset: str, split: str, index: int,
               num_shards: int) -> str:
  return os.path.join(
      split_dir(data_dir, dataset, split),
      f"{dataset}-{split}.tfrecord-{index:05d}-of-{num_shards:05d}")


def _as_bytes(v: Any) -> bytes:
  return v if isinstance(v, bytes) else str(v).encode("utf-8")


def encode_example(record: Mapping[str, Any]) -> bytes:
  """Serializes a record (dict keyed by schema feature names) to bytes.

  Raises:
    ValueError: naming the key, for an unknown key or a missing `image/id`.
  """
  import tensorflow as tf  # Imported lazily: writers may run without TF loaded.

  if "image/id" not in record:
    raise ValueError("schema record is missing the required key 'image/id'")
  feature = {}
  for key, value in record.items():
    if value is None:
      continue
    if key in BYTES_FEATURES:
      feature[key] = tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[_as_bytes(value)]))
    elif key in BYTES_LIST_FEATURES:
      feature[key] = tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[_as_bytes(v) for v in value]))
    elif key in INT_FEATURES:
      feature[key] = tf.train.Feature(
          int64_list=tf.train.Int64List(value=[int(value)]))
    elif key in FLOAT_LIST_FEATURES:
      flat = np.asarray(value, np.float32).reshape(-1)
      if key == "refexp/bbox" and flat.size != 4:
        raise ValueError(f"schema key 'refexp/bbox' needs 4 floats, got {flat.size}")
      if key == "objects/bbox" and flat.size % 4:
        raise ValueError(
            f"schema key 'objects/bbox' needs 4 floats per object, got {flat.size}")
      feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=flat))
    else:
      raise ValueError(f"unknown schema key {key!r}; known keys: {ALL_FEATURES}")
  return tf.train.Example(
      features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec() -> dict:
  """The `tf.io.parse_single_example` spec; absent features parse as empty."""
  import tensorflow as tf

  spec = {}
  for k in BYTES_FEATURES:
    spec[k] = tf.io.FixedLenFeature([], tf.string, default_value="")
  for k in BYTES_LIST_FEATURES:
    spec[k] = tf.io.VarLenFeature(tf.string)
  for k in INT_FEATURES:
    spec[k] = tf.io.FixedLenFeature([], tf.int64, default_value=0)
  for k in FLOAT_LIST_FEATURES:
    spec[k] = tf.io.VarLenFeature(tf.float32)
  return spec


def parse_example(serialized):
  """Parses one serialized record into dense tensors (tf graph-compatible).

  Variable-length lists become dense 1-D tensors; `objects/bbox` becomes
  [num_objects, 4].
  """
  import tensorflow as tf

  parsed = tf.io.parse_single_example(serialized, feature_spec())
  out = {}
  for k, v in parsed.items():
    if isinstance(v, tf.sparse.SparseTensor):
      v = tf.sparse.to_dense(v)
    out[k] = v
  out["objects/bbox"] = tf.reshape(out["objects/bbox"], [-1, 4])
  return out


class ShardedWriter:
  """Writes records round-robin into `num_shards` TFRecord files of one split.

  Use as a context manager. Shards are written to a temporary name and
  renamed on close, so an interrupted conversion never leaves a shard that
  looks complete.
  """

  def __init__(self, data_dir: str, dataset: str, split: str,
               num_shards: int = 1):
    import tensorflow as tf

    self._tf = tf
    self.paths = [shard_path(data_dir, dataset, split, i, num_shards)
                  for i in range(num_shards)]
    # gfile, like the writers: a `gs://` data_dir must not become a local `./gs:/` folder.
    tf.io.gfile.makedirs(split_dir(data_dir, dataset, split))
    self._writers = [tf.io.TFRecordWriter(p + ".tmp") for p in self.paths]
    self.count = 0

  def write(self, record: Mapping[str, Any]) -> None:
    self._writers[self.count % len(self._writers)].write(encode_example(record))
    self.count += 1

  def write_all(self, records: Iterable[Mapping[str, Any]]) -> int:
    for r in records:
      self.write(r)
    return self.count

  def close(self) -> None:
    for w, p in zip(self._writers, self.paths):
      w.close()
      self._tf.io.gfile.rename(p + ".tmp", p, overwrite=True)
    self._writers = []

  def __enter__(self) -> "ShardedWriter":
    return self

  def __exit__(self, exc_type, *unused) -> None:
    if exc_type is None:
      self.close()
    else:
      for w in self._writers:
        w.close()


def read_records(data_dir: str, dataset: str, split: str) -> list[dict]:
  """Reads a whole split into Python dicts of numpy values (tests, tools)."""
  import tensorflow as tf

  files = sorted(tf.io.gfile.glob(file_pattern(data_dir, dataset, split)))
  if not files:
    raise FileNotFoundError(
        f"no records for dataset {dataset!r} split {split!r} under "
        f"{split_dir(data_dir, dataset, split)}")
  ds = tf.data.TFRecordDataset(files).map(parse_example)
  return [{k: v.numpy() for k, v in ex.items()} for ex in ds]
