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

With --tpu=TYPE (a Cloud TPU accelerator type as `gcloud` names it: v4-32,
v5litepod-256, v5p-128, v6e-64, ...) it also compiles the train step, exactly
as the trainer builds it, with the TPU compiler (`libtpu`, pinned in
requirements-test.txt) for the devices that slice shows JAX (v4 and v5p: one
megacore device per chip), on this CPU-only host (`dynpt.train.aot`), and
prints per chip XLA's arguments, temporaries and total next to the chip's HBM
and the analytic estimate, the FLOPs of one step, the collectives of the
compiled step and the compile time. --devices defaults to the slice's chips and
--device_memory_gib to its HBM; the exit status is 1 when the compiled step does
not fit. The compile runs in a child process, started again (pinned to one CPU
core, up to --tpu_attempts times) when the TPU compiler crashes in it
(`dynpt.train.crash_retry`). A T5-base step compiles in about 5-8 minutes on a 2-core host:

  python tools/check_config.py --gin_file=pretrain/paper_base.gin \
      --gin_file=partitioning/base_fsdp.gin --tpu=v4-32
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import app, flags

# Defines --gin_file, --gin_bindings and --gin_search_paths, parsed as there.
from dynpt import console
from dynpt import main as dynpt_main
from dynpt.train import crash_retry

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
_TPU = flags.DEFINE_string(
    "tpu", None, "A Cloud TPU accelerator type (v4-32, v5litepod-256, v5p-128, "
    "v6e-64, ...): compile the train step for it with the TPU compiler.")
_TPU_ATTEMPTS = flags.DEFINE_integer(
    "tpu_attempts", 3, "With --tpu: how many times to start the compile when the TPU "
    "compiler crashes (libtpu's compiler crashes at random on some steps, e.g. for "
    "v6e); each retry runs in a fresh process pinned to one CPU core.", lower_bound=1)
_SAVE_HLO = flags.DEFINE_string(
    "save_hlo", None, "With --tpu: a local folder to write the step's HLO to: "
    "lowered.hlo.txt (before partitioning, with the activations' Sharding custom "
    "calls) and compiled.hlo.txt (one chip's program).")


def _vocab_size(vocabulary_path: str | None) -> int:
  from dynpt.models import configs
  from dynpt.data import vocab as vocab_lib
  from dynpt.train import model_setup

  if _VOCAB_SIZE.value:
    return _VOCAB_SIZE.value
  if vocabulary_path and "://" in vocabulary_path:
    return configs.T5_VOCAB_SIZE  # A remote T5 vocabulary is not downloaded.
  return model_setup.padded_vocab_size(vocab_lib.get_vocabulary(vocabulary_path))


