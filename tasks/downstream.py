"""Downstream tasks: image QA, visual entailment, referring expressions, video QA.

Ground truth that the metrics need stays in each example next to the model
features: ``answers`` (all ground-truth answers), ``gt_box`` (pixel xyxy) and
``image_wh`` (width, height of the stored image). Each task declares which of
them its metric reads, and how it is scored over an answer vocabulary, in
`dynpt.data.task_registry` (`EvalNeeds`); the eval code keeps those features
(`TaskIterator(..., passthrough=...)`) and the task's `postprocess` hands them
to the seqio metrics as the target mapping.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dynpt import metrics
from dynpt.data import preprocessors as pp
from dynpt.data import sources
from dynpt.data import task_registry
from tasks import common


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def postprocess(output: Any, example: Mapping[str, Any] | None = None,
                is_target: bool = False) -> Any:
  """Decoded text for predictions; for targets a mapping with the ground truth.

  Target mapping keys: ``answer`` (the target text), and when the example has
  them ``answers`` (list of str, padding dropped), ``box`` (pixel xyxy) and
  ``image_wh``.
  """
  text = _text(output)
  if not is_target or example is None:
    return text
  out: dict[str, Any] = {"answer": text}
  if "answers" in example:
    out["answers"] = [_text(a) for a in np.asarray(example["answers"]).reshape(-1) if _text(a)]
  if "gt_box" in example:
    out["box"] = [float(v) for v in np.asarray(example["gt_box"]).reshape(-1)]
  if "image_wh" in example:
    out["image_wh"] = [int(v) for v in np.asarray(example["image_wh"]).reshape(-1)]
  return out


def vqa_metric(targets: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> dict:
  return metrics.vqa_metric_fn(targets, predictions)


def ivqa_metric(targets: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> dict:
  return metrics.ivqa_metric_fn(targets, predictions)


def exact_match_metric(targets: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> dict:
  return metrics.exact_match_metric_fn(targets, predictions)


def refcoco_metric(targets: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> dict:
  return metrics.refcoco_metric_fn(targets, predictions)


def exact_match_in_vocab_metric(answer_vocab: frozenset[str]) -> Callable:
  """Exact match over the questions whose answer is in `answer_vocab` (video QA).

  See `dynpt.downstream.answer_vocab`: the paper scores MSRVTT-QA and MSVD-QA this way
  to compare with prior work; the metric also reports `num_excluded`.
  """
  def metric(targets: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> dict:
    return metrics.exact_match_metric_fn(targets, predictions, answer_vocab=answer_vocab)
  return metric


_QA = (pp.vqa,) + common.TOKENIZE + common.APPEND_EOS
_SNLI = (pp.snli_ve,) + common.TOKENIZE + common.APPEND_EOS
_REFEXP = (pp.refexp_box,) + common.TOKENIZE + common.APPEND_EOS

_ANSWERS = task_registry.EvalNeeds(passthrough=("answers",))
_BOX = task_registry.EvalNeeds(passthrough=("gt_box", "image_wh"))
# Video QA: scored over a standard answer vocabulary when `EvalConfig.answer_vocab_size`
# is set, as the paper and prior work do.
_VIDEO_QA = task_registry.EvalNeeds(passthrough=("answers",),
                                    answer_vocab_metric=exact_match_in_vocab_metric)

# name (= dataset) -> (preprocessors, video, metric, eval-time needs)
TABLE = {
    "vqav2": (_QA, False, vqa_metric, _ANSWERS),
    "gqa": (_QA, False, exact_match_metric, _ANSWERS),
    "snli_ve": (_SNLI, False, exact_match_metric, _ANSWERS),
    "refcoco": (_REFEXP, False, refcoco_metric, _BOX),
    "refcocoplus": (_REFEXP, False, refcoco_metric, _BOX),
    "refcocog": (_REFEXP, False, refcoco_metric, _BOX),
    "msrvtt_qa": (_QA, True, exact_match_metric, _VIDEO_QA),
    "msvd_qa": (_QA, True, exact_match_metric, _VIDEO_QA),
    "ivqa": (_QA, True, ivqa_metric, _ANSWERS),
}
DOWNSTREAM_TASKS = tuple(TABLE)
ANSWER_VOCAB_TASKS = tuple(n for n, row in TABLE.items() if row[3].answer_vocab_metric)


def register() -> None:
  """Registers the downstream tasks (idempotent); needs no data on disk."""
  for name, (preprocessors, video, metric, needs) in TABLE.items():
    common.add_task(
        name,
        sources.SchemaDataSource(name, task_name=name, splits=sources.DOWNSTREAM_SPLITS[name]),
        preprocessors, video=video, postprocess_fn=postprocess, metric_fns=[metric])
    task_registry.set_eval_needs(name, needs)
