"""Deterministic, resumable per-task input streams for the trainer.

One `TaskIterator` per task and host. The example at position ``p`` of
(task, seed, shard) is a pure function of those values, whatever position the
iterator was created at:

- epoch ``e = p // shard_size`` has its own record order, seeded by (seed, e);
- the iterator skips ``p % shard_size`` raw records of that epoch before any
  parsing or decoding;
- all preprocessing randomness (MLM masks, completion cut, ITM negatives,
  absent labels) comes from a stateless per-record seed (seed, e, record key),
  not from seqio's stream-position seeds (see `dynpt.data.sources`).

The data state of a task is therefore three small ints (`state`), as the
paper-scale run requires. ``position`` counts record slots of the stream: a
record that fails to parse or decode is skipped (and counted in ``skipped``)
but still uses its slot, so a resumed iterator skips it the same way.

What is skipped is never silent. The first few skipped records of each
iterator are logged with their file, their index in it and the error (found
by replaying the record order and re-reading that one record); after those a
count is logged at most once a minute. A damaged TFRecord file is read up to
its damage (`dynpt.data.record_integrity`), logged once with the task, and
its remaining records are counted in `damaged_records`; past
`max_damaged_fraction` of a split the run fails (`DataDamageError`).

TensorFlow runs on the CPU only (`dynpt.data.sources` hides GPUs from it) and
examples are pulled in small batches from a prefetching tf.data pipeline, so
`take` costs a few numpy concatenations per call.
"""

from __future__ import annotations

import functools
import re
import time

import numpy as np
import seqio
import tensorflow as tf
from absl import logging

from dynpt.data import feature_converter as fc
from dynpt.data import preprocessors as pp
from dynpt.data import schema
from dynpt.data import sources
from dynpt.data import task_registry

_PULL_BATCH = 32  # Examples per tf.data batch; `take` slices and concatenates these.
DIAGNOSED_SKIPS = 3  # Skipped records per iterator logged with file and error.
SKIP_REPORT_SECONDS = 60.0  # After those, a count at most this often.
_MAX_ERROR_CHARS = 300
_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*|Error in user-defined "
                            r"function passed to \S+ transformation with iterator: \S+: ")


class DataDamageError(ValueError):
  """Too much of a task's data cannot be read; names the task and files."""


@functools.lru_cache(maxsize=None)
def _log_damage(task_name: str, split: str, damage: tuple) -> None:
  """Logs each damaged file of a task's split once per process."""
  for d in damage:
    logging.warning("task %r split %r: damaged TFRecord file %s", task_name,
                    split, d.describe())


def _short_error(error: BaseException) -> str:
  """First line of a TensorFlow error, without its function-node prefix."""
  text = _FUNCTION_NODE.sub("", getattr(error, "message", None) or str(error))
  line = " ".join(text.strip().splitlines()[:1]) or type(error).__name__
  if len(line) > _MAX_ERROR_CHARS:
    line = line[:_MAX_ERROR_CHARS] + " ..."
  return f"{type(error).__name__}: {line}"


def get_task(task_name: str) -> seqio.Task:
  """The registered seqio task.

  Raises:
    ValueError: naming the task, listing the known ones and saying how dynpt's
      tasks are registered.
  """
  if task_name not in seqio.TaskRegistry.names():
    raise ValueError(f"unknown task {task_name!r}; known tasks: "
                     f"{sorted(seqio.TaskRegistry.names())}; "
                     f"{task_registry.REGISTRATION_HINT}")
  task = seqio.TaskRegistry.get(task_name)
  if not isinstance(task.source, sources.SchemaDataSource):
    raise TypeError(f"task {task_name!r} must read a SchemaDataSource, got {task.source!r}")
  return task


def dataset_size(task_name: str, split: str = "train", data_dir: str | None = None) -> int:
  """Records of the task's source split (for size-proportional samplers)."""
  return get_task(task_name).source.num_records(split, data_dir)


def is_video_task(task: seqio.Task) -> bool:
  return task.output_features["image"].rank == 4


