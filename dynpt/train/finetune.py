"""Finetuning on downstream tasks, and their generation-based evaluation.

Finetuning is the pretraining loop (`dynpt.train.loop.run`) on a run built by
`dynpt.train.setup.build_session` from an export's params (fresh optimizer),
on one downstream task or a mixture of them, with optional frozen subtrees,
plus an `EvalHook`: every `EvalConfig.every` steps and at the end the model
decodes the eval split and the task's official metric is computed
(`dynpt.metrics` via the seqio task's `metric_fns`); the best params by that
metric are kept in `<run_dir>/best/` with `best.json`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from dynpt import metrics, mixing
from dynpt import fs
from dynpt.data import answer_vocab, pipeline, schema, task_registry
from dynpt.data import vocab as vocab_lib
from dynpt.models import decoding
from dynpt.train import checkpoints, export, hooks, loop, model_setup, optim, setup
from dynpt.train.config import (DataConfig, ModelConfig, SamplerConfig, TrainConfig,
                                validate_configs)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """How downstream tasks are evaluated (bound from gin)."""
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


def evaluate_task(task_name: str, params: Any, model, vocab, *,
                  data_cfg: DataConfig, eval_cfg: EvalConfig = EvalConfig(),
                  out_dir: str | None = None, step: int | None = None,
                  trace_context=None) -> dict[str, float]:
  """Decodes `eval_cfg.split` of a downstream task and scores it.

  Returns the task's metrics (percent, as seqio metric_fns report them).
  Writes `<out_dir>/<task>.json` and `<out_dir>/<task>.predictions.jsonl`.
  `trace_context`: `partitioning.trace_context(mesh, mode)` of the run, so
  decoding shards its activations as the train step does.
  """
  task = pipeline.get_task(task_name)
  passthrough = task_registry.eval_needs(task_name).passthrough
  postprocess = task.postprocess_fn or _identity_postprocess
  it = pipeline.TaskIterator(
      task_name, task_id=0, sequence_length=data_cfg.sequence_length,
      image_size=data_cfg.image_size, seed=data_cfg.seed, split=eval_cfg.split,
      data_dir=data_cfg.data_dir, shuffle=False, repeat=False,
      vocabulary=vocab, passthrough=passthrough)
  metric_fns = _metric_fns(task_name, task, data_cfg, eval_cfg)
  max_len = eval_cfg.max_decode_length or data_cfg.target_length
  decode = decoding.make_batch_decoder(
      model, mode=eval_cfg.decode, max_decode_length=max_len,
      beam_size=eval_cfg.beam_size, alpha=eval_cfg.beam_alpha,
      trace_context=trace_context)
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


class _BestKeeper:
  """Evaluates every task; saves params to `run_dir/best` when the mean improves."""

  def __init__(self, task_names, model, vocab, data_cfg, eval_cfg, run_dir,
               trace_context=None):
    self.task_names, self.model, self.vocab = task_names, model, vocab
    self.data_cfg, self.eval_cfg, self.run_dir = data_cfg, eval_cfg, run_dir
    self.trace_context = trace_context
    self.best_path = fs.join(run_dir, "best.json")
    self.best = None
    if fs.exists(self.best_path):
      self.best = json.loads(fs.read_text(self.best_path))["score"]
    self.last: dict[str, Any] = {}

  def __call__(self, step: int, params) -> dict[str, float]:
    scalars, per_task = {}, {}
    for name in self.task_names:
      res = evaluate_task(name, params, self.model, self.vocab,
                          data_cfg=self.data_cfg, eval_cfg=self.eval_cfg,
                          out_dir=fs.join(self.run_dir, "eval", str(step)),
                          step=step, trace_context=self.trace_context)
      per_task[name] = res
      for k, v in res.items():
        scalars[f"eval/{name}/{k}"] = v
    score = float(np.mean([primary_metric(r) for r in per_task.values()]))
    scalars["eval/score"] = score
    self.last = {"step": step, "score": score, "tasks": per_task}
    if jax.process_index() == 0 and (self.best is None or score > self.best):
      self.best = score
      checkpoints.save_params(fs.join(self.run_dir, "best", "params"),
                              jax.device_get(params))
      fs.write_text(self.best_path, json.dumps(self.last, indent=1))
      logging.info("new best %.3f at step %d", score, step)
    return scalars


def finetune(train_cfg: TrainConfig = TrainConfig(),
             data_cfg: DataConfig = DataConfig(mixture="vqav2"),
             optimizer_cfg: optim.OptimizerConfig = optim.OptimizerConfig(),
             model_cfg: ModelConfig = ModelConfig(),
             sampler_cfg: SamplerConfig = SamplerConfig(mixing.EVEN_SAMPLER,
                                                        {"min_per_task": 1}),
             eval_cfg: EvalConfig = EvalConfig(),
             init_from: str | None = None,
             frozen_patterns: tuple[str, ...] = ()) -> dict[str, Any]:
  """Finetunes from an export (or from scratch when `init_from` is None).

  Args:
    init_from: an export directory (`tools/export_checkpoint.py`); params
      only, the optimizer starts fresh. None = random init (the paper's
      "no pretraining" baseline).
    frozen_patterns: regexes of param paths to freeze, e.g. ('^encoder/',
      '^resnet/') for a frozen encoder.

  Returns:
    the train summary plus `eval` (last evaluation) and `best` (its score).
  """
  validate_configs(train_cfg, data_cfg, optimizer_cfg, model_cfg, sampler_cfg,
                   eval_cfg)
  task_names = model_setup.resolve_task_names(data_cfg.mixture)
  vocab = vocab_lib.get_vocabulary(data_cfg.vocabulary_path)
  model = model_setup.build_model(model_cfg, vocab, data_cfg.image_size)
  init_params = load_init_params(init_from, model, data_cfg, frozen_patterns)
  with setup.claimed_run_dir(train_cfg.run_dir):
    session = setup.build_session(
        train_cfg, data_cfg, sampler_cfg, optimizer_cfg, model_cfg,
        init_params=init_params, frozen_patterns=tuple(frozen_patterns))
    keeper = _BestKeeper(task_names, session.model, vocab, data_cfg, eval_cfg,
                         train_cfg.run_dir, session.trace_context)
    summary = loop.run(session, eval_hooks=[hooks.EvalHook(keeper, eval_cfg.every)])
  summary.update(eval=keeper.last, best=keeper.best)
  return summary


def load_init_params(init_from: str | None, model, data_cfg: DataConfig,
                     frozen_patterns: tuple[str, ...] = ()) -> Any:
  """An export's params fitted to `model`, or None without `init_from`.

  The visual position tables are resampled to the image size, every other param must
  match (the first mismatch is named), the export's vocabulary must be the run's, and
  `frozen_patterns` must match some param. Shared by finetuning and by pretraining
  from an export (`pretrain_init_params`).
  """
  if not init_from and not frozen_patterns:
    return None
  abstract = abstract_params(model, data_cfg)
  init_params = None
  if init_from:
    init_params, info = export.load_export(init_from)
    logging.info("starting from %s (pretrained step %s)", init_from, info.get("step"))
    _check_vocabulary(info, data_cfg, init_from)
    _check_visual_fusion(info, model.config.visual_fusion, init_from)
    init_params = resize_visual_positions(abstract, init_params, init_from)
    _check_params_match(abstract, init_params, init_from)
  if frozen_patterns:
    labels = jax.tree.leaves(optim.frozen_labels(abstract, frozen_patterns))
    if "frozen" not in labels:
      raise ValueError(f"frozen_patterns {frozen_patterns} match no parameter "
                       "(see `python tools/model_summary.py --paths`)")
  return init_params


def pretrain_init_params(init_from: str | None = None,
                         model_cfg: ModelConfig = ModelConfig(),
                         data_cfg: DataConfig = DataConfig(),
                         frozen_patterns: tuple[str, ...] = ()) -> Any:
  """`loop.train`'s `init_params` when pretraining starts from an export.

  Bound in runs/pretrain.gin (INIT_FROM, FROZEN): params only, the optimizer starts
  fresh, as in finetuning; a run that resumes from its own checkpoint ignores them.
  """
  if not init_from and not frozen_patterns:
    return None
  vocab = vocab_lib.get_vocabulary(data_cfg.vocabulary_path)
  model = model_setup.build_model(model_cfg, vocab, data_cfg.image_size)
  return load_init_params(init_from, model, data_cfg, tuple(frozen_patterns))


def _check_visual_fusion(info: dict, ours: str, source: str) -> None:
  """Fails when the export fused the image elsewhere than the run's model does.

  The params are the same either way, so such an export would load silently into a
  model that reads them as another function. Exports before the field: 'decoder'.
  """
  theirs = info.get("visual_fusion") or "decoder"
  if theirs != ours:
    raise ValueError(f"export {source} was trained with visual_fusion={theirs!r}, the run "
                     f"uses {ours!r}: set ModelConfig.visual_fusion to the export's")


def _check_vocabulary(info: dict, data_cfg: DataConfig, source: str) -> None:
  """Fails when the export was trained with another sentencepiece model than the run's.

  Same-sized vocabularies would otherwise load silently and map every id to another
  piece. An export without a recorded vocabulary (or whose file has moved) is not
  checked.
  """
  if info.get("vocabulary_recorded") is False:
    return  # An import given no sentencepiece model (docs/model.md).
  theirs = info.get("vocabulary_path") or vocab_lib.default_vocab_path()
  ours = data_cfg.vocabulary_path or vocab_lib.default_vocab_path()
  try:
    if not fs.isfile(theirs) or not fs.isfile(ours):
      return  # Moved; or the run's own vocabulary check names it.
    same = fs.read_bytes(theirs) == fs.read_bytes(ours)
  except OSError:
    return  # A bucket this machine cannot read: the run's own loading tells.
  if not same:
    raise ValueError(f"export {source} was trained with the vocabulary {theirs}, the "
                     f"run uses {ours}: set VOCABULARY (DataConfig.vocabulary_path) to "
                     "the export's")


# The visual position tables whose length follows the image size (one row per grid cell).
_POSITION_TABLES = ("visual_row_embedding", "visual_col_embedding")


def abstract_params(model, data_cfg: DataConfig) -> Any:
  """The model's param tree as unboxed shapes (`jax.eval_shape`; nothing allocated)."""
  return nn.meta.unbox(jax.eval_shape(model_setup.init_params_fn(model, data_cfg),
                                      jax.random.PRNGKey(0)))


