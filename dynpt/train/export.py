"""Exports a run's checkpoint for finetuning and for T5X tools.

`<out_dir>/` receives:
  params/             params only (orbax), what `finetune` starts from;
  config.gin          the config the run used (copied from the run dir);
  export_info.json    model size (and T5 sizes), image size, vocabulary path,
                      source step;
  t5x_text_tower/     the text tower ({'target': {token_embedder, encoder,
                      decoder}}) in T5X's T5 1.1 parameter layout, so T5X
                      checkpoint tools can read it.
"""

from __future__ import annotations

import json
from typing import Any

from absl import logging

from dynpt import fs
from dynpt.models import configs as model_configs
from dynpt.train import checkpoints
from dynpt.train.config import DataConfig, ModelConfig, validate_configs

TEXT_TOWER_KEYS = ("token_embedder", "encoder", "decoder")


def text_tower(params: dict) -> dict:
  """The T5 part of the params, keyed as T5X's `target` tree."""
  missing = [k for k in TEXT_TOWER_KEYS if k not in params]
  if missing:
    raise ValueError(f"params have no text-tower subtree(s) {missing}; "
                     f"top-level keys: {sorted(params)}")
  return {"target": {k: params[k] for k in TEXT_TOWER_KEYS}}


def export(run_dir: str = "runs/default", out_dir: str | None = None,
           step: int | None = None, model_cfg: ModelConfig = ModelConfig(),
           data_cfg: DataConfig = DataConfig()) -> dict[str, Any]:
  """Writes the export of `run_dir` (newest usable checkpoint unless `step`).

  A damaged or non-finite newest checkpoint is logged and an older one
  exported (`checkpoints.restore_params`); the info names the step used.
  """
  validate_configs(model_cfg, data_cfg)
  out_dir = out_dir or fs.join(run_dir, "export")
  params, step = checkpoints.restore_params(run_dir, step)
  t5 = model_configs.get_config(model_cfg.name, t5_overrides=model_cfg.t5_overrides).t5
  info = {"source_run_dir": fs.absolute(run_dir), "step": step,
          "model": model_cfg.name, "t5_overrides": model_cfg.t5_overrides,
          "resnet_preactivation": model_cfg.resnet_preactivation,
          "visual_fusion": model_cfg.visual_fusion,
          "t5": {k: getattr(t5, k) for k in model_configs.T5_SIZE_FIELDS},
          "image_size": data_cfg.image_size,
          "input_length": data_cfg.input_length,
          "target_length": data_cfg.target_length,
          "vocabulary_path": data_cfg.vocabulary_path}
  write_export(out_dir, params, info)
  config_src = fs.join(run_dir, "config.gin")
  if fs.exists(config_src):
    fs.copy(config_src, fs.join(out_dir, "config.gin"))
  logging.info("exported step %d of %s to %s", step, run_dir, out_dir)
  return {"out_dir": out_dir, "step": step}


def write_export(out_dir: str, params: Any, info: dict[str, Any]) -> None:
  """Writes params, the T5X text tower and `export_info.json` into `out_dir`.

  The one writer of the export layout, so that `export` and tools that make
  exports without a run directory (tests, converted checkpoints) agree with
  `load_export`. `info` should hold `model`, `image_size`, `input_length`,
  `target_length` and `vocabulary_path`; the subdirectory names are added.
  """
  fs.makedirs(out_dir)
  checkpoints.save_params(fs.join(out_dir, "params"), params)
  checkpoints.save_params(fs.join(out_dir, "t5x_text_tower"), text_tower(params))
  info = dict(info, params="params", t5x_text_tower="t5x_text_tower")
  # Last: an export whose info file is there is whole (`load_export`).
  fs.write_text(fs.join(out_dir, "export_info.json"), json.dumps(info, indent=1))


def load_export(export_dir: str) -> tuple[dict, dict]:
  """(params, export_info) of an export written by `export`."""
  info_path = fs.join(export_dir, "export_info.json")
  if not fs.exists(info_path):
    raise FileNotFoundError(f"{info_path} not found: not a dynpt export "
                            "(make one with `python tools/export_checkpoint.py`)")
  info = json.loads(fs.read_text(info_path))
  return checkpoints.load_params(fs.join(export_dir, "params")), info
