"""Tests for the object-aware preprocessors (dynpt.data.preprocessors_objects)."""

import re

import numpy as np
import seqio
import tensorflow as tf

from dynpt.data import preprocessors as pp
from dynpt.data import preprocessors_objects as po

VOCAB = ["ball", "car", "cat", "cup", "dog", "hat", "pen", "sun"]


def _many(n, labels, candidates=VOCAB):
  base = {"objects/label": tf.constant(labels, tf.string),
          pp.CANDIDATES_KEY: tf.constant(candidates, tf.string)}
  return tf.data.Dataset.range(n).map(
      lambda i: {**base, pp.SEED_KEY: tf.stack([tf.constant(5, tf.int64), i])})


def _one(labels, candidates=VOCAB, seed=(1, 2)):
  return tf.data.Dataset.from_tensors({
      "objects/label": tf.constant(labels, tf.string),
      pp.CANDIDATES_KEY: tf.constant(candidates, tf.string),
      pp.SEED_KEY: tf.constant(seed, tf.int64)})


def _io(ds):
  return ds.map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]})


def _slots(text, template):
  pattern = re.escape(template).replace(r"\{\}", "(.+?)")
  return list(re.fullmatch(pattern, text).groups())


def test_list_objects_dedups_in_record_order():
  seqio.test_utils.assert_dataset(
      _io(po.list_objects(_one(["dog", "cat", "dog", " hat "]))),
      {"inputs": pp.LIST_OBJECTS_PROMPT, "targets": "dog, cat, hat"})
  seqio.test_utils.assert_dataset(
      _io(po.list_objects(_one(tf.constant([], tf.string)))),
      {"inputs": pp.LIST_OBJECTS_PROMPT, "targets": "none"})


def test_exists_truth_and_balance():
  present = {"dog", "cat"}
  out = list(po.exists(_many(400, sorted(present))).as_numpy_iterator())
  yes = []
  for ex in out:
    (label,) = _slots(ex["inputs"].decode(), pp.EXISTS_TEMPLATE)
    assert label in VOCAB
    assert ex["targets"] == (b"yes" if label in present else b"no")
    yes.append(ex["targets"] == b"yes")
  assert 0.43 < np.mean(yes) < 0.57


def test_exists_without_absent_labels_asks_a_present_one():
  out = list(po.exists(_many(20, ["dog"], candidates=["dog"])).as_numpy_iterator())
  assert {ex["targets"] for ex in out} == {b"yes"}
  seqio.test_utils.assert_dataset(_io(po.exists(_one(["dog"], candidates=["dog"]))),
                                  {"inputs": "does dog exist?", "targets": "yes"})


def test_multi_exists_truth_and_balance():
  present = {"dog", "cat", "cup", "pen"}
  yes = []
  for ex in po.multi_exists(_many(400, sorted(present))).as_numpy_iterator():
    labels = _slots(ex["inputs"].decode(), pp.MULTI_EXISTS_TEMPLATE)
    assert len(set(labels)) == 3 and set(labels) <= set(VOCAB)
    any_present = any(label in present for label in labels)
    assert ex["targets"] == (b"yes" if any_present else b"no")
    yes.append(any_present)
  assert 0.43 < np.mean(yes) < 0.57


def test_which_exist_lists_present_subset_in_question_order():
  present = {"dog", "cat", "cup"}
  counts = np.zeros(4)
  for ex in po.which_exist(_many(400, sorted(present))).as_numpy_iterator():
    labels = _slots(ex["inputs"].decode(), pp.WHICH_EXIST_TEMPLATE)
    assert len(set(labels)) == 3
    want = [label for label in labels if label in present]
    assert ex["targets"].decode() == (", ".join(want) if want else "none")
    counts[len(want)] += 1
  assert np.all(counts / counts.sum() > 0.15)  # 0..3 present ones, ~uniform.


def test_which_exist_record_without_labels():
  seqio.test_utils.assert_dataset(
      _io(po.which_exist(_one(tf.constant([], tf.string), candidates=["a", "b", "c"]),
                         template="which of {}, {} and {} exist?")).map(
          lambda ex: {"targets": ex["targets"]}),
      {"targets": "none"})