def _frozen_patterns() -> tuple[str, ...]:
  """The run's `loop.train.frozen_patterns` (the FROZEN macro), if configured."""
  import gin

  try:
    value = gin.query_parameter("loop.train.frozen_patterns")
  except ValueError:
    return ()
  if isinstance(value, gin.config.ConfigurableReference):  # %FROZEN
    value = value.scoped_configurable_fn()
  return tuple(value or ())


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import gin

  from dynpt.train import aot, config, memory, model_setup, optim

  tpu = None
  if _TPU.value is not None:
    try:
      tpu = aot.tpu_slice(_TPU.value)
    except ValueError as e:
      sys.exit(f"error: --tpu: {e}")
  devices = _DEVICES.value or (tpu.chips if tpu else None)
  if not devices:
    raise app.UsageError("--devices (or --tpu) is required")
  if tpu and devices != tpu.chips:
    sys.exit(f"error: --devices={devices} but {tpu.name} has {tpu.chips} chips "
             "(one device per chip)")
  device_memory = _DEVICE_MEMORY.value or (tpu.hbm_gib if tpu else None)

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
  if devices % model_parallel:
    sys.exit(f"error: --model_parallel={model_parallel} does not divide "
             f"--devices={devices}")
  optimizer_cfg = gin.get_configurable(optim.OptimizerConfig)()
  if model_parallel != train_cfg.num_model_partitions:
    train_cfg = dataclasses.replace(train_cfg, num_model_partitions=model_parallel)
  try:
    config.validate_configs(train_cfg, data_cfg, optimizer_cfg, model_cfg)
    vocab_size = _vocab_size(data_cfg.vocabulary_path)
    tpu_devices = aot.slice_devices(tpu) if tpu else None
    vl_config = model_setup.model_config(
        model_cfg, vocab_size, data_cfg.image_size, tpu_devices)
    est = memory.estimate(
        vl_config, global_batch_size=train_cfg.global_batch_size,
        mesh_shape=(devices // model_parallel, model_parallel),
        partition_mode=train_cfg.partition_mode,
        input_length=data_cfg.input_length, target_length=data_cfg.target_length)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(f"model {model_cfg.name} ({vl_config.t5.dtype}, remat="
        f"{vl_config.t5.remat}), image {data_cfg.image_size} px, text "
        f"{data_cfg.input_length}+{data_cfg.target_length} tokens, global batch "
        f"{train_cfg.global_batch_size} on {devices} devices")
  print(est.table())
  if tpu:
    try:
      step = aot.compile_train_step(
          train_cfg, data_cfg, optimizer_cfg, model_cfg, devices=tpu_devices,
          vocab_size=vocab_size,
          num_tasks=len(model_setup.resolve_task_names(data_cfg.mixture)),
          frozen_patterns=_frozen_patterns())
    except ValueError as e:
      sys.exit(f"error: {e}")
    except aot.DoesNotFit as e:
      print(f"XLA (TPU compiler), {tpu.name} ({tpu.topology_name}): out of HBM after "
            f"{e.compile_seconds:.1f} s: {e.summary}")
      print(f"does NOT fit in {tpu.hbm_gib:g} GiB per chip")
      return 1
    print(aot.report(step, tpu, est.total))
    if _SAVE_HLO.value:
      os.makedirs(_SAVE_HLO.value, exist_ok=True)
      for name, text in (("lowered.hlo.txt", step.lowered.as_text(dialect="hlo")),
                         ("compiled.hlo.txt", step.compiled.as_text())):
        with open(os.path.join(_SAVE_HLO.value, name), "w") as f:
          f.write(text)
      print(f"HLO written to {_SAVE_HLO.value}")
    return 0 if aot.fits(step, tpu) else 1
  if device_memory:
    fits = est.total <= device_memory * 2 ** 30
    print(f"{'fits' if fits else 'does NOT fit'} in {device_memory:g} GiB "
          "per device")
    return 0 if fits else 1
  return 0


def _tpu_request(argv: list[str]) -> tuple[str, int] | None:
  """(--tpu, --tpu_attempts) of `argv`; None without --tpu or when `argv` does not
  parse (the in-process run then says what is wrong, or prints --help)."""
  try:
    FLAGS(argv)
    return (_TPU.value, _TPU_ATTEMPTS.value) if _TPU.value is not None else None
  except flags.Error:
    return None
  finally:
    FLAGS.unparse_flags()  # The run (parent or child) parses its flags itself.


def _compile_in_children(argv: list[str], tpu: str, attempts: int) -> int:
  """This tool again, in child processes that crash_retry restarts when the TPU
  compiler kills one (a segfault cannot be caught in the process it hits)."""
  from importlib import metadata

  try:
    libtpu = f"libtpu {metadata.version('libtpu')}"
  except metadata.PackageNotFoundError:
    libtpu = "libtpu"
  what = f"the TPU compiler ({libtpu}), compiling the step for {tpu},"
  return crash_retry.run_retrying([sys.executable, *argv], attempts, what)


def run() -> None:
  argv = dynpt_main.rewrite_gin_args(sys.argv)
  request = None if crash_retry.begin_attempt() else _tpu_request(argv)
  if request:
    sys.exit(_compile_in_children(sys.argv, *request))
  console.setup()  # Before JAX and libtpu load: their start-up chatter goes.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # Shapes only; no accelerator.
  console.run_app(lambda args: sys.exit(main(args)), argv=argv)


if __name__ == "__main__":
  run()
