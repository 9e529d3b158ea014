"""Fitting an export's params to a run's model: pretraining and finetuning both start here.

An export (`dynpt.train.export`) holds params only. Starting a run from one (finetuning,
or pretraining with INIT_FROM) needs the same checks either way: the export's vocabulary
and visual fusion are the run's, the visual position tables are resampled to the run's
image size, every other param has the model's shape (the first mismatch is named), and
the frozen patterns match some param.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from dynpt import fs
from dynpt.data import vocab as vocab_lib
from dynpt.train import export, model_setup, optim
from dynpt.train.config import DataConfig, ModelConfig


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

