r"""dynpt's entry point: gin-configured pretraining, finetuning, eval, export.

  python -m dynpt.main --gin_file=gin_configs/pretrain/toy_cpu.gin \
      --gin.RUN_DIR="'runs/demo'" --gin.config.TrainConfig.num_steps=200

Flags (t5x-style): `--gin_file` (repeatable), `--gin.NAME=VALUE` (repeatable,
rewritten to `--gin_bindings`), `--gin_search_paths`, `--mode`. The config is
parsed and checked before anything is built; a bad binding fails with gin's
message naming the configurable and parameter. The config that ran is
written to `<run_dir>/config.gin`.
"""

from __future__ import annotations

import os
import sys

# Keep TensorFlow (input pipeline only) off accelerators and quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from dynpt import hostalloc  # noqa: E402

MODES = ("pretrain", "finetune", "eval", "export")
ENV_CPU_COLLECTIVES = "DYNPT_CPU_COLLECTIVES"

_GIN_FILE = flags.DEFINE_multi_string("gin_file", [], "Gin config files.")
_GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "Gin bindings (`--gin.NAME=VALUE` is rewritten here).")
_GIN_SEARCH_PATHS = flags.DEFINE_list(
    "gin_search_paths", [], "Extra directories searched for gin includes.")
_MODE = flags.DEFINE_enum("mode", "pretrain", MODES, "What to run.")
_PLATFORM = flags.DEFINE_string(
    "platform", None, "Force a JAX platform (cpu, gpu, tpu); default: best.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "Multi-host: this process's index.")


def rewrite_gin_args(argv: list[str]) -> list[str]:
  """`--gin.NAME=VALUE` -> `--gin_bindings=NAME=VALUE` (t5x convention)."""
  out = []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      out.append("--gin_bindings=" + arg[len("--gin."):])
    else:
      out.append(arg)
  return out


def _default_search_paths() -> list[str]:
  here = os.path.dirname(os.path.abspath(__file__))
  return [os.getcwd(), os.path.join(os.path.dirname(here), "gin_configs")]


def _guard_gin_file_checks() -> None:
  """Makes gin's file-existence checks answer False instead of crashing.

  gin's Python-package lookup raises TypeError when the first directory of a
  relative include is also a plain directory on `sys.path`: `include
  'runs/pretrain.gin'` started from the repository root after the demo wrote
  `runs/demo` finds `runs` as a namespace package without a file. Such a path
  is treated as absent, so the search goes on to `gin_configs/`.
  """
  readers = gin.config._FILE_READERS  # No public API to wrap the checks.
  for i, (reader, exists) in enumerate(readers):
    if getattr(exists, "_dynpt_guarded", False):
      continue

    def guarded(path, _exists=exists):
      try:
        return _exists(path)
      except TypeError:
        return False

    guarded._dynpt_guarded = True
    readers[i] = (reader, guarded)


def parse_gin(gin_files, bindings, search_paths=()) -> None:
  """Parses and finalises the config; raises ValueError on any bad binding."""
  _guard_gin_file_checks()
  for path in list(search_paths) + _default_search_paths():
    gin.add_config_file_search_path(path)
  # Modules whose functions/dataclasses the gin files bind.
  import dynpt.train.config  # noqa: F401
  import dynpt.train.loop  # noqa: F401
  import dynpt.train.optim  # noqa: F401
  import dynpt.train.export  # noqa: F401
  import dynpt.train.evaluate  # noqa: F401
  import dynpt.train.finetune  # noqa: F401
  try:
    gin.parse_config_files_and_bindings(gin_files, bindings,
                                        finalize_config=True)
  except (ValueError, IOError, TypeError, NameError) as e:
    raise ValueError(f"bad gin configuration: {e}") from e


def write_config(run_dir: str) -> str:
  os.makedirs(run_dir, exist_ok=True)
  path = os.path.join(run_dir, "config.gin")
  with open(path, "w") as f:
    f.write(gin.config_str())
  return path


def run_mode(mode: str):
  """Calls the gin-configured function of `mode`; returns its result."""
  from dynpt.train import evaluate, export, finetune, loop

  fn = {"pretrain": loop.train, "finetune": finetune.finetune,
        "eval": evaluate.evaluate, "export": export.export}[mode]
  return gin.get_configurable(fn)()


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax

  if _PLATFORM.value:
    jax.config.update("jax_platforms", _PLATFORM.value)
  # Multi-process CPU runs (tests, CPU clusters) need a cross-process
  # collectives backend chosen before the backend starts: gloo or mpi.
  if os.environ.get(ENV_CPU_COLLECTIVES):
    jax.config.update("jax_cpu_collectives_implementation",
                      os.environ[ENV_CPU_COLLECTIVES])
  from dynpt.train import distributed

  distributed.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                     _PROCESS_ID.value)
  try:
    parse_gin(_GIN_FILE.value, _GIN_BINDINGS.value, _GIN_SEARCH_PATHS.value)
  except ValueError as e:
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  run_dir = gin.query_parameter("%RUN_DIR") if _has_macro("RUN_DIR") else None
  if run_dir and jax.process_index() == 0:
    logging.info("config written to %s", write_config(run_dir))
  try:
    result = run_mode(_MODE.value)
  except (ValueError, FileNotFoundError) as e:
    logging.exception("%s failed", _MODE.value)
    sys.exit(f"error: {e}")
  logging.info("%s finished: %s", _MODE.value, result)


def _has_macro(name: str) -> bool:
  try:
    gin.query_parameter(f"%{name}")
    return True
  except ValueError:
    return False


def run():
  """Console-script entry point (`dynpt --gin_file=...`)."""
  hostalloc.reexec_with_tuned_allocator()
  app.run(main, argv=rewrite_gin_args(sys.argv))


if __name__ == "__main__":
  run()
