"""An export's text tower written for Hugging Face or T5X.

The input is a dynpt export (`dynpt.train.export`: a run's, or one the importer
wrote); the T5 sizes come from the params' shapes, the relative attention's max
distance from export_info.json (128 when an older export lacks it).
"""

from __future__ import annotations

from typing import Any

from absl import logging

from dynpt import fs
from dynpt.data import vocab as vocab_lib
from dynpt.interop import hf, t5x, text_tower
from dynpt.train import export

FORMATS = ("hf", "t5x")


def _vocabulary_path(info: dict[str, Any]) -> str | None:
  """The export's sentencepiece model; None for an import that recorded none."""
  path = info.get("vocabulary_path")
  if path:
    return path
  if info.get("vocabulary_recorded") is False:
    return None
  return vocab_lib.default_vocab_path()  # The default of every run.


def export_text_tower(fmt: str, export_dir: str, out_dir: str) -> dict[str, Any]:
  """Writes the text tower of `export_dir` to `out_dir` as `fmt` ('hf' or 't5x').

  The files are written beside `out_dir` and renamed into place once complete
  (`export.staged_dir`): an earlier output of the same format there is replaced
  whole or not at all; a folder of other files is refused.

  Returns:
    {'out_dir', 'format', 'step', 'files'}.

  Raises:
    FileNotFoundError: not an export.
    ValueError: an unknown format, or params that are not a T5 v1.1 text tower.
    OSError (export.OutputExistsError): `out_dir` holds other files.
  """
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt!r}; known formats: {FORMATS}")
  params, info = export.load_export(export_dir)
  source = fs.join(export_dir, "params")
  tower = text_tower.as_float32(text_tower.text_tower_of(params, source))
  max_distance = (info.get("t5") or {}).get("relative_attention_max_distance", 128)
  sizes, vocab_size = text_tower.infer_sizes(tower, source, max_distance)
  cfg = text_tower.t5_config(sizes, vocab_size)
  text_tower.check_text_tower(tower, cfg, source)
  step = int(info.get("step") or 0)
  if fmt == "hf":
    spm_path = _vocabulary_path(info)
    if spm_path is None:
      logging.warning("%s was imported without its sentencepiece model: no spiece.model "
                      "is written beside the Hugging Face model", export_dir)
    elif not fs.isfile(spm_path):
      raise FileNotFoundError(f"{export_dir}/export_info.json names the vocabulary "
                              f"{spm_path}, which does not exist")
  marker = hf.CONFIG_FILE if fmt == "hf" else t5x.CHECKPOINT_FILE
  with export.staged_dir(out_dir, marker=marker, what=f"a {fmt} checkpoint") as staging:
    if fmt == "hf":
      files = hf.write(staging, tower, cfg, spm_path)
    else:
      files = {"checkpoint": t5x.write(staging, tower, step)}
  files = {k: fs.join(out_dir, fs.basename(v)) for k, v in files.items()}
  logging.info("wrote the text tower of %s (step %d) as %s to %s", export_dir, step, fmt,
               out_dir)
  return {"out_dir": out_dir, "format": fmt, "step": step, "files": files}
