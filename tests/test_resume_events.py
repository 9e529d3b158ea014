"""A resumed run's TensorBoard steps do not repeat the killed attempt's."""
import os

import tensorflow as tf
from clu import metric_writers

from dynpt.train import events


def _write(log_dir, steps):
  writer = metric_writers.create_default_writer(log_dir, asynchronous=False)
  for s in steps:
    writer.write_scalars(s, {"train/loss": float(s)})
  writer.close()


def _steps(log_dir):
  from tensorflow.core.util import event_pb2

  steps = []
  for name in sorted(os.listdir(log_dir)):
    if "tfevents" in name:
      for raw in tf.data.TFRecordDataset(os.path.join(log_dir, name)):
        event = event_pb2.Event.FromString(raw.numpy())
        if event.HasField("summary"):
          steps.append(event.step)
  return sorted(steps)


def test_summaries_from_the_resumed_step_on_are_dropped(tmp_path):
  log_dir = str(tmp_path)
  _write(log_dir, range(1, 7))  # The killed attempt got to step 6.
  assert events.truncate_after(log_dir, 4) == 2  # Resumes from checkpoint 4.
  _write(log_dir, range(5, 9))
  assert _steps(log_dir) == list(range(1, 9))
  assert not [n for n in os.listdir(log_dir) if n.startswith(".truncating")]


def test_a_file_cut_by_a_kill_keeps_its_whole_records(tmp_path):
  log_dir = str(tmp_path)
  _write(log_dir, range(1, 5))
  (name,) = [n for n in os.listdir(log_dir) if "tfevents" in n]
  path = os.path.join(log_dir, name)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 5)
  events.truncate_after(log_dir, 10)
  assert _steps(log_dir) == [1, 2, 3]
  assert events.truncate_after(log_dir, 10) == 0  # Now sound: left alone.


def test_no_log_dir_is_nothing_to_do(tmp_path):
  assert events.truncate_after(str(tmp_path / "absent"), 3) == 0
