"""The console a person reads (dynpt.console): a quiet start-up, one line per log
step, each error once, progress lines off a terminal, every tool's --help."""

from __future__ import annotations

import ast
import glob
import io
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from dynpt import console

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = sorted(p for p in glob.glob(os.path.join(ROOT, "tools", "*.py"))
               if not p.endswith("__init__.py"))
# What TensorFlow, XLA, CUDA, libtpu, seqio and orbax print when nobody silences them.
CHATTER = re.compile(r"cudart_stub|cuInit|cuda_|absl::InitializeLog|InitGoogle|"
                     r"cpu_feature_guard|host bounds|Length validation|orbax|"
                     r"checkpoint_manager|logging_writer|Unable to initialize backend")


def _env(**extra) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k != console.ENV_VERBOSE}
  return dict(env, PYTHONPATH=ROOT, **extra)


def _main(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "dynpt.main", *args], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def toy_run(toy_data_dir, tmp_path_factory):
  """A 3-step toy pretraining run on the CPU, started as a user starts it."""
  run_dir = tmp_path_factory.mktemp("console_run")
  proc = _main("--gin_file=pretrain/toy_cpu.gin", f"--gin.RUN_DIR='{run_dir}'",
               f"--gin.DATA_DIR='{toy_data_dir}'", "--gin.MIXTURE='cc3m_cap,ln_mlm'",
               "--gin.NUM_STEPS=3", "--gin.BATCH_SIZE=12", "--gin.IMAGE_SIZE=32",
               "--gin.TARGET_LENGTH=16", "--gin.config.TrainConfig.log_every=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_a_toy_run_writes_a_short_readable_console(toy_run):
  lines = toy_run.stderr.splitlines()
  assert 0 < len(lines) <= 40, toy_run.stderr
  assert max(len(line) for line in lines) <= 300, toy_run.stderr
  assert not [line for line in lines if CHATTER.search(line)], toy_run.stderr
  assert "\r" not in toy_run.stderr  # No progress-bar frames in a pipe or log file.
  steps = [line for line in lines if re.search(r"\] step \d/3: loss \d", line)]
  assert len(steps) == 3, toy_run.stderr
  assert "examples/s" in steps[-1] and "2 tasks, 0.500 each" in steps[-1]
  assert "ETA" in steps[1]
  closing = [line for line in lines if "pretrain finished: steps 0 -> 3" in line]
  assert len(closing) == 1 and "final loss" in closing[0], toy_run.stderr


@pytest.mark.parametrize("verbosity", [None, "--verbosity=1"])
def test_a_misspelt_macro_is_one_error_line(tmp_path, verbosity):
  proc = _main("--gin_file=pretrain/toy_cpu.gin", f"--gin.RUN_DIR='{tmp_path}'",
               "--gin.NUM_STEP=2", *([verbosity] if verbosity else []), timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  naming = [line for line in proc.stderr.splitlines() if "NUM_STEP" in line]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "NUM_STEP=" in errors[0], proc.stderr[-3000:]
  if verbosity:  # The traceback behind it, and the libraries' lines, come back.
    assert "Traceback" in proc.stderr
  else:
    assert naming == errors == proc.stderr.strip().splitlines(), proc.stderr


@pytest.mark.parametrize("tool", TOOLS, ids=os.path.basename)
def test_every_tool_help_exits_0_and_reads_as_written(tool):
  doc = ast.get_docstring(ast.parse(open(tool).read()), clean=False) or ""
  # absl formats the docstring with `%` (argv[0] for each specifier): keep none.
  assert doc.count("%") == 2 * doc.count("%%"), f"a bare % in {tool}'s docstring"
  proc = subprocess.run([sys.executable, tool, "--help"], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  first = " ".join(doc.strip().splitlines()[0].split())  # argparse re-wraps it.
  assert first in " ".join(proc.stdout.split())
  assert repr(tool) not in proc.stdout and not proc.stderr.strip(), proc.stderr


def test_library_records_are_dropped_and_dynpt_records_kept(monkeypatch):
  monkeypatch.delenv(console.ENV_VERBOSE, raising=False)
  monkeypatch.setattr(console, "_argv_verbosity", lambda argv: 0)
  chatter = console._LibraryChatter()

  def record(path, level, msg):
    return logging.LogRecord("absl", level, path, 1, msg, None, None)

  lib = "/venv/site-packages/seqio/feature_converters.py"
  own = os.path.join(ROOT, "dynpt", "train", "hooks.py")
  assert not chatter.filter(record(lib, logging.INFO, "Length validation is skipped"))
  assert chatter.filter(record(own, logging.INFO, "step 1/3: loss 6.1"))
  assert chatter.filter(record(lib, logging.WARNING, "a damaged record"))
  assert not chatter.filter(record(lib, logging.WARNING, 'Item "mixer" was found in the '
                                   "checkpoint, but could not be restored. Please provide"))
  monkeypatch.setenv(console.ENV_VERBOSE, "1")
  assert chatter.filter(record(lib, logging.INFO, "Length validation is skipped"))


def test_the_native_filter_drops_start_up_chatter_only():
  chatter = (b"WARNING: All log messages before absl::InitializeLog() is called are written"
             b" to STDERR\n"
             b"I0000 00:00:1796594202.533685    8606 cudart_stub.cc:31] Could not find cuda\n"
             b"E0000 00:00:1796594207.404352    8606 cuda_platform.cc:52] failed call to cuInit\n"
             b"E0000 00:00:1.2  8606 common_lib.cc:554] INVALID_ARGUMENT: unexpected worker "
             b"hostname 'WARNING: could not determine TPU worker hostnames'\n"
             b"=== Source Location Trace: === \nlearning/tfrc/runtime/libtpu_init_utils.cc:327\n")
  kept = (b"E0000 00:00:1.2   8606 cuda_dnn.cc:52] Could not create cudnn handle\n"
          b"F0000 00:00:1.2 8606 x.cc:1] Check failed\nCompiled step 1\nproceed (Y/n)? ")
  proc = subprocess.run([sys.executable, "-I", "-S", "-c", console._NATIVE_FILTER],
                        input=chatter + kept, capture_output=True, timeout=60)
  assert proc.stdout == kept


def test_verbosity_is_read_from_the_command_line():
  assert console._argv_verbosity(["x", "--verbosity=1"]) == 1
  assert console._argv_verbosity(["x", "-v", "2"]) == 2
  assert console._argv_verbosity(["x", "--verbosity=debug"]) == 1
  assert console._argv_verbosity(["x", "--gin.NUM_STEPS=3"]) == 0


def test_progress_off_a_terminal_writes_lines_not_frames():
  out = io.StringIO()
  with console.progress(total=4, desc="toy world", unit="rec", file=out,
                        every_s=0) as bar:
    for _ in range(4):
      bar.update(1)
  lines = out.getvalue().splitlines()
  assert "\r" not in out.getvalue() and len(lines) == 5
  assert lines[-1].startswith("toy world: 4/4 rec")
  assert list(console.progress(range(3), file=io.StringIO(), every_s=None)) == [0, 1, 2]


def test_a_log_step_line_names_the_mixture_ends():
  from dynpt.train import hooks
  from dynpt.train.config import TrainConfig

  hook = hooks.LoggingHook(None, ["cc3m_cap", "oi_exists", "vg_mlm"],
                           TrainConfig(num_steps=300))
  hook._first_step = (100.0, 1)
  line = hook.console_line(21, 5.12345, 96.04, np.array([0.5, 0.2, 0.3]), now=120.0)
  assert line == ("step 21/300: loss 5.1235, 96.0 examples/s, ETA 4m39s; largest share "
                  "cc3m_cap 0.500, smallest oi_exists 0.200")