class TaskIterator:
  """Deterministic, resumable per-task example stream for one host's shard.

  Args:
    task_name: a registered seqio task.
    task_id: index of the task in the mixture (the ``task_id`` feature).
    sequence_length: {'inputs': 32, 'targets': L}.
    image_size: side of the square model image.
    seed: data seed of the run.
    split: split to read.
    data_dir: data root (default $DYNPT_DATA_DIR or ./data/toy).
    shard_index, num_shards: this host's shard of every epoch.
    start_position: position to resume from (a value of `position`).
    shuffle: per-epoch shuffled order (else file order, the same every epoch).
    repeat: cycle through epochs forever; else stop after the current epoch
      (`take` then returns fewer rows).
    vocabulary: tokenizer (default: the task's registered one).
    num_frames: frames per example of a video task (default 4).
    passthrough: extra non-model features to return (see
      `feature_converter.PASSTHROUGH_SPECS`), e.g. ground truth for metrics.
    augment: mild colour jitter on the image.
    shuffle_buffer_size: records in the order's shuffle buffer.
    max_damaged_fraction: the most of the split that damaged files may make
      unreadable before the iterator refuses to start.

  Raises:
    FileNotFoundError: naming the task, the expected files and the command
      that builds them, when the split is missing.
    DataDamageError: naming the task and the damaged files, when more than
      `max_damaged_fraction` of the split is unreadable.
  """

  def __init__(self, task_name: str, *, task_id: int, sequence_length: dict,
               image_size: int, seed: int, split: str = "train",
               data_dir: str | None = None, shard_index: int = 0, num_shards: int = 1,
               start_position: int = 0, shuffle: bool = True, repeat: bool = True,
               vocabulary=None, num_frames: int | None = None,
               passthrough: tuple[str, ...] = (), augment: bool = False,
               shuffle_buffer_size: int = sources.DEFAULT_SHUFFLE_BUFFER,
               max_damaged_fraction: float = 0.01):
    if not 0 <= shard_index < num_shards:
      raise ValueError(f"task {task_name!r}: shard_index {shard_index} not in [0, {num_shards})")
    if start_position < 0:
      raise ValueError(f"task {task_name!r}: start_position {start_position} < 0")
    self.task_name = task_name
    self.task = get_task(task_name)
    self.task_id = int(task_id)
    self.sequence_length = {k: int(v) for k, v in sequence_length.items()}
    self.seed = int(seed)
    self.split = split
    self.data_dir = schema.get_data_dir(data_dir)
    self.shard_index, self.num_shards = int(shard_index), int(num_shards)
    self.shuffle, self.repeat = shuffle, repeat
    self.shuffle_buffer_size = shuffle_buffer_size
    source = self.task.source
    self.num_records = source.num_records(split, self.data_dir)
    self.damaged_records = self._check_damage(float(max_damaged_fraction))
    self.shard_size = len(range(self.shard_index, self.num_records, self.num_shards))
    if self.shard_size == 0:
      raise ValueError(f"task {task_name!r}: split {split!r} has {self.num_records} records, "
                       f"too few for shard {shard_index} of {num_shards}")
    vocab = vocabulary or self.task.output_features["targets"].vocabulary
    self.output_features = {
        k: (seqio.Feature(vocab, add_eos=f.add_eos, required=f.required, dtype=f.dtype,
                          rank=f.rank) if k in ("inputs", "targets") else f)
        for k, f in self.task.output_features.items()}
    video = is_video_task(self.task)
    self.num_frames = (num_frames or fc.DEFAULT_NUM_FRAMES) if video else None
    self.converter = fc.ImageEncDecFeatureConverter(
        image_size, num_frames=self.num_frames, task_id=self.task_id,
        passthrough=tuple(passthrough) + (pp.POS_KEY,), augment=augment,
        apply_length_check=False)  # trim_and_pad makes lengths exact; skip 2 maps.
    self.image_size = int(image_size)
    self.position = int(start_position)
    self.skipped = 0
    self._diagnosed = 0
    self._last_skip_report = 0.0
    self._skips_at_last_report = 0
    self._epoch = self.position // self.shard_size
    self._iterator = None
    self._yielded_this_epoch = 0
    self._buffer: dict[str, np.ndarray] | None = None
    self._buffer_start = 0
    self._exhausted = False
    self._empty_batch: dict[str, np.ndarray] | None = None

  def _check_damage(self, max_fraction: float) -> int:
    """Records lost to damaged files of the split; raises past `max_fraction`."""
    damage = self.task.source.damage(self.split, self.data_dir)
    if not damage:
      return 0
    _log_damage(self.task_name, self.split, damage)
    lost = sum(d.lost for d in damage)
    fraction = lost / max(lost + self.num_records, 1)
    if fraction > max_fraction:
      raise DataDamageError(
          f"task {self.task_name!r}: {fraction:.1%} of split {self.split!r} under "
          f"{self.data_dir} is in damaged TFRecord files, more than "
          f"max_damaged_fraction={max_fraction:g}: "
          + "; ".join(d.describe() for d in damage[:3])
          + (f"; and {len(damage) - 3} more files" if len(damage) > 3 else "")
          + ". Copy or convert those files again, or raise "
          "DataConfig.max_damaged_fraction")
    return lost

  # ---------------------------------------------------------------- dataset
  def _epoch_dataset(self, epoch: int, offset: int) -> tf.data.Dataset:
    """Model-feature batches of one epoch of this shard, from record `offset` on."""
    # A record that fails to parse, decode or preprocess is dropped here; the
    # gap it leaves in POS_KEY is counted in `skipped` and logged by `take`.
    ds = self._model_features(epoch, offset).ignore_errors()
    # tf.data's autotuning runs a model thread that an iterator's destructor
    # must join, and that thread sleeps on a long timer: with autotune on, every
    # epoch rollover and every finished iterator stalled for up to minutes.
    # Parallel maps then use one thread per core, which is what we want.
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.batch(_PULL_BATCH).prefetch(2).with_options(options)

  def _model_features(self, epoch: int, offset: int) -> tf.data.Dataset:
    """Model features of one epoch of this shard from record `offset` on, with errors."""
    ds = self.task.source.epoch_dataset(
        self.split, data_dir=self.data_dir, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
        shard_index=self.shard_index, num_shards=self.num_shards, offset=offset,
        shard_size=self.shard_size, buffer_size=self.shuffle_buffer_size)
    for prep in self.task.preprocessors:
      prep = seqio.utils.add_kwargs_to_transform(
          prep, sequence_length=self.sequence_length, output_features=self.output_features)
      ds = prep(ds)
    return self.converter(ds, {"inputs": self.sequence_length["inputs"],
                               "targets": self.sequence_length["targets"]})

  # ---------------------------------------------------------------- skips
  def _describe_skip(self, position: int) -> str:
    """'<file>, record <i> of that file: <error>' for a skipped position."""
    epoch, index = divmod(int(position), self.shard_size)
    try:
      path, in_file = self.task.source.record_location(
          self.split, data_dir=self.data_dir, seed=self.seed, epoch=epoch,
          shuffle=self.shuffle, shard_index=self.shard_index,
          num_shards=self.num_shards, index=index,
          buffer_size=self.shuffle_buffer_size)
      where = f"{path}, record {in_file} of that file"
    except (tf.errors.OpError, IndexError, ValueError) as e:
      where = f"file not found again ({_short_error(e)})"
    try:
      next(iter(self._model_features(epoch, index).take(1)))
      error = "no error when read again (a transient read failure)"
    except tf.errors.OpError as e:
      error = _short_error(e)
    except StopIteration:
      error = "not found when read again"
    return f"{where}: {error}"

  def _note_skips(self, missing: np.ndarray) -> None:
    """Counts skipped positions; logs the first few in full, then counts."""
    self.skipped += len(missing)
    for position in missing[:max(0, DIAGNOSED_SKIPS - self._diagnosed)]:
      self._diagnosed += 1
      logging.warning("task %r: skipped record at position %d of shard %d/%d "
                      "(skip %d): %s", self.task_name, position, self.shard_index,
                      self.num_shards, self._diagnosed, self._describe_skip(position))
      if self._diagnosed == DIAGNOSED_SKIPS:
        logging.warning("task %r: further skipped records are counted, and "
                        "logged at most every %.0f s", self.task_name,
                        SKIP_REPORT_SECONDS)
    now = time.monotonic()
    unreported = self.skipped - self._skips_at_last_report
    if (self._diagnosed >= DIAGNOSED_SKIPS and unreported > 0
        and now - self._last_skip_report >= SKIP_REPORT_SECONDS):
      logging.warning("task %r: %d records skipped so far in shard %d/%d "
                      "(%d since the last report), of split %r under %s",
                      self.task_name, self.skipped, self.shard_index,
                      self.num_shards, unreported, self.split, self.data_dir)
      self._last_skip_report, self._skips_at_last_report = now, self.skipped

  def _next_batch(self) -> dict[str, np.ndarray] | None:
    """The next pulled batch, moving to the next epoch as needed; None at the end."""
    while True:
      if self._iterator is None:
        offset = self.position - self._epoch * self.shard_size
        self._iterator = self._epoch_dataset(self._epoch, max(offset, 0)).as_numpy_iterator()
        self._yielded_this_epoch = 0
      try:
        batch = next(self._iterator)
        self._yielded_this_epoch += len(batch[pp.POS_KEY])
        return batch
      except StopIteration:
        if self._yielded_this_epoch == 0 and self.position <= self._epoch * self.shard_size:
          raise DataDamageError(
              f"task {self.task_name!r}: every record of epoch {self._epoch} of split "
              f"{self.split!r} under {self.data_dir} failed to parse or preprocess "
              f"(the first: {self._describe_skip(self._epoch * self.shard_size)})"
          ) from None
        self._iterator = None
        self._epoch += 1
        if not self.repeat:
          return None

  # ---------------------------------------------------------------- public
  def take(self, n: int) -> dict[str, np.ndarray]:
    """The next `n` examples as numpy arrays with a leading batch axis.

    Returns model features (``image``, ``encoder_input_tokens``,
    ``decoder_input_tokens``, ``decoder_target_tokens``,
    ``decoder_loss_weights``, ``task_id``) plus requested pass-through
    features. With ``repeat=False`` fewer than `n` rows come back at the end.
    """
    if n < 0:
      raise ValueError(f"task {self.task_name!r}: take({n}) needs n >= 0")
    parts, need = [], n
    while need > 0 and not self._exhausted:
      if self._buffer is None or self._buffer_start >= len(self._buffer[pp.POS_KEY]):
        self._buffer, self._buffer_start = self._next_batch(), 0
        if self._buffer is None:
          self._exhausted = True
          break
      start = self._buffer_start
      stop = min(start + need, len(self._buffer[pp.POS_KEY]))
      part = {k: v[start:stop] for k, v in self._buffer.items()}
      positions = part[pp.POS_KEY]
      if int(positions[-1] + 1 - self.position) != len(positions):
        self._note_skips(np.setdiff1d(
            np.arange(self.position, int(positions[-1]) + 1), positions))
      self.position = int(positions[-1]) + 1
      self._buffer_start = stop
      parts.append(part)
      need -= stop - start
    if not parts:
      return self._empty()
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out.pop(pp.POS_KEY)
    return out

  def _empty(self) -> dict[str, np.ndarray]:
    """Zero-row arrays of the right trailing shapes and dtypes (cached: the
    trainer asks for 0 examples of a task whenever the sampler gives it none)."""
    if self._empty_batch is None:
      if self._buffer is not None:
        spec = {k: (v.shape[1:], v.dtype) for k, v in self._buffer.items()}
      else:
        element_spec = self._epoch_dataset(self._epoch, 0).element_spec
        spec = {k: (s.shape.as_list()[1:], s.dtype.as_numpy_dtype)
                for k, s in element_spec.items()}
      self._empty_batch = {k: np.zeros((0, *shape), dtype) for k, (shape, dtype) in spec.items()
                           if k != pp.POS_KEY}
    return {k: v.copy() for k, v in self._empty_batch.items()}

  def state(self) -> dict:
    """Resume state: {'position', 'seed', 'epoch'} (small ints)."""
    return {"position": int(self.position), "seed": self.seed,
            "epoch": int(self.position // self.shard_size)}

  def __repr__(self) -> str:
    return (f"TaskIterator({self.task_name!r}, task_id={self.task_id}, split={self.split!r}, "
            f"shard={self.shard_index}/{self.num_shards}, position={self.position})")
