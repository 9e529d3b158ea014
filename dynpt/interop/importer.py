"""A dynpt export from public checkpoints: T5 v1.1 text tower (Hugging Face or T5X)
plus, optionally, a BiT ResNet.

The result is the layout `dynpt.train.export.write_export` writes (params/,
t5x_text_tower/, export_info.json), so finetuning (`INIT_FROM`) and pretraining
(`INIT_FROM` in runs/pretrain.gin) start from it like from a pretrained run. Whatever
no checkpoint provides (the ResNet without `visual`, the visual projection and
position tables, the visual norm) is freshly initialised, as a new run would.
Everything is read and checked before anything is written.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from dynpt import fs
from dynpt.data import vocab as vocab_lib
from dynpt.interop import bit, hf, t5x, text_tower
from dynpt.interop.text_tower import CheckpointMismatchError
from dynpt.models import configs, cpu_kernels, vl_model
from dynpt.train import checkpoints, export

FORMATS = ("hf", "t5x")


# What a reader may raise on input it did not foresee: each is turned into a
# `CheckpointMismatchError` naming the input, never a traceback of the tool.
_MALFORMED = (KeyError, TypeError, AttributeError, IndexError, ValueError, EOFError,
              OverflowError)


def read_text_tower(fmt: str, path: str) -> tuple[configs.T5Config, dict, int | None]:
  """(config, text tower, step) of a checkpoint in `fmt` ('hf' or 't5x').

  Raises:
    FileNotFoundError: no checkpoint there.
    CheckpointMismatchError: anything malformed, naming the file (or `path`).
  """
  if fmt not in FORMATS:
    raise ValueError(f"--format={fmt!r}; known formats: {FORMATS}")
  try:
    if fmt == "hf":
      cfg, tower = hf.read(path)
      return cfg, tower, None
    return t5x.read(path)
  except (CheckpointMismatchError, FileNotFoundError):
    raise
  except _MALFORMED as e:
    raise CheckpointMismatchError(f"{path}: not a readable {fmt} checkpoint "
                                  f"({type(e).__name__}: {e})") from e


def padded_vocab_size(spm_path: str) -> int:
  """Rows dynpt gives a sentencepiece model: pieces + 100 extra ids, rounded up to 128
  (`dynpt.data.vocab.padded_vocab_size`, as every dynpt model)."""
  import sentencepiece as spm

  processor = spm.SentencePieceProcessor()
  try:
    processor.LoadFromSerializedProto(fs.read_bytes(spm_path))
  except (OSError, RuntimeError) as e:
    raise CheckpointMismatchError(f"{spm_path}: not a sentencepiece model ({e})") from e
  return vocab_lib.padded_vocab_size(processor.GetPieceSize() + vocab_lib.EXTRA_IDS)


def _vocabulary(fmt: str, path: str, vocabulary: str | None) -> str | None:
  if vocabulary:
    if not fs.isfile(vocabulary):
      raise FileNotFoundError(f"sentencepiece model {vocabulary} not found")
    return vocabulary
  if fmt == "hf" and fs.isfile(fs.join(path, hf.SPM_FILE)):
    return fs.join(path, hf.SPM_FILE)
  return None


def _model_name(model: str | None, sizes: dict[str, int]) -> str:
  if model is not None:
    if model not in configs.MODEL_NAMES:
      raise ValueError(f"--model={model!r}; known: {configs.MODEL_NAMES}")
    return model
  name = text_tower.named_size(sizes)
  if name is None:
    logging.info("the checkpoint's T5 sizes %s are no named size: the ResNet of 'base' "
                 "is used (set --model to choose another)", sizes)
    return "base"
  return name


def _encode_image(module: vl_model.VLModel, image):
  return module.encode_image(image)


def build_params(vl_cfg: configs.VLConfig, tower: dict, resnet_params: dict | None,
                 seed: int = 0) -> dict[str, Any]:
  """The full model's params: the text tower (and ResNet) given, the rest fresh.

  Only the image path is initialised (`VLModel.encode_image`), so the T5 init that
  the import replaces is never computed; the result is checked against the shapes
  of the whole model.
  """
  model = vl_model.VLModel(vl_cfg)
  size = vl_cfg.image_size
  image = np.zeros((1, size, size, 3), np.float32)
  tokens = np.ones((1, 2), np.int32)
  init_image = jax.jit(lambda rng: model.init(rng, image, method=_encode_image)["params"])
  params = dict(jax.tree.map(np.asarray, jax.device_get(
      nn.meta.unbox(init_image(jax.random.PRNGKey(seed))))))
  params.update(tower)
  if resnet_params is not None:
    params["resnet"] = resnet_params
  want = jax.tree.map(lambda x: tuple(x.shape), nn.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), image, tokens, tokens)["params"])))
  have = jax.tree.map(np.shape, params)
  if want != have:
    raise CheckpointMismatchError(
        "imported params do not fit the model (a bug: the readers check every tensor): "
        f"{sorted(set(want) ^ set(have))}")
  return params


def import_checkpoint(fmt: str, path: str, out_dir: str, model: str | None = None,
                      visual: str | None = None, image_size: int | None = None,
                      vocabulary: str | None = None, input_length: int = 32,
                      target_length: int = 32, seed: int = 0,
                      overwrite: bool = False) -> dict[str, Any]:
  """Writes a dynpt export in `out_dir` from a T5 v1.1 checkpoint; returns its info.

  Args:
    fmt: 'hf' (config.json + model.safetensors) or 't5x' (a T5X checkpoint folder).
    path: the checkpoint folder.
    out_dir: where the export goes.
    model: the named size whose ResNet (and default image size) the model gets;
      default: the size whose T5 matches the checkpoint, else 'base'. T5 sizes that
      differ from the named size's are kept as `t5_overrides`.
    visual: 'bit:PATH' for a BiT .npz ResNet; None: fresh ResNet.
    image_size: default: the named size's.
    vocabulary: the sentencepiece model the checkpoint was trained with; default:
      the HF folder's spiece.model. Copied into the export.
    input_length, target_length: recorded for finetuning, as exports of runs do.
    seed: of the fresh init of everything not imported.
    overwrite: replace an export already in `out_dir` (else it is refused). The
      new export is written beside it and renamed into place once complete
      (`export.staged_dir`), so a failure half-way leaves the old one intact.

  Raises:
    FileNotFoundError, ValueError (CheckpointMismatchError): before writing anything.
    OSError (export.OutputExistsError): `out_dir` holds an export and not
      `overwrite`, or holds other files; before reading anything.
  """
  export.check_replaceable(out_dir, overwrite)
  checkpoints.checked_path(fs.absolute(out_dir))
  visual_path = None
  if visual:
    kind, _, visual_path = visual.partition(":")
    if kind != "bit" or not visual_path:
      raise ValueError(f"--visual={visual!r}: expected bit:PATH")
  # The BiT release is a pre-activation ResNet v2: the export's model builds that trunk.
  preactivation = bool(visual_path) and bit.is_release(visual_path)
  cfg, tower, step = read_text_tower(fmt, path)
  sizes = text_tower.t5_sizes(cfg)
  name = _model_name(model, sizes)
  named = configs.get_config(name)
  overrides = None if text_tower.t5_sizes(named.t5) == sizes else sizes
  vl_cfg = configs.get_config(name, vocab_size=cfg.vocab_size, image_size=image_size,
                              t5_overrides=overrides, resnet_preactivation=preactivation,
                              cpu_kernels=cpu_kernels.resolve("auto"))
  spm_path = _vocabulary(fmt, path, vocabulary)
  rows = None if spm_path is None else padded_vocab_size(spm_path)
  if rows is not None and rows != cfg.vocab_size:
    raise CheckpointMismatchError(
        f"{spm_path}: gives {rows} token rows (pieces + "
        f"{vocab_lib.EXTRA_IDS} extra ids, padded to 128) but the checkpoint's vocabulary has "
        f"{cfg.vocab_size}")
  resnet_params = None
  if visual_path:
    resnet_params = bit.read(visual_path, vl_cfg.resnet)
  else:
    logging.info("no --visual: the ResNet (%s) is freshly initialised",
                 f"depth {vl_cfg.resnet.depth}")
  logging.info("the visual projection, position tables and norm are freshly initialised")
  params = build_params(vl_cfg, tower, resnet_params, seed)

  vocabulary_path = None
  if spm_path is not None:  # Where the copy will be once the export is in place.
    vocabulary_path = fs.absolute(fs.join(out_dir, hf.SPM_FILE))
  else:
    logging.warning("no sentencepiece model given (--vocabulary): finetuning needs "
                    "VOCABULARY set to the one the checkpoint was trained with")
  info = {"source_format": fmt, "source_path": fs.absolute(path),
          "step": step if step is not None else 0, "model": name,
          "t5": sizes, "t5_overrides": overrides,
          "resnet_preactivation": preactivation, "vocab_size": cfg.vocab_size,
          "image_size": vl_cfg.image_size, "input_length": input_length,
          "target_length": target_length, "vocabulary_path": vocabulary_path,
          # None alone means "the toy vocabulary" in a run's export; here it is unknown.
          "vocabulary_recorded": vocabulary_path is not None,
          "visual": fs.absolute(visual_path) if visual_path else None}
  with export.staged_dir(out_dir, overwrite) as staging:
    if spm_path is not None:
      fs.copy(spm_path, fs.join(staging, hf.SPM_FILE))
    export.write_export(staging, params, info)
  logging.info("imported %s checkpoint %s to %s", fmt, path, out_dir)
  return info
