r"""What a person sees on the console: a quiet start-up, progress, help that exits 0.

Every entry point (`dynpt.main`, `tools/*.py`, the study's cell worker) calls
`setup()` first, before TensorFlow, JAX, seqio, orbax or Beam load:

    from dynpt import console
    console.setup(__name__)  # A no-op unless this module is __main__.

and starts through `console.run_app(main)` instead of `absl.app.run(main)`.

Quiet by default: what these libraries print at start-up or at every step
says nothing about the run, so it is dropped:

* C++ logging (TensorFlow's and XLA's absl/glog lines: "Could not find cuda
  drivers", the `cuInit` error every CPU host prints, libtpu's attempt to find
  a TPU on a host without one, their "Logging before InitGoogle()" notices).
  `TF_CPP_MIN_LOG_LEVEL=2` does not reach all of it, so the process's file
  descriptor 2 is a pipe into a small filter process, which passes on every
  line except these (errors and fatal messages of the C++ code pass);
  Python's `sys.stderr` keeps writing straight to the terminal or log file.
* Python logging below WARNING from the libraries (seqio's "Length validation
  is skipped", orbax's per-file progress, jax's backend probing); dynpt's own
  INFO lines stay. Library warnings stay too, except a few that are expected:
  orbax's "Item ... was found in the checkpoint, but could not be restored"
  for the items that export and evaluation leave to dynpt and its notes on
  the checkpoints they open read-only, and Beam's notices of optional Google
  Cloud clients that are not installed.

`--verbosity=1` (absl's flag; `-v 1`) or the environment variable
`DYNPT_VERBOSE=1` brings all of it back, and shows the traceback behind an
`error:` line. Warnings that concern the run (a damaged record, a checkpoint
fallback, a preemption) are dynpt's own and always shown.

Progress: `progress()` draws a tqdm bar only when the stream is a terminal;
in a log file it writes a plain line every `every_s` seconds instead of
carriage-return frames. While a bar is drawn, log lines go above it.
"""

from __future__ import annotations

import io
import logging as std_logging
import os
import re
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Sequence

ENV_VERBOSE = "DYNPT_VERBOSE"
_OWN_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d) + os.sep
    for d in ("dynpt", "tools", "tasks", "bench"))
# Library warnings that are expected where dynpt meets them: orbax on the items
# that export and evaluation leave unread and on the checkpoints they open read-only;
# Beam on optional Google Cloud clients.
_EXPECTED_WARNINGS = re.compile(
    r'Item "(mixer|data|metrics)" was found in the checkpoint, but could not be restored'
    r"|CheckpointManagerOptions.read_only=True|Given directory is read only"
    r"|(apitools|bigquery|google-cloud|gcp|GCP|Google Cloud).*(not installed|not found"
    r"|are not available|unavailable|No module named)")
_HELP_FLAGS = ("--help", "-help", "-?", "--helpshort", "-helpshort", "--helpfull",
               "-helpfull", "--helpxml", "-helpxml")
_state: dict[str, Any] = {}
_OWN_PATHS: dict[str, bool] = {}  # Source file -> whether it is dynpt's (a cache).

# The filter process behind file descriptor 2: drops C++ start-up chatter, passes
# everything else (also partial lines, such as a prompt, as soon as they come).
_NATIVE_FILTER = r"""
import os, re, signal
signal.signal(signal.SIGINT, signal.SIG_IGN)   # Outlive the run's Ctrl-C / SIGTERM,
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so its last lines still come through.
DROP = re.compile(
    rb"[IW]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+\.(cc|h):\d+\] "  # C++ INFO, WARNING
    rb"|E\d{4} [\d:.]+ +\d+ cuda_\w+\.cc:\d+\] failed call to cuInit"  # No GPU here.
    rb"|E\d{4} [\d:.]+ +\d+ common_lib\.cc:\d+\] .*could not determine TPU"  # No TPU.
    rb"|E\d{4} [\d:.]+ +\d+ slow_operation_alarm\.cc:\d+\] "  # "Very slow compile?"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|WARNING: Logging before InitGoogle\(\)"
    rb"|Failed to find host bounds for accelerator type"
    rb"|To enable the following instructions: .* rebuild TensorFlow"
    rb"|=== Source Location Trace: ===")
# What follows a dropped line and belongs to it: a source trace's frames, the
# box of XLA's "Very slow compile?" note.
TRACE = re.compile(rb"[\w./-]+\.(cc|h):\d+\s*$|\**\s*$|\[Compiling module .*\]")
MAYBE = re.compile(rb"([IWEF]\d{0,4}( |$)|WARNING|Failed to|To enable|===|\*|\[Compiling)")
out, buf, in_trace = 1, b"", False
while True:
    try:
        data = os.read(0, 65536)
    except InterruptedError:
        continue
    if not data:
        break
    lines = (buf + data).split(b"\n")
    buf = lines.pop()
    keep = []
    for line in lines:
        if DROP.match(line):
            in_trace = True
        elif in_trace and TRACE.match(line):
            pass
        else:
            in_trace = False
            keep.append(line + b"\n")
    if buf and not MAYBE.match(buf):
        keep.append(buf)
        buf = b""
    if keep:
        try:
            os.write(out, b"".join(keep))
        except OSError:
            pass
if buf and not DROP.match(buf):
    os.write(out, buf)
"""


