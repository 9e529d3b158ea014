r"""dynpt's entry point: gin-configured pretraining, finetuning, eval, export.

  python -m dynpt.main --gin_file=gin_configs/pretrain/toy_cpu.gin \
      --gin.RUN_DIR="'runs/demo'" --gin.config.TrainConfig.num_steps=200

Flags (t5x-style): `--gin_file` (repeatable), `--gin.NAME=VALUE` (repeatable,
rewritten to `--gin_bindings`), `--gin_search_paths`, `--mode`. The config is
parsed and checked before anything is built; a bad binding fails with gin's
message naming the configurable and parameter, and a `--gin.NAME=` binding of
a macro that no config references (a typo such as `--gin.NUM_STEP=2`) is
refused. The config that ran is written to `<run_dir>/config.gin` once the
run holds its directory (pretrain and finetune, which lock it for the whole
run: `dynpt.train.session.claimed_run_dir`); eval and export write it only
where there is none.

Exit codes (docs/troubleshooting.md): 0 finished; 1 a mistake the user can
fix, reported as one `error:` line naming the file, task or key; 3 the run
diverged (NaN/inf; the message names the checkpoint kept); 75 (EX_TEMPFAIL)
preempted: SIGTERM arrived (on any host; every host saved the same step),
run it again to resume.
Any other failure is a bug and prints a traceback.

The console is quiet (`dynpt.console`): one line per log step, a few closing
lines, no library start-up chatter; `--verbosity=1` or `DYNPT_VERBOSE=1`
shows everything, the traceback behind an `error:` line included.
"""

from __future__ import annotations

import difflib
import logging as std_logging
import os
import re
import sys

import gin
from absl import app, flags, logging

from dynpt import console, fs, hostalloc

MODES = ("pretrain", "finetune", "eval", "export")
LOCKED_MODES = ("pretrain", "finetune")  # Modes that lock and write the run directory.
EXIT_ERROR = 1
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "try again later".
# gin appends "In call to configurable 'train' (<function train at 0x...>)" to
# errors raised inside a configurable; the key is already in the message.
_GIN_CALL_NOTE = re.compile(r"\s*In call to configurable '[^']*' \(<[^>]*>\)")
_MACRO_BINDING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")
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
      # gin's package-resource check logs "Path not found" at ERROR for every
      # search path it tries before `gin_configs/`; a miss there is no error.
      previous = std_logging.root.manager.disable
      std_logging.disable(std_logging.ERROR)
      try:
        return _exists(path)
      except TypeError:
        return False
      finally:
        std_logging.disable(previous)

    guarded._dynpt_guarded = True
    readers[i] = (reader, guarded)


# Modules that moved, by their old dotted paths: a run directory's `config.gin`
# written before the move (read again by export and by a resumed run) imports them.
_MOVED_MODULES = {
    "dynpt.train.finetune": "dynpt.downstream.finetune",
    "dynpt.train.evaluate": "dynpt.downstream.teacher_forced",
}


def _alias_moved_modules() -> None:
  """Makes each old module path import its new module (for gin's `import` lines)."""
  import importlib

  for old, new in _MOVED_MODULES.items():
    module = importlib.import_module(new)
    sys.modules.setdefault(old, module)
    parent, _, leaf = old.rpartition(".")
    if not hasattr(sys.modules[parent], leaf):
      setattr(sys.modules[parent], leaf, module)


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
  import dynpt.train.init_params  # noqa: F401
  import dynpt.downstream.teacher_forced  # noqa: F401
  import dynpt.downstream.finetune  # noqa: F401
  _alias_moved_modules()
  try:
    gin.parse_config_files_and_bindings(gin_files, bindings,
                                        finalize_config=True)
  except (ValueError, IOError, TypeError, NameError) as e:
    raise ValueError(f"bad gin configuration: {e}") from e
  check_macro_bindings(bindings)


def _referenced_macros(value, found: set[str]) -> set[str]:
  """Names of the macros (`%NAME`) that `value` refers to, added to `found`."""
  if isinstance(value, gin.config.ConfigurableReference):
    if value.selector == "gin.macro":
      found.add(value.scoped_selector.rsplit("/", 1)[0])
  elif isinstance(value, dict):
    for v in value.values():
      _referenced_macros(v, found)
  elif isinstance(value, (list, tuple)):
    for v in value:
      _referenced_macros(v, found)
  return found


def check_macro_bindings(bindings) -> None:
  """Refuses a `NAME=VALUE` binding of a macro that no config references.

  Such a binding is a typo (`NUM_STEP=2` for `NUM_STEPS`): gin accepts it as
  a new macro, and the run silently uses the default.

  Raises:
    ValueError: naming the binding and the closest referenced macros.
  """
  referenced: set[str] = set()
  for params in gin.config._CONFIG.values():  # No public API lists them.
    _referenced_macros(params, referenced)
  for binding in bindings:
    for line in str(binding).splitlines():
      match = _MACRO_BINDING.match(line)
      if match and match.group(1) not in referenced:
        name = match.group(1)
        close = difflib.get_close_matches(name, sorted(referenced), n=3)
        hint = (f"; did you mean {', '.join(close)}?" if close else
                f"; macros in use: {', '.join(sorted(referenced))}")
        raise ValueError(f"--gin.{name}=...: no config uses the macro "
                         f"%{name}, so the binding would do nothing{hint}")


def write_config(run_dir: str) -> str:
  """Writes the config that runs to `<run_dir>/config.gin` (a local folder or a
  bucket, `dynpt.fs`); returns its path."""
  path = fs.join(run_dir, "config.gin")
  fs.write_text(path, gin.config_str())
  return path


