"""Question-answering metrics over generated strings (VQAv2, GQA, SNLI-VE, video QA, iVQA).

The model answers open-ended, so every metric compares the generated string with
the ground truth after `normalize_answer` (the official VQA normalisation), as
the paper does. Per-example functions return a score in [0, 1]; `corpus_*`
functions average them (fractions in [0, 1]); the seqio ``*_metric_fn`` wrappers
return percentages, the convention of `t5.evaluation.metrics` and of the paper's
tables.

Target formats of the seqio wrappers (what a task's target postprocessor must
return per example):
- `vqa_metric_fn`, `ivqa_metric_fn`: a mapping with ``"answers"``: the list of all
  ground-truth answers (10 for VQAv2, 5 for iVQA), str or bytes.
- `exact_match_metric_fn`: the answer string itself (str or bytes), or a mapping
  with ``"answer"``.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Mapping, Sequence

from dynpt.metrics.normalize import normalize_answer


def _as_text_list(answers: Any, where: str) -> list[str | bytes]:
  """Accepts a list/tuple/numpy array of str or bytes, rejects a lone string."""
  if isinstance(answers, (str, bytes)):
    raise TypeError(f"{where}: expected a list of answers, got a single string {answers!r}")
  answers = list(answers)
  if not answers:
    raise ValueError(f"{where}: the list of ground-truth answers is empty")
  return answers


def vqa_accuracy(prediction: str | bytes, gt_answers: Sequence[str | bytes]) -> float:
  """Official VQA accuracy of one prediction against the human answers.

  A prediction is fully right when at least 3 humans gave it: the score is
  ``min(#humans that said it / 3, 1)``, averaged over the 10 subsets of 9 of the
  10 answers (leave one out), so that it matches human-vs-human agreement. With
  ``k`` matching answers out of ``n`` this is
  ``(k * min((k - 1) / 3, 1) + (n - k) * min(k / 3, 1)) / n``: 1 of 10 -> 0.3,
  2 of 10 -> 0.6, 3 of 10 -> 0.9, 4 or more -> 1.0.

  Args:
    prediction: the generated answer.
    gt_answers: all ground-truth answers (10 for VQAv2). With a single answer no
      leave-one-out subset exists and the score is exact match.

  Returns:
    The accuracy in [0, 1].
  """
  answers = _as_text_list(gt_answers, "vqa_accuracy")
  pred = normalize_answer(prediction)
  n = len(answers)
  k = sum(normalize_answer(a) == pred for a in answers)
  if n == 1:
    return float(k)
  left_out_match = min((k - 1) / 3.0, 1.0)  # a matching answer is the one left out
  left_out_other = min(k / 3.0, 1.0)
  return (k * left_out_match + (n - k) * left_out_other) / n


def exact_match(prediction: str | bytes, answer: str | bytes) -> float:
  """1.0 when the normalised prediction equals the normalised answer, else 0.0.

  The accuracy of GQA, SNLI-VE, MSRVTT-QA and MSVD-QA, which have one answer.
  """
  return float(normalize_answer(prediction) == normalize_answer(answer))


def ivqa_accuracy(prediction: str | bytes, gt_answers: Sequence[str | bytes]) -> float:
  """iVQA accuracy: ``min(#ground-truth answers equal to the prediction / 2, 1)``."""
  answers = _as_text_list(gt_answers, "ivqa_accuracy")
  pred = normalize_answer(prediction)
  k = sum(normalize_answer(a) == pred for a in answers)
  return min(k / 2.0, 1.0)


def _check_lengths(name: str, predictions: Sequence[Any], truths: Sequence[Any]) -> None:
  if len(predictions) != len(truths):
    raise ValueError(f"{name}: {len(predictions)} predictions but {len(truths)} ground truths")
  if not predictions:
    raise ValueError(f"{name}: no examples to score")


def corpus_vqa_accuracy(predictions: Sequence[str | bytes],
                        gt_answers_list: Sequence[Sequence[str | bytes]]) -> float:
  """Mean `vqa_accuracy` over a corpus, in [0, 1]."""
  _check_lengths("corpus_vqa_accuracy", predictions, gt_answers_list)
  return sum(map(vqa_accuracy, predictions, gt_answers_list)) / len(predictions)


def corpus_ivqa_accuracy(predictions: Sequence[str | bytes],
                         gt_answers_list: Sequence[Sequence[str | bytes]]) -> float:
  """Mean `ivqa_accuracy` over a corpus, in [0, 1]."""
  _check_lengths("corpus_ivqa_accuracy", predictions, gt_answers_list)
  return sum(map(ivqa_accuracy, predictions, gt_answers_list)) / len(predictions)


def build_answer_vocab(train_answers: Iterable[str | bytes], size: int) -> frozenset[str]:
  """The `size` most frequent normalised training answers: the standard video-QA vocabulary.

  MSRVTT-QA and MSVD-QA results in prior work are reported over a fixed answer
  vocabulary (the most frequent training answers, e.g. 1000 or 4000); pass the
  result as ``answer_vocab`` to `corpus_exact_match`. Ties break alphabetically
  so the vocabulary is deterministic.
  """
  if size <= 0:
    raise ValueError(f"build_answer_vocab: size must be positive, got {size}")
  counts = collections.Counter(normalize_answer(a) for a in train_answers)
  ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
  return frozenset(answer for answer, _ in ranked[:size])


def corpus_exact_match_details(
    predictions: Sequence[str | bytes], answers: Sequence[str | bytes],
    answer_vocab: Iterable[str | bytes] | None = None) -> dict[str, float]:
  """Exact-match accuracy plus how many examples the answer vocabulary excluded.

  Args:
    predictions: generated answers.
    answers: one ground-truth answer per example.
    answer_vocab: optional standard answer vocabulary (video QA). Examples whose
      normalised ground truth is outside it are excluded from the average, as the
      paper does ("we mask out the answers which are outside the standard
      vocabulary"); predictions are not restricted.

  Returns:
    ``{"accuracy": fraction, "num_examples": scored, "num_excluded": dropped}``.
  """
  _check_lengths("corpus_exact_match", predictions, answers)
  vocab = None if answer_vocab is None else {normalize_answer(a) for a in answer_vocab}
  hits, scored = 0.0, 0
  for pred, answer in zip(predictions, answers):
    gt = normalize_answer(answer)
    if vocab is not None and gt not in vocab:
      continue
    scored += 1
    hits += float(normalize_answer(pred) == gt)
  if scored == 0:
    raise ValueError(f"corpus_exact_match: all {len(answers)} ground-truth answers are outside "
                     "answer_vocab; is the vocabulary from the same dataset?")
  return {"accuracy": hits / scored, "num_examples": float(scored),
          "num_excluded": float(len(answers) - scored)}


def corpus_exact_match(predictions: Sequence[str | bytes], answers: Sequence[str | bytes],
                       answer_vocab: Iterable[str | bytes] | None = None) -> float:
  """Mean `exact_match` in [0, 1]; see `corpus_exact_match_details` for ``answer_vocab``."""
  return corpus_exact_match_details(predictions, answers, answer_vocab)["accuracy"]


def _field(target: Any, key: str, index: int, metric: str) -> Any:
  if not isinstance(target, Mapping) or key not in target:
    got = sorted(target) if isinstance(target, Mapping) else type(target).__name__
    raise ValueError(f"{metric}: target {index} must be a mapping with key {key!r}, got {got}")
  return target[key]


def vqa_metric_fn(targets: Sequence[Mapping[str, Any]],
                  predictions: Sequence[str | bytes]) -> dict[str, float]:
  """seqio metric: VQA accuracy in percent; each target is ``{"answers": [...]}``."""
  answers = [_field(t, "answers", i, "vqa_metric_fn") for i, t in enumerate(targets)]
  return {"vqa_accuracy": 100.0 * corpus_vqa_accuracy(predictions, answers)}


def ivqa_metric_fn(targets: Sequence[Mapping[str, Any]],
                   predictions: Sequence[str | bytes]) -> dict[str, float]:
  """seqio metric: iVQA accuracy in percent; each target is ``{"answers": [...]}``."""
  answers = [_field(t, "answers", i, "ivqa_metric_fn") for i, t in enumerate(targets)]
  return {"ivqa_accuracy": 100.0 * corpus_ivqa_accuracy(predictions, answers)}


def exact_match_metric_fn(targets: Sequence[str | bytes | Mapping[str, Any]],
                          predictions: Sequence[str | bytes],
                          answer_vocab: Iterable[str | bytes] | None = None
                          ) -> dict[str, float]:
  """seqio metric: exact-match accuracy in percent (GQA, SNLI-VE, video QA).

  Bind the video-QA vocabulary with ``functools.partial(exact_match_metric_fn,
  answer_vocab=vocab)``; seqio still sees the ``(targets, predictions)`` signature.
  """
  answers = [t if isinstance(t, (str, bytes)) else _field(t, "answer", i, "exact_match_metric_fn")
             for i, t in enumerate(targets)]
  details = corpus_exact_match_details(predictions, answers, answer_vocab)
  out = {"accuracy": 100.0 * details["accuracy"]}
  if answer_vocab is not None:
    out["num_excluded"] = details["num_excluded"]
  return out
