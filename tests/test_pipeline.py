"""Tests for dynpt.data.pipeline: determinism, resume, epochs, shards, errors."""

import hashlib

import numpy as np
import pytest
import tensorflow as tf

from dynpt.data import pipeline
from dynpt.data import schema
from dynpt.data import vocab as vocab_lib

SEQ = {"inputs": 32, "targets": 16}


def _it(name, data_dir, vocab, **kw):
  kw.setdefault("seed", 3)
  return pipeline.TaskIterator(name, task_id=1, sequence_length=SEQ, image_size=32,
                               data_dir=data_dir, vocabulary=vocab, **kw)


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _image_ids(batch):
  return [hashlib.md5(im.tobytes()).hexdigest() for im in batch["image"]]


@pytest.mark.parametrize("name", ["cc3m_mlm", "cc12m_itm", "oi_multi_exists", "ln_cmp"])
def test_resume_gives_identical_examples(name, toy_data_dir, toy_vocab):
  it = _it(name, toy_data_dir, toy_vocab)
  first, rest = it.take(5), it.take(7)
  assert it.position == 12 and it.state() == {"position": 12, "seed": 3, "epoch": 0}
  resumed = _it(name, toy_data_dir, toy_vocab, start_position=5)
  _assert_same(resumed.take(7), rest)
  assert first["image"].shape == (5, 32, 32, 3)


def test_epoch_wraparound_and_new_order(toy_data_dir, toy_vocab):
  it = _it("cc3m_mlm", toy_data_dir, toy_vocab)
  assert it.shard_size == 48 and pipeline.dataset_size("cc3m_mlm", "train", toy_data_dir) == 48
  epoch0, epoch1 = it.take(48), it.take(48)
  assert it.state()["epoch"] == 2
  # Every record once per epoch, in a new order with new MLM masks.
  assert sorted(_image_ids(epoch0)) == sorted(_image_ids(epoch1))
  assert _image_ids(epoch0) != _image_ids(epoch1)
  assert not np.array_equal(epoch0["encoder_input_tokens"], epoch1["encoder_input_tokens"])
  # Resuming just before the boundary crosses it identically.
  resumed = _it("cc3m_mlm", toy_data_dir, toy_vocab, start_position=45)
  _assert_same(resumed.take(6), {k: np.concatenate([epoch0[k][45:], epoch1[k][:3]])
                                 for k in epoch0})
  assert resumed.state() == {"position": 51, "seed": 3, "epoch": 1}


def test_shards_are_disjoint_and_cover(toy_data_dir, toy_vocab):
  whole = _image_ids(_it("oi_list_objects", toy_data_dir, toy_vocab).take(48))
  shards = [_image_ids(_it("oi_list_objects", toy_data_dir, toy_vocab, shard_index=i,
                           num_shards=2).take(24)) for i in range(2)]
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(whole)


def test_take_zero_and_no_repeat(toy_data_dir, toy_vocab):
  it = _it("vqav2", toy_data_dir, toy_vocab, split="val", shuffle=False, repeat=False)
  empty = it.take(0)
  assert empty["image"].shape == (0, 32, 32, 3) and empty["image"].dtype == np.uint8
  assert empty["decoder_target_tokens"].shape == (0, 16)
  assert empty["task_id"].shape == (0,) and it.position == 0
  assert len(it.take(10)["task_id"]) == 10
  assert it.take(0)["encoder_input_tokens"].shape == (0, 32)
  assert len(it.take(10)["task_id"]) == 6  # The split has 16 records.
  assert len(it.take(3)["task_id"]) == 0


def test_missing_data_names_task_path_and_command(tmp_path, toy_vocab):
  with pytest.raises(FileNotFoundError) as err:
    _it("cc12m_cap", str(tmp_path), toy_vocab)
  message = str(err.value)
  for part in ("cc12m_cap", str(tmp_path / "cc12m" / "train"), "tools/make_toy_data.py",
               "tools/convert.py cc12m"):
    assert part in message
  with pytest.raises(ValueError, match="unknown task 'cc3m_nope'"):
    _it("cc3m_nope", str(tmp_path), toy_vocab)


def test_corrupt_records_are_skipped_and_counted(tmp_path, toy_data_dir, toy_vocab):
  good = schema.read_records(toy_data_dir, "cc3m", "validation")[:6]
  raw = []
  for i, rec in enumerate(good):
    rec = {k: v for k, v in rec.items() if k in ("image/id", "image/encoded", "text/captions")}
    if i in (1, 3):
      rec["image/encoded"] = b"not an image"
    raw.append(schema.encode_example(rec))
  raw.insert(4, b"\x00garbage, not a tf.train.Example")
  path = schema.shard_path(str(tmp_path), "cc3m", "train", 0, 1)
  tf.io.gfile.makedirs(schema.split_dir(str(tmp_path), "cc3m", "train"))
  with tf.io.TFRecordWriter(path) as writer:
    for r in raw:  # Slots: good, bad image, good, bad image, bad proto, good, good.
      writer.write(r)
  it = _it("cc3m_cap", str(tmp_path), toy_vocab, shuffle=False)
  assert it.shard_size == 7
  batch = it.take(3)
  assert len(batch["image"]) == 3 and it.skipped == 3 and it.position == 6
  assert len(it.take(2)["image"]) == 2 and it.skipped == 3 and it.position == 8  # Wrapped.
  resumed = _it("cc3m_cap", str(tmp_path), toy_vocab, shuffle=False, start_position=2)
  _assert_same(resumed.take(2), {k: v[1:] for k, v in batch.items()})
  assert resumed.skipped == 2


def test_all_records_bad_raises(tmp_path, toy_vocab):
  with schema.ShardedWriter(str(tmp_path), "cc3m", "train") as writer:
    writer.write({"image/id": "a", "image/encoded": b"bad", "text/captions": ["x"]})
  it = _it("cc3m_cap", str(tmp_path), toy_vocab)
  with pytest.raises(pipeline.DataDamageError, match="cc3m_cap.*every record"):
    it.take(1)


def test_get_vocabulary(tmp_path):
  vocab = vocab_lib.get_vocabulary()
  assert vocab.extra_ids == 100 and vocab.eos_id == 1 and vocab.pad_id == 0
  with pytest.raises(FileNotFoundError, match="nope.model"):
    vocab_lib.get_vocabulary(str(tmp_path / "nope.model"))
