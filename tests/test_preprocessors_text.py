"""Tests for the cross-modal preprocessors (dynpt.data.preprocessors_text)."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from dynpt.data import preprocessors as pp
from dynpt.data import preprocessors_text as pt

LONG = ("a large red striped circle is at the top left of the image near a small blue "
        "dotted square and a green star")


@pytest.fixture(scope="module")
def features(toy_vocab):
  return {"inputs": seqio.Feature(toy_vocab), "targets": seqio.Feature(toy_vocab)}


def _example(seed=(0, 0), **kw):
  ex = {pp.SEED_KEY: tf.constant(seed, tf.int64),
        "text/captions": tf.constant(kw.pop("captions", ["a red circle"]))}
  ex.update({k: tf.constant(v) for k, v in kw.items()})
  return ex


def _many(n, **kw):
  """n copies of one record with seeds (3, i)."""
  base = _example(**kw)
  return tf.data.Dataset.range(n).map(
      lambda i: {**base, pp.SEED_KEY: tf.stack([tf.constant(3, tf.int64), i])})


def _select(ds, keys):
  return ds.map(lambda ex: {k: ex[k] for k in keys})


def test_select_caption_picks_one_and_handles_none():
  ds = pp.select_caption(tf.data.Dataset.from_tensors(_example(captions=["  only one  "])))
  seqio.test_utils.assert_dataset(_select(ds, ["caption"]), {"caption": "only one"})
  empty = _example()
  empty["text/captions"] = tf.constant([], tf.string)
  ds = pp.select_caption(tf.data.Dataset.from_tensors(empty))
  seqio.test_utils.assert_dataset(_select(ds, ["caption"]), {"caption": ""})
  picked = {ex["caption"] for ex in pp.select_caption(_many(40, captions=["a", "b"]))
            .as_numpy_iterator()}
  assert picked == {b"a", b"b"}


def test_captioning():
  ds = pt.captioning(pp.select_caption(tf.data.Dataset.from_tensors(_example())))
  seqio.test_utils.assert_dataset(_select(ds, ["inputs", "targets"]),
                                  {"inputs": pp.CAPTION_PROMPT, "targets": "a red circle"})


def test_itm_balance_and_labels():
  ds = pt.image_text_matching(pp.select_caption(_many(
      600, captions=["a red circle"], **{pp.NEG_CAPTIONS_KEY: ["a blue star"]})))
  out = list(ds.as_numpy_iterator())
  labels = np.array([ex["targets"] == b"no" for ex in out])
  assert 0.44 < labels.mean() < 0.56
  for ex in out:
    want = b"a blue star" if ex["targets"] == b"no" else b"a red circle"
    assert ex["inputs"] == pp.ITM_PROMPT.encode() + b" " + want


def test_itm_negative_that_matches_is_labelled_yes():
  ds = pt.image_text_matching(pp.select_caption(_many(
      50, captions=["a red circle"], **{pp.NEG_CAPTIONS_KEY: ["a red circle"]})))
  assert {ex["targets"] for ex in ds.as_numpy_iterator()} == {b"yes"}
  one = _example(**{pp.NEG_CAPTIONS_KEY: ["x"]})
  ds = pt.image_text_matching(pp.select_caption(tf.data.Dataset.from_tensors(one)),
                              negative_rate=0.0)
  seqio.test_utils.assert_dataset(
      _select(ds, ["inputs", "targets"]),
      {"inputs": pp.ITM_PROMPT + " a red circle", "targets": "yes"})


def test_caption_completion_fraction(features, toy_vocab):
  tokens = toy_vocab.encode(LONG)
  prompt = toy_vocab.encode(pp.COMPLETION_PROMPT)
  n = len(tokens)
  assert n >= 15
  ds = pt.caption_completion(pp.select_caption(_many(300, captions=[LONG])),
                             output_features=features)
  fractions = []
  for ex in ds.as_numpy_iterator():
    inputs, targets = list(ex["inputs"]), list(ex["targets"])
    assert inputs[:len(prompt)] == prompt
    assert inputs[len(prompt):] + targets == tokens  # Prefix + masked part = caption.
    m = len(targets)
    assert np.floor(0.2 * n) <= m <= np.ceil(0.6 * n)
    fractions.append(m / n)
  assert 0.35 < np.mean(fractions) < 0.45 and np.std(fractions) > 0.05


def test_caption_completion_respects_input_length(features, toy_vocab):
  ds = pt.caption_completion(pp.select_caption(tf.data.Dataset.from_tensors(
      _example(captions=[LONG]))), output_features=features,
      sequence_length={"inputs": 12, "targets": 8})
  ex = next(ds.as_numpy_iterator())
  assert len(ex["inputs"]) + len(ex["targets"]) == 11  # 11 = 12 - EOS.
  assert len(ex["inputs"]) <= 11


def _reconstruct(inputs, targets, vocab):
  """Undoes T5 span corruption: fills each sentinel of inputs with its span."""
  first = vocab.vocab_size - vocab.extra_ids
  spans, current = {}, None
  for t in targets:
    if t >= first:
      current = t
      spans[current] = []
    else:
      spans[current].append(t)
  out = []
  for t in inputs:
    out.extend(spans[t] if t >= first else [t])
  return out, sum(len(s) for s in spans.values()), list(spans)


@pytest.mark.parametrize("density", [0.25, 0.2])
def test_mlm_masks_the_fraction_with_sentinels(features, toy_vocab, density):
  tokens = toy_vocab.encode(LONG)
  n = len(tokens)
  ds = pt.mlm(pp.select_caption(_many(200, captions=[LONG])), output_features=features,
              noise_density=density)
  masked = []
  for ex in ds.as_numpy_iterator():
    original, num_masked, sentinels = _reconstruct(list(ex["inputs"]), list(ex["targets"]),
                                                   toy_vocab)
    assert original == tokens
    assert num_masked == round(density * n)
    # Sentinels are <extra_id_0>, <extra_id_1>, ... in order, T5 style.
    assert sentinels == [toy_vocab.vocab_size - 1 - i for i in range(len(sentinels))]
    masked.append(num_masked / n)
  assert abs(np.mean(masked) - density) < 0.03


def test_mlm_example_and_short_caption(features, toy_vocab):
  ds = pt.mlm(pp.select_caption(tf.data.Dataset.from_tensors(_example(captions=["circle"]))),
              output_features=features)
  ex = next(ds.as_numpy_iterator())
  sentinel = toy_vocab.vocab_size - 1
  assert list(ex["inputs"]) == [sentinel]
  assert list(ex["targets"]) == [sentinel] + toy_vocab.encode("circle")
  assert toy_vocab.decode([sentinel]) == "<extra_id_0>"


def test_same_seed_same_output_other_seed_differs(features):
  def run(seed):
    ds = pt.mlm(pp.select_caption(tf.data.Dataset.from_tensors(
        _example(seed=seed, captions=[LONG]))), output_features=features)
    return list(next(ds.as_numpy_iterator())["inputs"])

  assert run((1, 2)) == run((1, 2))
  assert any(run((1, 2)) != run((1, k)) for k in range(3, 8))
