"""Exports a run's checkpoint for finetuning and for T5X tools.

`<out_dir>/` receives:
  params/             params only (orbax), what `finetune` starts from;
  config.gin          the config the run used (copied from the run dir);
  export_info.json    model size (and T5 sizes), image size, vocabulary path,
                      source step;
  t5x_text_tower/     the text tower ({'target': {token_embedder, encoder,
                      decoder}}) in T5X's T5 1.1 parameter layout, so T5X
                      checkpoint tools can read it.

An export appears whole or not at all (`staged_dir`): it is written into a
staging folder beside `out_dir` and renamed into place once complete, so a
failure half-way leaves the previous export as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Any, Iterator

from absl import logging

from dynpt import fs
from dynpt.models import configs as model_configs
from dynpt.train import checkpoints
from dynpt.train.config import DataConfig, ModelConfig, validate_configs

TEXT_TOWER_KEYS = ("token_embedder", "encoder", "decoder")
EXPORT_INFO = "export_info.json"


class OutputExistsError(FileExistsError):
  """The output folder holds something that is not to be replaced."""


def check_replaceable(out_dir: str, overwrite: bool, marker: str = EXPORT_INFO,
                      what: str = "a dynpt export") -> None:
  """Raises `OutputExistsError` unless `out_dir` may receive a new output.

  Absent and empty folders may; one holding an earlier output (its `marker`
  file is there) only with `overwrite`; anything else never (a folder of
  other files is not replaced by an export).
  """
  if not fs.exists(out_dir):
    return
  if not fs.isdir(out_dir):
    raise OutputExistsError(f"{out_dir} is a file, not a folder for {what}; "
                            "choose another output folder")
  if not fs.listdir(out_dir):
    return
  if not fs.exists(fs.join(out_dir, marker)):
    raise OutputExistsError(
        f"{out_dir} holds files but is not {what} (no {marker}); it is not "
        "replaced: choose another output folder or remove it")
  if not overwrite:
    raise OutputExistsError(
        f"{out_dir} holds {what} already; pass --overwrite to replace it (the "
        "new one is written beside it and swapped in only once complete)")


@contextlib.contextmanager
def staged_dir(out_dir: str, overwrite: bool = True, marker: str = EXPORT_INFO,
               what: str = "a dynpt export") -> Iterator[str]:
  """Yields a fresh staging folder beside `out_dir`; on success it replaces it.

  `check_replaceable` runs first. If the block raises, the staging folder is
  removed and `out_dir` is left as it was. Locally the swap is two renames in
  one folder (the old output is renamed aside, the new one into place, then
  the old one is deleted); in a bucket each rename copies (`dynpt.fs`).
  """
  check_replaceable(out_dir, overwrite, marker, what)
  out_dir = fs.absolute(out_dir)
  parent, name, tag = fs.dirname(out_dir), fs.basename(out_dir), uuid.uuid4().hex[:8]
  staging = fs.join(parent, f".{name}.staging-{tag}")
  fs.makedirs(staging)
  try:
    yield staging
  except BaseException:
    with contextlib.suppress(OSError):
      fs.rmtree(staging)
    raise
  old = None
  if fs.exists(out_dir) or (not fs.is_remote(out_dir) and os.path.islink(out_dir)):
    old = fs.join(parent, f".{name}.old-{tag}")
    fs.rename(out_dir, old)
  fs.rename(staging, out_dir)
  if old is not None:
    try:
      fs.rmtree(old)
    except OSError:  # A symbolic link that stood for the folder.
      try:
        fs.remove(old)
      except OSError as e:
        logging.warning("the previous output, moved to %s, could not be "
                        "deleted: %s", old, e)


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
  exported (`checkpoints.restore_params`); the info names the step used. An
  earlier export in `out_dir` is replaced only once the new one is complete
  (`staged_dir`); a folder there that is no export is refused.
  """
  validate_configs(model_cfg, data_cfg)
  out_dir = out_dir or fs.join(run_dir, "export")
  check_replaceable(out_dir, overwrite=True)  # Before the restore's minutes.
  checkpoints.checked_path(fs.absolute(out_dir))
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
  with staged_dir(out_dir) as staging:
    write_export(staging, params, info)
    config_src = fs.join(run_dir, "config.gin")
    if fs.exists(config_src):
      fs.copy(config_src, fs.join(staging, "config.gin"))
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