def run_mode(mode: str):
  """Calls the gin-configured function of `mode`; returns its result.

  Pretraining and finetuning lock the run directory for the whole run and,
  once they hold it, the chief writes the config to `<run_dir>/config.gin`
  (`write_config`): a run refused for a directory in use leaves its config.
  """
  from dynpt.downstream import finetune, teacher_forced
  from dynpt.train import export, loop

  fn = {"pretrain": loop.train, "finetune": finetune.finetune,
        "eval": teacher_forced.evaluate, "export": export.export}[mode]
  if mode in LOCKED_MODES:
    return gin.get_configurable(fn)(on_claimed=_write_config_on_chief)
  return gin.get_configurable(fn)()


def _write_config_on_chief(run_dir: str) -> None:
  import jax

  if jax.process_index() == 0:
    logging.info("config written to %s", write_config(run_dir))


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

  try:
    distributed.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                       _PROCESS_ID.value)
    parse_gin(_GIN_FILE.value, _GIN_BINDINGS.value, _GIN_SEARCH_PATHS.value)
  except ValueError as e:
    _exit_with_error(e)
  run_dir = gin.query_parameter("%RUN_DIR") if _has_macro("RUN_DIR") else None
  try:
    if (run_dir and _MODE.value not in LOCKED_MODES and jax.process_index() == 0
        and not _has_config(run_dir)):
      # eval/export keep the trainer's config.gin (a trainer may be running).
      logging.info("config written to %s", write_config(run_dir))
    result = run_mode(_MODE.value)
  except Exception as e:  # pylint: disable=broad-except
    code = exit_code_for(e)
    if code is None:
      raise  # A bug: the traceback is what helps.
    _exit_with_error(e, code)
  if jax.process_index() == 0:
    for line in summary_lines(_MODE.value, result):
      logging.info("%s", line)
  if isinstance(result, dict) and result.get("preempted"):
    logging.warning("preempted: checkpoint of step %s saved; exiting with %d "
                    "so that a wrapper restarts the run", result.get("end_step"),
                    EXIT_PREEMPTED)
    sys.exit(EXIT_PREEMPTED)


def summary_lines(mode: str, result) -> list[str]:
  """The few lines that close a run on the console; the details are in the files."""
  if not isinstance(result, dict):
    return [f"{mode} finished: {result}"[:300]]
  if "end_step" in result:  # pretrain, finetune
    steady = result.get("steady_examples_per_s")
    rate = (f"{steady:.3g} examples/s after the first step, which compiles" if steady
            else f"{result.get('examples_per_s', 0):.3g} examples/s")
    loss = result.get("final_loss")
    lines = [f"{mode} finished: steps {result['start_step']} -> {result['end_step']} in "
             f"{console.format_seconds(result.get('seconds', 0))} ({rate})"
             + (f", final loss {loss:.4f}" if loss is not None else "")]
    if result.get("eval"):
      lines.append(f"eval at step {result['eval'].get('step')}: score "
                   f"{result['eval'].get('score', float('nan')):.2f} (best "
                   f"{result.get('best') or float('nan'):.2f}, params in best/)")
    if result.get("skipped_records"):
      lines.append(f"skipped {result['skipped_records']} damaged records "
                   "(by task in train_summary.json)")
    run_dir = result.get("run_dir")
    if run_dir:
      lines.append(f"run dir {run_dir}: checkpoints/, tensorboard/, "
                   "mixture_history.jsonl, train_summary.json (per-task losses, shares)")
    return lines
  if "mean_loss" in result:  # eval
    return [f"eval finished: step {result.get('step')}, {result.get('split')} split, "
            f"mean loss {result['mean_loss']:.4f} over {len(result.get('tasks', {}))} "
            f"tasks (per task in eval_{result.get('split')}.json)"]
  if "out_dir" in result:  # export
    return [f"export finished: step {result.get('step')} in {result['out_dir']}"]
  items = ", ".join(f"{k}={v}" for k, v in result.items()
                    if isinstance(v, (int, float, str, type(None))))
  return [f"{mode} finished: {items}"[:300]]


def _has_config(run_dir: str) -> bool:
  return fs.exists(fs.join(run_dir, "config.gin"))


def exit_code_for(error: BaseException) -> int | None:
  """The exit code of an error a user can cause or fix; None for a bug.

  Users cause: bad config values and names (ValueError, including gin's and
  `ConfigError`), missing or unwritable files (OSError), a run directory in
  use, and divergence. Everything else is a bug in dynpt.
  """
  from dynpt.train import loop, run_lock

  if isinstance(error, loop.TrainingDivergedError):
    return EXIT_DIVERGED
  if isinstance(error, (ValueError, OSError, run_lock.RunDirInUseError)):
    return EXIT_ERROR
  return None


def _exit_with_error(error: BaseException, code: int = EXIT_ERROR) -> None:
  """Prints one `error:` line to stderr and exits with `code`.

  The traceback goes to the debug log only (`--verbosity=1` shows it).
  """
  message = _GIN_CALL_NOTE.sub("", " ".join(str(error).split())).strip()
  logging.debug("traceback of the error below", exc_info=error)
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _has_macro(name: str) -> bool:
  try:
    gin.query_parameter(f"%{name}")
    return True
  except ValueError:
    return False


def run():
  """Console-script entry point (`dynpt --gin_file=...`)."""
  console.setup()  # Before TensorFlow and JAX load (dynpt.console).
  hostalloc.configure_process()
  console.run_app(main, argv=rewrite_gin_args(sys.argv))


if __name__ == "__main__":
  run()
