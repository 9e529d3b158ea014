"""Decode-and-score: a downstream task's official metric on generated text.

The model decodes a split of the task (greedy or beam, `dynpt.models.decoding`),
the task's `postprocess_fn` turns text into answers (boxes, labels), and the
task's seqio `metric_fns` score them (`dynpt.metrics`). Finetuning's evaluation
hook (`dynpt.downstream.best_params`) and any offline scoring call
`evaluate_task` with the run's `model_setup.RunModel`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from dynpt import metrics
from dynpt.data import pipeline, schema, task_registry
from dynpt.downstream import answer_vocab
from dynpt.models import decoding
from dynpt.train import model_setup
from dynpt.train.config import DataConfig


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """How downstream tasks are evaluated (bound from gin)."""
  RANGES = {  # `dynpt.train.config.check_fields`: field -> (low, high).
      "max_examples": (1, None), "batch_size": (1, None), "beam_size": (1, None),
      "max_decode_length": (1, None), "every": (0, None), "answer_vocab_size": (1, None)}
  split: str = "val"
  max_examples: int | None = None  # None: the whole split.
  batch_size: int = 32
  decode: str = "greedy"  # greedy | beam
  beam_size: int = 4
  beam_alpha: float = 0.6
  max_decode_length: int | None = None  # Default: the target length.
  every: int = 1000  # Steps between evaluations during finetuning.
  # Video QA (msrvtt_qa, msvd_qa): score only the questions whose answer is among the
  # N most frequent training answers, as the paper and prior work do (None: all).
  answer_vocab_size: int | None = None


def evaluate_task(task_name: str, params: Any, run_model: model_setup.RunModel, *,
                  eval_cfg: EvalConfig = EvalConfig(), out_dir: str | None = None,
                  step: int | None = None) -> dict[str, float]:
  """Decodes `eval_cfg.split` of a downstream task and scores it.

  Returns the task's metrics (percent, as seqio metric_fns report them).
  Writes `<out_dir>/<task>.json` and `<out_dir>/<task>.predictions.jsonl`.
  Decoding is traced under the run's mesh and activation rules (`run_model`), so
  it shards its activations as the train step does; `params` are used as placed
  (the train state's, or `run_model.place(...)`).
  """
  data_cfg, vocab = run_model.data_cfg, run_model.vocab
  task = pipeline.get_task(task_name)
  passthrough = task_registry.eval_needs(task_name).passthrough
  postprocess = task.postprocess_fn or _identity_postprocess
  it = run_model.eval_iterator(task_name, split=eval_cfg.split, passthrough=passthrough,
                               repeat=False)
  metric_fns = _metric_fns(task_name, task, data_cfg, eval_cfg)
  max_len = eval_cfg.max_decode_length or data_cfg.target_length
  decode = decoding.make_batch_decoder(
      run_model.model, mode=eval_cfg.decode, max_decode_length=max_len,
      beam_size=eval_cfg.beam_size, alpha=eval_cfg.beam_alpha,
      trace_context=run_model.trace_context())
  predictions, targets, inputs = [], [], []
  remaining = eval_cfg.max_examples
  while remaining is None or remaining > 0:
    n = eval_cfg.batch_size if remaining is None else min(eval_cfg.batch_size,
                                                          remaining)
    batch = it.take(n)
    rows = len(batch["encoder_input_tokens"])
    if rows == 0:
      break
    padded = decoding.pad_batch(batch, eval_cfg.batch_size)
    tokens = np.asarray(jax.device_get(decode(
        params, padded["image"], padded["encoder_input_tokens"])))[:rows]
    for i in range(rows):
      example = {k: batch[k][i] for k in passthrough}
      target_text = vocab.decode(decoding.output_ids(batch["decoder_target_tokens"][i]))
      predictions.append(postprocess(vocab.decode(decoding.output_ids(tokens[i])),
                                     example=example, is_target=False))
      targets.append(postprocess(target_text, example=example, is_target=True))
      inputs.append(vocab.decode(decoding.output_ids(batch["encoder_input_tokens"][i])))
    if remaining is not None:
      remaining -= rows
  if not predictions:
    raise ValueError(f"task {task_name!r}: split {eval_cfg.split!r} yielded no "
                     "examples to evaluate")
  results: dict[str, float] = {}
  for metric_fn in metric_fns:
    results.update({k: float(v) for k, v in metric_fn(targets, predictions).items()})
  results["num_examples"] = float(len(predictions))
  if out_dir:
    metrics.write_results({**results, "step": float(step or 0)}, out_dir,
                          task_name)
    metrics.dump_predictions(out_dir, task_name, predictions, targets=targets,
                             inputs=inputs)
  return results


def _identity_postprocess(output: Any, example: Any = None, is_target: bool = False) -> Any:
  """seqio's behaviour for a task without a `postprocess_fn`."""
  del example, is_target
  return output


def _metric_fns(task_name: str, task, data_cfg: DataConfig, eval_cfg: EvalConfig) -> list:
  """The task's seqio metrics, or the one it declared for an answer vocabulary (video QA)."""
  size = eval_cfg.answer_vocab_size
  in_vocab_metric = task_registry.eval_needs(task_name).answer_vocab_metric
  if size is None or in_vocab_metric is None:
    return list(task.metric_fns)
  if size < 1:
    raise ValueError(f"EvalConfig.answer_vocab_size must be >= 1 or None, got {size}")
  vocab = answer_vocab.load_answer_vocab(schema.get_data_dir(data_cfg.data_dir), task_name,
                                        int(size))
  return [in_vocab_metric(vocab)]


def primary_metric(results: dict[str, float]) -> float:
  """The number the best checkpoint is chosen by: the first metric reported."""
  for k, v in results.items():
    if k != "num_examples":
      return v
  raise ValueError(f"no metric in {results}")
