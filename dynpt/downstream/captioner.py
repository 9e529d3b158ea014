"""A `generated_captions.Captioner` built from an export (`dynpt.train.export`).

Building the model an export describes is the trainer's job (`model_setup`),
so it lives here, above the data layer that runs the captioner.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from dynpt import fs
from dynpt.data import generated_captions
from dynpt.train import export, model_setup
from dynpt.train.config import DataConfig, ModelConfig


def load_captioner(export_dir: str, **kwargs) -> generated_captions.Captioner:
  """Builds the model an export describes (`export_info.json`) and loads its params.

  Args:
    export_dir: an export of a model trained on a `*_cap` task.
    **kwargs: passed to `generated_captions.Captioner` (batch_size, decode, ...).

  Raises:
    FileNotFoundError: when `export_dir` is not an export.
    ValueError: naming the first param whose shape does not fit the model.
  """
  params, info = export.load_export(export_dir)
  missing = [k for k in ("model", "image_size", "input_length", "target_length")
             if k not in info]
  if missing:
    raise ValueError(f"{export_dir}/export_info.json lacks {missing}")
  model_cfg = ModelConfig(
      name=info["model"], t5_overrides=info.get("t5_overrides"),
      resnet_preactivation=bool(info.get("resnet_preactivation", False)),
      visual_fusion=info.get("visual_fusion") or "decoder")
  data_cfg = DataConfig(image_size=info["image_size"], input_length=info["input_length"],
                        target_length=info["target_length"],
                        vocabulary_path=info.get("vocabulary_path"))
  run_model = model_setup.build_run_model(model_cfg, data_cfg)
  model, vocab = run_model.model, run_model.vocab
  _check_shapes(run_model.init_fn(), params, export_dir)
  provenance = {"export_dir": fs.absolute(export_dir), "step": info.get("step"),
                "model": info["model"], "image_size": info["image_size"]}
  return generated_captions.Captioner(
      model, params, vocab, image_size=info["image_size"],
      input_length=info["input_length"], target_length=info["target_length"],
      info=provenance, **kwargs)


def _check_shapes(init_fn: Callable[[jax.Array], Any], params: Any, source: str) -> None:
  """Fails early, naming the first mismatching path, if the export does not fit."""
  abstract = nn.meta.unbox(jax.eval_shape(init_fn, jax.random.PRNGKey(0)))
  want = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in
          jax.tree_util.tree_flatten_with_path(abstract)[0]}
  have = {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in
          jax.tree_util.tree_flatten_with_path(params)[0]}
  for path, shape in want.items():
    if have.get(path) != shape:
      raise ValueError(f"export {source} does not fit its model: {path} has shape "
                       f"{have.get(path)}, the model needs {shape}")
