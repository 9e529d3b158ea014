"""Downstream tasks: image QA, visual entailment, referring expressions, video QA.

Ground truth that the metrics need stays in each example next to the model
features, under fixed names the eval code can read: ``answers`` (all
ground-truth answers), ``gt_box`` (pixel xyxy) and ``image_wh`` (width,
height of the stored image). The feature converter drops them unless asked
(`TaskIterator(..., passthrough=('answers', 'gt_box', 'image_wh'))`), and
`postprocess` hands them to the seqio metrics as the target mapping.

Metric functions import `dynpt.metrics` inside their bodies, so registering
the tasks does not depend on that package.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dynpt.data import preprocessors as pp
from dynpt.data import sources
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
  from dynpt import metrics  # Lazy: registration must not need the metrics package.
  return metrics.vqa_metric_fn(targets, predictions)


def ivqa_metric(targets: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> dict:
  from dynpt import metrics
  return metrics.ivqa_metric_fn(targets, predictions)


def exact_match_metric(targets: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> dict:
  from dynpt import metrics
  return metrics.exact_match_metric_fn(targets, predictions)


def refcoco_metric(targets: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> dict:
  from dynpt import metrics
  return metrics.refcoco_metric_fn(targets, predictions)


def exact_match_in_vocab_metric(answer_vocab: frozenset[str]) -> Callable:
  """Exact match over the questions whose answer is in `answer_vocab` (video QA).

  See `dynpt.data.answer_vocab`: the paper scores MSRVTT-QA and MSVD-QA this way
  to compare with prior work; the metric also reports `num_excluded`.
  """
  def metric(targets: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> dict:
    from dynpt import metrics
    return metrics.exact_match_metric_fn(targets, predictions, answer_vocab=answer_vocab)
  return metric


_QA = (pp.vqa,) + common.TOKENIZE + common.APPEND_EOS
_SNLI = (pp.snli_ve,) + common.TOKENIZE + common.APPEND_EOS
_REFEXP = (pp.refexp_box,) + common.TOKENIZE + common.APPEND_EOS

# name (= dataset) -> (preprocessors, video, metric)
TABLE = {
    "vqav2": (_QA, False, vqa_metric),
    "gqa": (_QA, False, exact_match_metric),
    "snli_ve": (_SNLI, False, exact_match_metric),
    "refcoco": (_REFEXP, False, refcoco_metric),
    "refcocoplus": (_REFEXP, False, refcoco_metric),
    "refcocog": (_REFEXP, False, refcoco_metric),
    "msrvtt_qa": (_QA, True, exact_match_metric),
    "msvd_qa": (_QA, True, exact_match_metric),
    "ivqa": (_QA, True, ivqa_metric),
}
DOWNSTREAM_TASKS = tuple(TABLE)
# Tasks scored over a standard answer vocabulary when `EvalConfig.answer_vocab_size` is set.
ANSWER_VOCAB_TASKS = ("msrvtt_qa", "msvd_qa")


def register() -> None:
  """Registers the downstream tasks (idempotent); needs no data on disk."""
  for name, (preprocessors, video, metric) in TABLE.items():
    common.add_task(
        name,
        sources.SchemaDataSource(name, task_name=name, splits=sources.DOWNSTREAM_SPLITS[name]),
        preprocessors, video=video, postprocess_fn=postprocess, metric_fns=[metric])
