"""Evaluation metrics over generated text, importable without JAX or TensorFlow.

Plain functions over strings and numbers, so predictions of any model can be
scored; `*_metric_fn` wrappers have seqio's ``(targets, predictions) -> dict``
signature for task registration. See docs/metrics.md.
"""

from dynpt.metrics.captioning import caption_metrics
from dynpt.metrics.localization import box_iou
from dynpt.metrics.localization import decode_box_text
from dynpt.metrics.localization import refcoco_eval
from dynpt.metrics.localization import refcoco_hit
from dynpt.metrics.localization import refcoco_metric_fn
from dynpt.metrics.normalize import normalize_answer
from dynpt.metrics.qa import build_answer_vocab
from dynpt.metrics.qa import corpus_exact_match
from dynpt.metrics.qa import corpus_exact_match_details
from dynpt.metrics.qa import corpus_ivqa_accuracy
from dynpt.metrics.qa import corpus_vqa_accuracy
from dynpt.metrics.qa import exact_match
from dynpt.metrics.qa import exact_match_metric_fn
from dynpt.metrics.qa import ivqa_accuracy
from dynpt.metrics.qa import ivqa_metric_fn
from dynpt.metrics.qa import vqa_accuracy
from dynpt.metrics.qa import vqa_metric_fn
from dynpt.metrics.writer import dump_predictions
from dynpt.metrics.writer import format_table
from dynpt.metrics.writer import write_results
