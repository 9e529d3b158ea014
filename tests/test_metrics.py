"""Tests of the QA metrics and the official VQA answer normalisation."""

import functools
import subprocess
import sys

import pytest

from dynpt import metrics
from dynpt.metrics import normalize


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"),
    ("none", "0"),
    ("ten dogs", "10 dogs"),
    ("a dog", "dog"),
    ("The dog", "dog"),
    ("an apple", "apple"),
    ("dog.", "dog"),
    ("Yes!", "yes"),
    ("yes?", "yes"),
    ("  red\tand\nwhite  ", "red and white"),
    ("dont", "don't"),
    ("don't", "don't"),
    ("don\u2019t", "don't"),
    ("isnt", "isn't"),
    ("couldntve", "couldn't've"),
    ("its", "its"),  # a word of its own, not a contraction
    ("1,000", "1000"),
    ("hello, world", "hello world"),
    ("red/white", "red white"),
    ("red / white", "red white"),
    ("t-shirt", "t shirt"),
    ("3.5", "3.5"),
    ("(left)", "left"),
    (b"Two", "2"),
])
def test_normalize_answer(raw, expected):
  assert metrics.normalize_answer(raw) == expected


def test_normalize_rejects_non_text():
  with pytest.raises(TypeError, match="str or bytes"):
    metrics.normalize_answer(3)


def test_contraction_map_has_every_apostrophe_dropping_variant():
  mapping = normalize._CONTRACTIONS
  assert mapping["couldnt've"] == mapping["couldn'tve"] == mapping["couldntve"] == "couldn't've"
  assert "couldn't've" not in mapping  # the canonical form maps to nothing
  assert all("'" in v for v in mapping.values())


@pytest.mark.parametrize("k, expected", [
    # (k * min((k-1)/3, 1) + (10-k) * min(k/3, 1)) / 10, worked by hand:
    (0, 0.0),
    (1, 0.3),   # (1*0 + 9*1/3) / 10
    (2, 0.6),   # (2*1/3 + 8*2/3) / 10
    (3, 0.9),   # (3*2/3 + 7*1) / 10
    (4, 1.0),   # (4*1 + 6*1) / 10
    (10, 1.0),
])
def test_vqa_accuracy_leave_one_out(k, expected):
  answers = ["2"] * k + ["blue"] * (10 - k)
  assert metrics.vqa_accuracy("two", answers) == pytest.approx(expected, abs=1e-12)


def test_vqa_accuracy_normalises_both_sides():
  answers = ["A dog."] * 4 + ["cat"] * 6
  assert metrics.vqa_accuracy("dog", answers) == 1.0
  assert metrics.vqa_accuracy("the dog!", answers) == 1.0
  assert metrics.vqa_accuracy("dogs", answers) == 0.0


def test_vqa_accuracy_single_answer_is_exact_match():
  assert metrics.vqa_accuracy("yes", ["Yes"]) == 1.0
  assert metrics.vqa_accuracy("no", ["Yes"]) == 0.0


def test_vqa_accuracy_bad_ground_truth():
  with pytest.raises(ValueError, match="empty"):
    metrics.vqa_accuracy("yes", [])
  with pytest.raises(TypeError, match="single string"):
    metrics.vqa_accuracy("yes", "yes")


def test_exact_match():
  assert metrics.exact_match("Two", "2") == 1.0
  assert metrics.exact_match("a dog", "dog") == 1.0
  assert metrics.exact_match("entailment.", "entailment") == 1.0
  assert metrics.exact_match("oak trees", "tree") == 0.0


def test_ivqa_accuracy():
  gt = ["dog", "dog", "puppy", "dog", "cat"]
  assert metrics.ivqa_accuracy("dog", gt) == 1.0   # 3 matches -> min(3/2, 1)
  assert metrics.ivqa_accuracy("puppy", gt) == 0.5  # 1 match
  assert metrics.ivqa_accuracy("horse", gt) == 0.0


def test_corpus_averages():
  preds = ["2", "cat"]
  gts = [["two"] * 10, ["cat"] * 2 + ["dog"] * 8]
  assert metrics.corpus_vqa_accuracy(preds, gts) == pytest.approx((1.0 + 0.6) / 2)
  assert metrics.corpus_ivqa_accuracy(["a", "b"], [["a", "a"], ["a", "b"]]) == 0.75
  with pytest.raises(ValueError, match="2 predictions but 1"):
    metrics.corpus_vqa_accuracy(preds, gts[:1])
  with pytest.raises(ValueError, match="no examples"):
    metrics.corpus_exact_match([], [])


def test_exact_match_with_answer_vocab_excludes_out_of_vocab_ground_truth():
  preds = ["dog", "cat", "zebra", "car"]
  answers = ["dog", "mouse", "zebra", "Car."]
  vocab = ["dog", "car", "mouse"]
  details = metrics.corpus_exact_match_details(preds, answers, answer_vocab=vocab)
  # "zebra" is outside the vocabulary: excluded even though it was predicted right.
  assert details == {"accuracy": 2 / 3, "num_examples": 3.0, "num_excluded": 1.0}
  assert metrics.corpus_exact_match(preds, answers) == 0.75
  with pytest.raises(ValueError, match="outside answer_vocab"):
    metrics.corpus_exact_match(preds, answers, answer_vocab=["horse"])


def test_build_answer_vocab_is_most_frequent_and_deterministic():
  answers = ["Dog", "dog", "cat", "the cat", "car", "bus", "Two", "2", "2"]
  assert metrics.build_answer_vocab(answers, 2) == {"2", "cat"}  # 3 x "2"; cat beats dog
  assert metrics.build_answer_vocab(answers, 100) == {"2", "cat", "dog", "car", "bus"}
  with pytest.raises(ValueError, match="positive"):
    metrics.build_answer_vocab(answers, 0)


def test_seqio_metric_fns():
  vqa = metrics.vqa_metric_fn([{"answers": [b"2"] * 10}, {"answers": ["no"] * 10}],
                              ["two", "yes"])
  assert vqa == {"vqa_accuracy": 50.0}
  ivqa = metrics.ivqa_metric_fn([{"answers": ["a", "a", "b"]}], ["b"])
  assert ivqa == {"ivqa_accuracy": 50.0}
  em = metrics.exact_match_metric_fn([b"yes", {"answer": "no"}], ["Yes", "yes"])
  assert em == {"accuracy": 50.0}
  em_vocab = functools.partial(metrics.exact_match_metric_fn, answer_vocab=["yes"])
  assert em_vocab(["yes", "no"], ["yes", "yes"]) == {"accuracy": 100.0, "num_excluded": 1.0}
  with pytest.raises(ValueError, match="target 1 must be a mapping with key 'answers'"):
    metrics.vqa_metric_fn([{"answers": ["a"]}, {"answer": "a"}], ["a", "a"])


def test_seqio_accepts_metric_fns():
  seqio = pytest.importorskip("seqio")
  task = seqio.Task(
      "dynpt_metrics_signature_check",
      source=seqio.FunctionDataSource(lambda split, shuffle_files: None, splits=["val"]),
      output_features={},
      metric_fns=[metrics.vqa_metric_fn, metrics.exact_match_metric_fn,
                  metrics.ivqa_metric_fn, metrics.refcoco_metric_fn])
  assert len(task.predict_metric_fns) == 4


def test_metrics_import_without_jax_or_tensorflow():
  code = ("import sys, dynpt.metrics; "
          "bad = [m for m in ('jax', 'tensorflow', 'seqio') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True)