def resize_visual_positions(abstract: Any, params: Any, source: str) -> Any:
  """Resamples the row/column position tables when finetuning at another image size.

  The visual grid is image_size / 16 cells per side, so an export pretrained at one
  size (224 px: 14 rows) does not fit a model at another (384 px: 24 rows). As
  big_vision does for ViT position embeddings, each table is linearly interpolated
  to the new grid; every other param must match exactly (`_check_params_match`).
  `abstract` is the target model's `abstract_params`.
  """
  if not isinstance(params, dict):
    return params
  params = dict(params)
  for name in _POSITION_TABLES:
    if name not in params or name not in abstract:
      continue
    want = tuple(abstract[name].shape)
    have = tuple(np.shape(params[name]))
    if have == want or len(have) != 2 or have[1] != want[1]:
      continue  # equal, or a width mismatch that _check_params_match reports
    params[name] = np.asarray(jax.image.resize(
        np.asarray(params[name], np.float32), want, method="linear"))
    logging.info("export %s: resampled %s from %d to %d grid positions", source, name,
                 have[0], want[0])
  return params


def _check_params_match(abstract: Any, params: Any, source: str) -> None:
  """Fails early, naming the first mismatching path, if shapes differ from `abstract`."""
  want = {optim.param_path(p): tuple(x.shape) for p, x in
          jax.tree_util.tree_flatten_with_path(abstract)[0]}
  have = {optim.param_path(p): tuple(np.shape(x)) for p, x in
          jax.tree_util.tree_flatten_with_path(params)[0]}
  for path, shape in want.items():
    if have.get(path) != shape:
      raise ValueError(f"export {source} does not fit the model: {path} has "
                       f"shape {have.get(path)}, the model needs {shape}")

