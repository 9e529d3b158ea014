"""Keeps a resumed run's TensorBoard steps unique.

A run killed after step 130 that resumes from its checkpoint at step 100
writes steps 101..130 again; TensorBoard would show both attempts' values.
`truncate_after(log_dir, step)` rewrites the event files so that only
summaries up to the resumed step remain (the loop writes a step's metrics at
the number of steps done, so the checkpoint of step 100 has summaries up to
100), as `MixtureHistory` does for `mixture_history.jsonl`. Non-summary events (file version, graph)
stay; a file whose last record a kill cut short keeps its whole records.
"""

from __future__ import annotations

import os

from absl import logging

EVENT_FILE_MARK = "tfevents"


def _read_events(path: str) -> tuple[list[bytes], bool]:
  """(the file's whole records, whether its tail was damaged)."""
  import tensorflow as tf

  records = []
  iterator = iter(tf.data.TFRecordDataset(path).as_numpy_iterator())
  while True:
    try:
      records.append(next(iterator))
    except StopIteration:
      return records, False
    except tf.errors.DataLossError:
      return records, True


def _is_summary_from(record: bytes, step: int, event_pb2) -> bool:
  event = event_pb2.Event.FromString(record)
  return event.HasField("summary") and event.step > step


def truncate_after(log_dir: str, step: int) -> int:
  """Drops summaries of steps > `step` from `log_dir`'s event files.

  Args:
    log_dir: a folder of TensorBoard event files (searched recursively).
    step: the step a run resumes from; later summaries go.

  Returns:
    How many summaries were dropped.
  """
  import tensorflow as tf
  from tensorflow.core.util import event_pb2

  if not tf.io.gfile.isdir(log_dir):
    return 0
  dropped = 0
  for folder, _, names in tf.io.gfile.walk(log_dir):
    for name in sorted(names):
      if EVENT_FILE_MARK not in name:
        continue
      path = os.path.join(folder, name)
      records, damaged = _read_events(path)
      kept = [r for r in records if not _is_summary_from(r, step, event_pb2)]
      if len(kept) == len(records) and not damaged:
        continue
      # No "tfevents" in the temporary name: TensorBoard must not read it.
      tmp = os.path.join(folder, f".truncating_{os.getpid()}")
      with tf.io.TFRecordWriter(tmp) as writer:
        for record in kept:
          writer.write(record)
      tf.io.gfile.rename(tmp, path, overwrite=True)
      dropped += len(records) - len(kept)
  if dropped:
    logging.info("dropped %d TensorBoard summaries of steps > %d (written "
                 "after the checkpoint this run resumes from)", dropped, step)
  return dropped
