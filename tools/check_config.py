r"""Prints the per-device memory of a gin-configured run before launching it.

Usage:
  python tools/check_config.py --gin_file=pretrain/paper_base.gin \
      [--gin_file=partitioning/base_fsdp.gin] [--gin.BATCH_SIZE=2048] \
      --devices=16 [--model_parallel=4] [--device_memory_gib=32]

Reads the same gin files as `dynpt.main` (RUN_DIR defaults to a dummy value;
nothing is written), then prints the mesh, the partitioning and a table of
GiB per device: params, gradients, optimizer state (exact, from
`jax.eval_shape`), activations (analytic estimate, see
`dynpt.train.memory`) and the input batch. With --device_memory_gib the last
line says whether it fits, and the exit status is 1 when it does not.
The model is never allocated, so T5-large on 64 chips checks in seconds.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

# Defines --gin_file, --gin_bindings and --gin_search_paths, parsed as there.
from dynpt import main as dynpt_main

FLAGS = flags.FLAGS
_DEVICES = flags.DEFINE_integer("devices", None, "Devices (chips) of the run.",
                                lower_bound=1)
_MODEL_PARALLEL = flags.DEFINE_integer(
    "model_parallel", None,
    "Size of the `model` mesh axis (default: TrainConfig.num_model_partitions).",
    lower_bound=1)
_VOCAB_SIZE = flags.DEFINE_integer(
    "vocab_size", None, "Padded vocabulary size (default: read the configured "
    "vocabulary if local, else T5's 32128).")
_DEVICE_MEMORY = flags.DEFINE_float(
    "device_memory_gib", None, "Memory of one device; say whether the run fits.")


def _vocab_size(vocabulary_path: str | None) -> int:
  from dynpt.models import configs
  from dynpt.data import vocab as vocab_lib
  from dynpt.train import model_setup

  if _VOCAB_SIZE.value:
    return _VOCAB_SIZE.value
  if vocabulary_path and "://" in vocabulary_path:
    return configs.T5_VOCAB_SIZE  # A remote T5 vocabulary is not downloaded.
  return model_setup.padded_vocab_size(vocab_lib.get_vocabulary(vocabulary_path))


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _DEVICES.value:
    raise app.UsageError("--devices is required")
  import gin

  from dynpt.train import config, memory, model_setup

  bindings = list(FLAGS.gin_bindings)
  if not any(b.replace(" ", "").startswith("RUN_DIR=") for b in bindings):
    bindings.insert(0, "RUN_DIR='/dev/null/check_config'")
  try:
    dynpt_main.parse_gin(FLAGS.gin_file, bindings, FLAGS.gin_search_paths)
  except ValueError as e:
    sys.exit(f"error: {e}")
  train_cfg = gin.get_configurable(config.TrainConfig)()
  data_cfg = gin.get_configurable(config.DataConfig)()
  model_cfg = gin.get_configurable(config.ModelConfig)()
  model_parallel = _MODEL_PARALLEL.value or train_cfg.num_model_partitions
  if _DEVICES.value % model_parallel:
    sys.exit(f"error: --model_parallel={model_parallel} does not divide "
             f"--devices={_DEVICES.value}")
  try:
    config.validate_configs(model_cfg)
    vl_config = model_setup.model_config(
        model_cfg, _vocab_size(data_cfg.vocabulary_path), data_cfg.image_size)
    est = memory.estimate(
        vl_config, global_batch_size=train_cfg.global_batch_size,
        mesh_shape=(_DEVICES.value // model_parallel, model_parallel),
        partition_mode=train_cfg.partition_mode,
        input_length=data_cfg.input_length, target_length=data_cfg.target_length)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(f"model {model_cfg.name} ({vl_config.t5.dtype}, remat="
        f"{vl_config.t5.remat}), image {data_cfg.image_size} px, text "
        f"{data_cfg.input_length}+{data_cfg.target_length} tokens, global batch "
        f"{train_cfg.global_batch_size} on {_DEVICES.value} devices")
  print(est.table())
  if _DEVICE_MEMORY.value:
    fits = est.total <= _DEVICE_MEMORY.value * 2 ** 30
    print(f"{'fits' if fits else 'does NOT fit'} in {_DEVICE_MEMORY.value:g} GiB "
          "per device")
    return 0 if fits else 1
  return 0


def run() -> None:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # Shapes only; no accelerator.
  app.run(lambda argv: sys.exit(main(argv)),
          argv=dynpt_main.rewrite_gin_args(sys.argv))


if __name__ == "__main__":
  run()
