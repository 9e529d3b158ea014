"""Runs a command that may die of a crash in native code, again in a fresh process.

libtpu's compiler can crash at random on the same program: compiling dynpt's
ResNet step for a v6e slice (libtpu 0.0.42) segfaults in some runs and not in
others, and less often with one CPU core than with two (docs/scaling.md). A
segfault takes the whole process with it, so `tools/check_config.py --tpu`
compiles in a child process (this tool run again, with `ATTEMPT_ENV` set) and
starts a new one when the last died of a signal, which pins itself to one CPU
core (`begin_attempt`). The user sees the child's output once (a rerun's
repeated lines are not printed again), a `warning:` line per crash, and, when
every attempt crashed, one `error:` line naming the log that holds the last
crash's dump.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Sequence, TextIO

ATTEMPT_ENV = "DYNPT_CRASH_RETRY_ATTEMPT"  # Set in the child: which attempt it is.
_CRASH_START = "Fatal Python error:"  # faulthandler's first line: the dump follows.


def begin_attempt() -> bool:
  """Whether this process is an attempt that `run_retrying` started; a retry (not
  the first attempt) pins itself to one CPU core here, before any native threads
  start (the parent does not, since a `preexec_fn` forks a multithreaded process)."""
  attempt = os.environ.get(ATTEMPT_ENV)
  if attempt is None:
    return False
  if attempt != "1" and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  return True


def _forward_stdout(stream: TextIO, printed: list[str], out: TextIO) -> None:
  """Prints the child's lines, except the leading ones an earlier attempt printed."""
  at = 0
  for line in stream:
    if at is not None and at < len(printed) and line == printed[at]:
      at += 1
      continue
    at = None
    printed.append(line)
    out.write(line)
    out.flush()


def _forward_stderr(stream: TextIO, log: TextIO, err: TextIO) -> None:
  """Keeps every line in `log`; shows them until a crash dump starts."""
  crashed = False
  for line in stream:
    log.write(line)
    crashed = crashed or line.startswith(_CRASH_START)
    if not crashed:
      err.write(line)
      err.flush()


def _signal_name(returncode: int) -> str:
  try:
    return signal.Signals(-returncode).name
  except ValueError:
    return f"signal {-returncode}"


def run_retrying(command: Sequence[str], attempts: int, what: str) -> int:
  """Runs `command` until it ends other than by a signal, at most `attempts` times.

  Args:
    command: the child's argv; it calls `begin_attempt()` first (True: do the work).
    attempts: how many processes to start at most (1: no retry).
    what: who may crash, for the messages ("the TPU compiler (libtpu 0.0.42.1),
      compiling the step for v6e-64,").

  Returns:
    The exit status of the first attempt that was not killed by a signal, or 1
    (after one `error:` line) when every attempt was.
  """
  printed: list[str] = []
  for attempt in range(1, attempts + 1):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{ATTEMPT_ENV: str(attempt)})
    with tempfile.NamedTemporaryFile("w", prefix="dynpt_crash_", suffix=".log",
                                     delete=False) as log:
      proc = subprocess.Popen(list(command), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env,
                              errors="backslashreplace")
      threads = [threading.Thread(target=_forward_stdout,
                                  args=(proc.stdout, printed, sys.stdout)),
                 threading.Thread(target=_forward_stderr,
                                  args=(proc.stderr, log, sys.stderr))]
      for t in threads:
        t.start()
      try:
        returncode = proc.wait()
      finally:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
        for t in threads:
          t.join()
    if returncode >= 0 or attempt < attempts:
      os.remove(log.name)  # Only the last crash's dump is kept.
    if returncode >= 0:
      return returncode
    if attempt < attempts:
      print(f"warning: {what} crashed ({_signal_name(returncode)}); starting attempt "
            f"{attempt + 1} of {attempts} in a fresh process, pinned to one CPU core",
            file=sys.stderr, flush=True)
  print(f"error: {what} crashed ({_signal_name(returncode)}) in each of {attempts} "
        f"attempt(s); the last crash's output is in {log.name}", file=sys.stderr,
        flush=True)
  return 1