def verbose() -> bool:
  """True when the user asked for everything: DYNPT_VERBOSE=1 or --verbosity >= 1."""
  if os.environ.get(ENV_VERBOSE, "").strip().lower() not in ("", "0", "false", "no"):
    return True
  from absl import flags, logging

  if flags.FLAGS.is_parsed():
    return logging.get_verbosity() >= 1
  return _argv_verbosity(sys.argv) >= 1


def _argv_verbosity(argv: Sequence[str]) -> int:
  """absl's --verbosity/-v from the command line, before absl parses it (0 if absent)."""
  names = {"debug": 1, "info": 0, "warning": -1, "warn": -1, "error": -2, "fatal": -3}
  value = None
  for i, arg in enumerate(argv[1:], 1):
    for flag in ("--verbosity", "-verbosity", "--v", "-v"):
      if arg.startswith(flag + "="):
        value = arg[len(flag) + 1:]
      elif arg == flag and i + 1 < len(argv):
        value = argv[i + 1]
  if value is None:
    return 0
  value = value.strip().lower()
  try:
    return int(value)
  except ValueError:
    return names.get(value, 0)


def setup(name: str = "__main__", *, native: bool = True) -> None:
  """Quiets library chatter for this process (see the module docstring).

  Args:
    name: the caller's `__name__`; nothing happens unless it is "__main__"
      (a tool imported by a test or another tool leaves its host alone).
    native: also filter what C++ code writes to file descriptor 2 (for tools
      that load TensorFlow, JAX or Beam; one that only runs other programs,
      such as gcloud, keeps their terminal).
  """
  if name != "__main__" or _state.get("done"):
    return
  _state["done"] = True
  quiet = not verbose()
  if quiet:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
  from absl import logging

  handler = logging.get_absl_handler()
  handler.addFilter(_LibraryChatter())
  if quiet and native:
    _filter_native_stderr()
    handler.python_handler.stream = sys.stderr


class _LibraryChatter(std_logging.Filter):
  """Drops the libraries' INFO/DEBUG records and their expected warnings."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if _own(record.pathname) or verbose():
      return True
    if record.levelno < std_logging.WARNING:
      return False
    return not _EXPECTED_WARNINGS.search(record.getMessage())


def _own(path: str) -> bool:
  """Whether `path` (a log record's source file) is dynpt's, not a library's."""
  own = _OWN_PATHS.get(path)
  if own is None:
    own = _OWN_PATHS[path] = os.path.abspath(path).startswith(_OWN_DIRS)
  return own


def _filter_native_stderr() -> None:
  """Points fd 2 at a pipe into the filter process; `sys.stderr` keeps the real one."""
  try:
    sys.stderr.flush()
    real = os.dup(2)
    read, write = os.pipe()
    subprocess.Popen([sys.executable, "-I", "-S", "-c", _NATIVE_FILTER], stdin=read,
                     stdout=real, stderr=real, close_fds=True)
  except OSError:
    return  # No filter (no fds or processes to spare): the chatter shows, nothing breaks.
  os.close(read)
  os.dup2(write, 2)
  os.close(write)
  os.set_inheritable(real, False)
  sys.stderr = io.TextIOWrapper(io.FileIO(real, "w"), encoding=sys.stderr.encoding,
                                errors="backslashreplace", line_buffering=True,
                                write_through=True)


def run_app(main: Callable[[list[str]], Any], argv: list[str] | None = None,
            flags_parser: Callable[[list[str]], Any] | None = None) -> None:
  """`absl.app.run`, except that --help (and --helpfull) exit 0 after the usage."""
  from absl import app

  def parse(args):
    try:
      return flags_parser(args) if flags_parser else app.parse_flags_with_usage(args)
    except SystemExit as e:
      if e.code == 1 and any(a in _HELP_FLAGS for a in args[1:]):
        raise SystemExit(0) from None
      raise

  app.run(main, argv=argv, flags_parser=parse)


def progress(iterable: Iterable | None = None, *, total: int | None = None,
             desc: str = "", unit: str = "it", initial: int = 0, enabled: bool = True,
             file=None, every_s: float | None = 30.0):
  """A tqdm bar on a terminal; elsewhere a `desc: n/total unit` line every `every_s`.

  Returns an object with tqdm's `update`, `set_postfix_str`, `set_postfix`,
  `close`, context-manager and iteration (over `iterable`) behaviour.
  `every_s=None` writes no lines off a terminal (the caller logs its own).
  """
  file = file if file is not None else sys.stderr
  if enabled and _isatty(file):
    return _TerminalBar(iterable, total=total, desc=desc, unit=unit, initial=initial,
                        file=file, dynamic_ncols=True)
  return _LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial,
                       file=file, every_s=every_s if enabled else None)


