"""The seqio data source over the on-disk schema, with deterministic epochs.

`SchemaDataSource` reads ``DATA_DIR/<dataset>/<split>/`` (see
`dynpt.data.schema`) and is the source of every dynpt task. Its
`epoch_dataset` is what makes the input pipeline resumable:

- Order: the split's files are read in a per-epoch permuted order (seeded by
  (seed, epoch)), interleaved deterministically, then shuffled with a fixed-seed
  buffer (``reshuffle_each_iteration=False``). The order of an epoch is thus a
  pure function of (seed, epoch); without `shuffle` it is the file order.
- Shard: element ``i`` of that order belongs to shard ``i % num_shards``, so
  shards are disjoint and cover the split; every host reads the raw bytes of
  the whole split but parses only its own records.
- Skip: the first `offset` records of the shard are dropped BEFORE parsing, so
  resuming deep into an epoch costs reading bytes, not decoding images.
- Randomness: each record gets a stateless seed ``[f(seed, epoch), key]``
  where ``key = file_index << 32 | index_in_file`` identifies the record, and a
  position ``epoch * shard_size + i``. Preprocessors draw from the seed only.
- Extras: ITM tasks get ``neg/captions`` from a second, differently seeded
  order of the same shard (zipped, skipped alike); object tasks get
  ``objects/candidates`` drawn from the dataset's label vocabulary.

The order uses tf.data's seeded shuffle, whose seed also mixes in TensorFlow's
global seed: a process that calls `tf.random.set_seed` must call it with the
same value on resume (dynpt never sets it).

TensorFlow is kept off accelerators here (this module is imported by every
data path) so it never competes with JAX for device memory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Sequence

import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from dynpt.data import preprocessors as pp
from dynpt.data import record_integrity, schema


def _keep_tensorflow_on_cpu() -> None:
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # Already initialised: too late to change, and harmless on CPU hosts.
    logging.warning("TensorFlow was initialised before dynpt.data; it may see GPUs.")


_keep_tensorflow_on_cpu()

DEFAULT_SHUFFLE_BUFFER = 10_000
MAX_LABEL_CANDIDATES = 32
LABELS_FILE = "labels.txt"
_FILE_KEY_SHIFT = 2 ** 32

# Splits of each dataset (docs/data.md); seqio only uses them for listing.
PRETRAINING_SPLITS = ("train", "validation")
DOWNSTREAM_SPLITS = {
    "vqav2": ("train", "val", "test"), "gqa": ("train", "val", "test"),
    "snli_ve": ("train", "val", "test"),
    "refcoco": ("train", "val", "testA", "testB"),
    "refcocoplus": ("train", "val", "testA", "testB"),
    "refcocog": ("train", "val", "test"),
    "msrvtt_qa": ("train", "val", "test"), "msvd_qa": ("train", "val", "test"),
    "ivqa": ("train", "val", "test"),
}


# Map functions here have no Python control flow over tensors; skipping AutoGraph's
# source conversion saves most of a pipeline's build time.
_no_autograph = tf.autograph.experimental.do_not_convert


def derive_seed(*parts: int) -> int:
  """A 31-bit seed that is a pure function of integer `parts`."""
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


def missing_data_error(task: str, dataset: str, split: str, data_dir: str
                       ) -> FileNotFoundError:
  """The error for a task whose data is not on disk, with the commands that build it."""
  pattern = schema.file_pattern(data_dir, dataset, split)
  return FileNotFoundError(
      f"task {task!r}: no records of dataset {dataset!r} split {split!r}: nothing matches "
      f"{pattern}. Build the toy data with `python tools/make_toy_data.py "
      f"--data_dir={data_dir}` or convert the real data with `python tools/convert.py "
      f"{dataset} --data_dir={data_dir} ...` (see docs/data.md).")


def list_files(data_dir: str, dataset: str, split: str) -> list[str]:
  """Sorted shard files of a split ([] when absent)."""
  return sorted(tf.io.gfile.glob(schema.file_pattern(data_dir, dataset, split)))


def _files_key(files: Sequence[str]) -> tuple:
  return tuple((f, tf.io.gfile.stat(f).length) for f in files)


@functools.lru_cache(maxsize=512)
def _scan(files_key: tuple) -> tuple[int, tuple[record_integrity.Damage, ...]]:
  """(readable records, damage of each damaged file) of `files_key`'s files.

  One fast TensorFlow pass counts the records; only when it meets damage
  (`DataLossError`) is each file checked frame by frame
  (`record_integrity.scan_file`) to find how many records precede it.
  """
  files = [f for f, _ in files_key]
  ds = tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8))
  try:
    return int(ds.reduce(np.int64(0), lambda count, _: count + 1)), ()
  except tf.errors.DataLossError:
    pass
  total, damaged, sound_bytes, sound_records = 0, [], 0, 0
  for path, size in files_key:
    count, damage = record_integrity.scan_file(path)
    total += count
    if damage is None:
      sound_bytes, sound_records = sound_bytes + size, sound_records + count
    else:
      damaged.append(damage)
  if sound_records:  # Where a file's framing broke, size its loss by the sound files.
    mean = sound_bytes / sound_records
    damaged = [d if d.exact else dataclasses.replace(
        d, lost=max(1, math.ceil((size - d.offset) / mean)))
        for d, size in zip(damaged, [dict(files_key)[d.path] for d in damaged])]
  return total, tuple(damaged)


def count_records(files: Sequence[str]) -> int:
  """Readable records in `files` (those before any damage), counted once per
  process (files' sizes key the cache)."""
  return _scan(_files_key(files))[0] if files else 0


def damaged_files(files: Sequence[str]) -> tuple[record_integrity.Damage, ...]:
  """The damage found in `files` (empty when all are sound); cached with the count."""
  return _scan(_files_key(files))[1] if files else ()


def _readable_limits(files: Sequence[str]) -> list[int]:
  """Records to read of each file: all (-1), or those before its damage."""
  readable = {d.path: d.readable for d in damaged_files(files)}
  return [readable.get(f, -1) for f in files]


def readable_records(files: Sequence[str]) -> tf.data.Dataset:
  """Raw records of `files` in order, each damaged file cut before its damage."""
  return tf.data.Dataset.from_tensor_slices(
      (list(files), tf.constant(_readable_limits(files), tf.int64))).flat_map(
          lambda path, limit: tf.data.TFRecordDataset(path).take(limit))


@functools.lru_cache(maxsize=64)
def label_vocabulary(data_dir: str, dataset: str) -> tuple[str, ...]:
  """Sorted class names of a label source, for sampling absent labels.

  Read from ``DATA_DIR/<dataset>/labels.txt`` (one name a line) when present,
  else collected once from the ``train`` split's ``objects/label`` (or the
  first split found if there is no train split).

  Raises:
    FileNotFoundError / ValueError: naming the dataset, when no labels exist.
  """
  path = os.path.join(data_dir, dataset, LABELS_FILE)
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      labels = {line.strip() for line in f if line.strip()}
  else:
    files = list_files(data_dir, dataset, "train")
    if not files:
      files = sorted(tf.io.gfile.glob(os.path.join(data_dir, dataset, "*", "*.tfrecord-*")))
    if not files:
      raise FileNotFoundError(f"label vocabulary of dataset {dataset!r}: no {path} and no "
                              f"records under {os.path.join(data_dir, dataset)}")
    spec = {"objects/label": tf.io.VarLenFeature(tf.string)}
    ds = readable_records(files).map(
        lambda r: tf.io.parse_single_example(r, spec)["objects/label"].values)
    labels = set()
    for batch in ds.unbatch().batch(4096).as_numpy_iterator():
      labels.update(v.decode("utf-8").strip() for v in batch)
    labels.discard("")
  if not labels:
    raise ValueError(f"label vocabulary of dataset {dataset!r} under {data_dir} is empty")
  return tuple(sorted(labels))


def _record_stream(files: Sequence[str], *, seed: int, shuffle: bool, shard_index: int,
                   num_shards: int, offset: int, buffer_size: int) -> tf.data.Dataset:
  """(key, raw record) of one epoch of one shard, from record `offset` on."""
  order = (np.random.default_rng(seed).permutation(len(files)) if shuffle
           else np.arange(len(files)))
  file_ids = tf.constant(order, tf.int64)
  paths = tf.constant([files[i] for i in order])
  limits = _readable_limits(files)
  limits = tf.constant([limits[i] for i in order], tf.int64)

  def read(file_id, path, limit):
    # A damaged file is read up to its damage only (`take(-1)` reads all).
    return tf.data.TFRecordDataset(path).take(limit).enumerate().map(
        _no_autograph(lambda i, raw: (file_id * _FILE_KEY_SHIFT + i, raw)))

  ds = tf.data.Dataset.from_tensor_slices((file_ids, paths, limits)).interleave(
      _no_autograph(read), cycle_length=min(len(files), 16), block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if shuffle:
    ds = ds.shuffle(buffer_size, seed=derive_seed(seed, 1), reshuffle_each_iteration=False)
  if num_shards > 1:
    ds = ds.shard(num_shards, shard_index)
  return ds.skip(offset)


class SchemaDataSource(seqio.DataSource):
  """One dataset of the on-disk schema, as the source of one task.

  Args:
    dataset: dataset name under the data dir (``cc3m``, ``oi``, ``vqav2``...).
    task_name: the task this source feeds (named in errors).
    negatives: attach ``neg/captions`` of another record (image-text matching).
    label_candidates: attach ``objects/candidates`` (object-aware tasks).
    splits: split names, for listing only.
  """

  def __init__(self, dataset: str, *, task_name: str, negatives: bool = False,
               label_candidates: bool = False, splits: Sequence[str] = PRETRAINING_SPLITS):
    super().__init__(splits=splits, caching_permitted=False)
    self.dataset = dataset
    self.task_name = task_name
    self.negatives = negatives
    self.label_candidates = label_candidates

  def __repr__(self) -> str:
    return f"SchemaDataSource({self.dataset!r}, task_name={self.task_name!r})"

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def files(self, split: str, data_dir: str | None = None) -> list[str]:
    """Shard files of `split`; raises the missing-data error when there are none."""
    data_dir = schema.get_data_dir(data_dir)
    files = list_files(data_dir, self.dataset, split)
    if not files:
      raise missing_data_error(self.task_name, self.dataset, split, data_dir)
    return files

  def list_shards(self, split: str) -> Sequence[str]:
    return list_files(schema.get_data_dir(), self.dataset, split)

  def num_records(self, split: str, data_dir: str | None = None) -> int:
    return count_records(self.files(split, data_dir))

  def damage(self, split: str, data_dir: str | None = None
             ) -> tuple[record_integrity.Damage, ...]:
    """Damaged files of `split` (whose records after the damage are not read)."""
    return damaged_files(self.files(split, data_dir))

  def record_location(self, split: str, *, data_dir: str | None, seed: int, epoch: int,
                      shuffle: bool, shard_index: int, num_shards: int, index: int,
                      buffer_size: int = DEFAULT_SHUFFLE_BUFFER) -> tuple[str, int]:
    """(file, record index in that file) of record `index` of an epoch's shard.

    Replays the raw record order up to `index` (bytes only, no parsing), so
    it costs a fraction of an epoch's reading: meant for naming the few
    records a run had to skip, not for every record.
    """
    data_dir = schema.get_data_dir(data_dir)
    files = self.files(split, data_dir)
    ds = _record_stream(files, seed=derive_seed(seed, epoch, 0), shuffle=shuffle,
                        shard_index=shard_index, num_shards=num_shards, offset=index,
                        buffer_size=buffer_size).take(1)
    for key, _ in ds.as_numpy_iterator():
      return files[int(key) // _FILE_KEY_SHIFT], int(key) % _FILE_KEY_SHIFT
    raise IndexError(f"{self!r}: split {split!r} shard {shard_index}/{num_shards} has no "
                     f"record {index} in epoch {epoch}")

  def num_input_examples(self, split: str) -> int | None:
    files = list_files(schema.get_data_dir(), self.dataset, split)
    return count_records(files) if files else None

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: int | None = 1) -> tf.data.Dataset:
    """seqio entry point: epoch 0 of the split under $DYNPT_DATA_DIR (or ./data/toy).

    seqio repeats this dataset itself, with the same per-example randomness in
    every repeat; training uses `dynpt.data.pipeline.TaskIterator` instead.
    """
    del sequence_length, use_cached, num_epochs  # Unused, as in seqio's sources.
    index, count = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
    return self.epoch_dataset(split, data_dir=None, seed=int(seed or 0), epoch=0,
                              shuffle=shuffle, shard_index=index, num_shards=count)

  def epoch_dataset(self, split: str, *, data_dir: str | None, seed: int, epoch: int,
                    shuffle: bool, shard_index: int = 0, num_shards: int = 1,
                    offset: int = 0, shard_size: int | None = None,
                    buffer_size: int = DEFAULT_SHUFFLE_BUFFER) -> tf.data.Dataset:
    """Parsed records of one epoch of one shard, from the shard's record `offset` on.

    Each record carries ``SEED_KEY`` and ``POS_KEY`` (see the module docstring)
    plus the extras this source was built with.
    """
    data_dir = schema.get_data_dir(data_dir)
    files = self.files(split, data_dir)
    if shard_size is None:
      shard_size = len(range(shard_index, count_records(files), num_shards))
    stream = functools.partial(_record_stream, files, shard_index=shard_index,
                               num_shards=num_shards, offset=offset, buffer_size=buffer_size)
    ds = stream(seed=derive_seed(seed, epoch, 0), shuffle=shuffle).enumerate(start=offset)
    example_seed = derive_seed(seed, epoch, 2)
    first_position = epoch * shard_size

    def parse(index, key_and_raw):
      key, raw = key_and_raw
      features = schema.parse_example(raw)
      features[pp.SEED_KEY] = tf.stack([tf.constant(example_seed, tf.int64), key])
      features[pp.POS_KEY] = first_position + index
      return features

    if self.negatives:
      # A second order of the same shard, always shuffled so that position i
      # pairs with another record even when the main order is not shuffled.
      negative = stream(seed=derive_seed(seed, epoch, 3), shuffle=True)
      ds = tf.data.Dataset.zip((ds, negative))

      def parse_with_negative(main, neg):
        features = parse(*main)
        spec = {"text/captions": tf.io.VarLenFeature(tf.string)}
        neg_features = tf.io.parse_single_example(neg[1], spec)
        features[pp.NEG_CAPTIONS_KEY] = tf.sparse.to_dense(neg_features["text/captions"])
        return features

      ds = ds.map(_no_autograph(parse_with_negative), num_parallel_calls=tf.data.AUTOTUNE)
    else:
      ds = ds.map(_no_autograph(parse), num_parallel_calls=tf.data.AUTOTUNE)
    if self.label_candidates:
      ds = ds.map(_no_autograph(functools.partial(
          _add_candidates, vocab=label_vocabulary(data_dir, self.dataset))),
          num_parallel_calls=tf.data.AUTOTUNE)
    return ds


def _add_candidates(features: dict, vocab: tuple[str, ...]) -> dict:
  """``objects/candidates``: the whole vocabulary shuffled if small, else 32 draws."""
  table = tf.constant(vocab)
  seed = pp.fold_seed(features[pp.SEED_KEY], 7)
  if len(vocab) <= MAX_LABEL_CANDIDATES:
    idx = pp.shuffle(tf.range(len(vocab)), seed)
  else:
    idx = tf.random.stateless_uniform([MAX_LABEL_CANDIDATES], seed, minval=0,
                                      maxval=len(vocab), dtype=tf.int32)
  features[pp.CANDIDATES_KEY] = tf.gather(table, idx)
  return features
