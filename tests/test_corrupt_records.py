"""Damaged TFRecord files and undecodable records are skipped, counted and named."""
import logging
import os
import random
import re
import tempfile

import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from dynpt.data import pipeline, record_integrity, schema, sources

SEQ = {"inputs": 32, "targets": 16}


def _it(data_dir, vocab, **kw):
  return pipeline.TaskIterator("cc3m_cap", task_id=0, sequence_length=SEQ,
                               image_size=32, seed=1, data_dir=data_dir,
                               vocabulary=vocab, shuffle=False, **kw)


def _write_split(data_dir, records, num_files=2):
  """cc3m/train of `records` in `num_files` shards; returns the shard paths."""
  tf.io.gfile.makedirs(schema.split_dir(data_dir, "cc3m", "train"))
  per = -(-len(records) // num_files)
  paths = []
  for i in range(num_files):
    path = schema.shard_path(data_dir, "cc3m", "train", i, num_files)
    with tf.io.TFRecordWriter(path) as writer:
      for rec in records[i * per:(i + 1) * per]:
        writer.write(schema.encode_example(rec))
    paths.append(path)
  return paths


def _records(toy_data_dir, n):
  keep = ("image/id", "image/encoded", "text/captions")
  return [{k: v for k, v in r.items() if k in keep}
          for r in schema.read_records(toy_data_dir, "cc3m", "train")[:n]]


def _flip_byte(path, offset):
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)
    f.seek(offset)
    f.write(bytes([byte[0] ^ 0xFF]))


def _frame_offsets(path):
  """Byte offset where each record's frame starts."""
  offsets, offset = [], 0
  data = open(path, "rb").read()
  while offset < len(data):
    offsets.append(offset)
    length = int.from_bytes(data[offset:offset + 8], "little")
    offset += 16 + length
  return offsets


def test_frames_match_tensorflow_and_a_sound_file_scans_clean(tmp_path):
  path = str(tmp_path / "a.tfrecord")
  payloads = [b"", b"x", os.urandom(300)]
  with tf.io.TFRecordWriter(path) as writer:
    for p in payloads:
      writer.write(p)
  assert open(path, "rb").read() == b"".join(map(record_integrity.frame, payloads))
  assert record_integrity.scan_file(path) == (3, None)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=12),
       st.integers(min_value=0), st.booleans())
def test_tensorflow_reads_the_readable_prefix_without_error(payloads, where,
                                                            truncate):
  data = bytearray(b"".join(map(record_integrity.frame, payloads)))
  where %= len(data)
  if truncate:
    del data[where:]
  else:
    data[where] ^= 0x5A
  count, damage = record_integrity.scan_bytes(bytes(data))
  if not truncate:
    assert damage is not None  # CRC-32C catches every flipped byte.
  if damage is None:  # Cut at a frame boundary: a shorter, sound file.
    assert count == sum(1 for _ in tf.data.TFRecordDataset(
        _write_tmp(bytes(data))))
    return
  assert damage.readable == count < len(payloads) + 1
  assert damage.lost >= 1 and damage.offset <= where
  if damage.exact:
    assert damage.readable + damage.lost == len(payloads)
  path = _write_tmp(bytes(data))
  read = list(tf.data.TFRecordDataset(path).take(count).as_numpy_iterator())
  assert read == payloads[:count]
  if not truncate:
    with pytest.raises(tf.errors.DataLossError):  # What runs died of before.
      list(tf.data.TFRecordDataset(path).as_numpy_iterator())


def _write_tmp(data: bytes) -> str:
  path = os.path.join(tempfile.gettempdir(), f"dynpt_scan_{os.getpid()}.tfrecord")
  with open(path, "wb") as f:
    f.write(data)
  return path


def test_a_flipped_byte_skips_the_shards_remainder_and_names_it(
    tmp_path, toy_data_dir, toy_vocab, caplog):
  data_dir = str(tmp_path)
  paths = _write_split(data_dir, _records(toy_data_dir, 40))  # 20 per file.
  # The case: one byte inside record 12 of the first shard.
  _flip_byte(paths[0], _frame_offsets(paths[0])[12] + 40)
  with caplog.at_level(logging.WARNING):
    it = _it(data_dir, toy_vocab, max_damaged_fraction=0.5)
    batch = it.take(30)  # More than the 12 + 20 readable records: wraps.
  assert it.num_records == 32 and it.damaged_records == 8
  assert len(batch["image"]) == 30
  assert "cc3m_cap" in caplog.text and paths[0] in caplog.text
  assert "byte" in caplog.text and "remaining 8 skipped" in caplog.text
  # The split's count is deterministic, so resuming replays the same records.
  resumed = _it(data_dir, toy_vocab, max_damaged_fraction=0.5,
                start_position=10)
  second = resumed.take(5)
  for k in second:
    assert (second[k] == batch[k][10:15]).all(), k


def test_damage_past_the_allowed_fraction_fails_naming_task_and_file(
    tmp_path, toy_data_dir, toy_vocab):
  data_dir = str(tmp_path)
  paths = _write_split(data_dir, _records(toy_data_dir, 40))
  _flip_byte(paths[1], 3)  # The length of its first record: all 20 lost.
  with pytest.raises(pipeline.DataDamageError) as err:
    _it(data_dir, toy_vocab)  # Default: at most 1% lost.
  message = str(err.value)
  # Its framing is broken, so the loss is estimated from the sound file's sizes.
  assert re.search(r"(49|50|51)\.\d% of split 'train'", message), message
  assert "cc3m_cap" in message and paths[1] in message
  assert "max_damaged_fraction" in message


def test_a_truncated_last_shard_is_cut_before_the_damage(tmp_path,
                                                         toy_data_dir):
  data_dir = str(tmp_path)
  paths = _write_split(data_dir, _records(toy_data_dir, 10), num_files=1)
  size = os.path.getsize(paths[0])
  with open(paths[0], "r+b") as f:
    f.truncate(size - 10)
  files = sources.list_files(data_dir, "cc3m", "train")
  assert sources.count_records(files) == 9
  (damage,) = sources.damaged_files(files)
  assert damage.reason == "truncated record" and damage.lost == 1


def test_undecodable_records_are_logged_with_file_and_error(
    tmp_path, toy_data_dir, toy_vocab, caplog, monkeypatch):
  monkeypatch.setattr(pipeline, "DIAGNOSED_SKIPS", 2)
  monkeypatch.setattr(pipeline, "SKIP_REPORT_SECONDS", 0.0)
  records = _records(toy_data_dir, 12)
  bad = [2, 5, 9]
  for i in bad:
    records[i]["image/encoded"] = random.Random(i).randbytes(64)
  (path,) = _write_split(str(tmp_path), records, num_files=1)
  with caplog.at_level(logging.WARNING):
    it = _it(str(tmp_path), toy_vocab)
    it.take(9)
  assert it.skipped == 3
  lines = [r.getMessage() for r in caplog.records if "cc3m_cap" in r.getMessage()]
  named = [line for line in lines if f"{path}, record" in line]
  # The first two in full (file, index in it, the decoder's error), then counts.
  assert len(named) == 2
  for line, i in zip(named, bad):
    assert f"record {i} of that file" in line and "Error" in line, line
  assert any("3 records skipped so far" in line for line in lines)