def _isatty(stream) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError, OSError):
    return False


_BAR_CLASS: list = []


def _TerminalBar(*args, **kwargs):  # pylint: disable=invalid-name
  """tqdm, with the absl log lines written above the bar while it is shown."""
  if not _BAR_CLASS:
    import tqdm

    class Bar(tqdm.tqdm):  # pylint: disable=missing-class-docstring
      def __init__(self, *a, **kw):
        self._restore_logs = None
        super().__init__(*a, **kw)
        self._restore_logs = _logs_above(self)

      def close(self):
        try:
          super().close()
        finally:
          restore, self._restore_logs = self._restore_logs, None
          if restore:
            restore()

    _BAR_CLASS.append(Bar)
  return _BAR_CLASS[0](*args, **kwargs)


def _logs_above(bar) -> Callable[[], None]:
  """Routes the absl handler's lines through `tqdm.write` until the returned call."""
  from absl import logging

  handler = logging.get_absl_handler().python_handler
  stream = handler.stream

  class _AboveBar(io.TextIOBase):
    def write(self, s: str) -> int:
      bar.write(s.rstrip("\n"), file=bar.fp)
      return len(s)

    def flush(self) -> None:
      stream.flush()

  handler.stream = _AboveBar()

  def restore() -> None:
    handler.stream = stream

  return restore


class _LineProgress:
  """Off a terminal: a line every `every_s` seconds and one at the end (no '\\r')."""

  def __init__(self, iterable=None, *, total=None, desc="", unit="it", initial=0,
               file=None, every_s=30.0):
    self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
    self.n, self.file, self.every_s = initial, file, every_s
    self.postfix = ""
    self._start = self._last = time.time()
    self._n0 = initial
    self._closed = False
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
      self.total = len(iterable)

  def __iter__(self):
    try:
      for item in self.iterable:
        yield item
        self.update(1)
    finally:
      self.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def update(self, n: int = 1) -> None:
    self.n += n
    if self.every_s is not None and time.time() - self._last >= self.every_s:
      self._line()

  def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
    del refresh
    self.postfix = s

  def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
    del refresh
    items = dict(ordered_dict or {}, **kwargs)
    self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

  def write(self, s: str, file=None) -> None:
    print(s, file=file or self.file, flush=True)

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      if self.every_s is not None and self.n > self._n0:
        self._line()

  def _line(self) -> None:
    now = time.time()
    self._last = now
    rate = (self.n - self._n0) / max(now - self._start, 1e-9)
    done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
    eta = ""
    if self.total and rate > 0 and self.n < self.total:
      eta = f", ETA {format_seconds((self.total - self.n) / rate)}"
    extra = f" ({self.postfix})" if self.postfix else ""
    print(f"{self.desc}: {done} {self.unit}, {rate:.3g} {self.unit}/s{eta}{extra}",
          file=self.file, flush=True)


def format_seconds(seconds: float) -> str:
  """3725 -> '1h02m', 125 -> '2m05s', 7.2 -> '7s'."""
  seconds = max(0, int(round(seconds)))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  if seconds >= 60:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds}s"
