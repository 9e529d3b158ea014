"""`dynpt.train.crash_retry`: a child killed by a signal is started again, pinned to
one CPU core; its output shows once; every attempt crashing is one `error:` line."""

from __future__ import annotations

import os
import re
import sys
import textwrap

from dynpt.train import crash_retry

# Prints a header, then crashes (SIGSEGV, with faulthandler's dump) on attempts
# before CRASHES + 1, else prints its CPUs and exits 3.
_CHILD = textwrap.dedent("""
    import faulthandler, os, signal, sys
    from dynpt.train import crash_retry
    faulthandler.enable()
    assert crash_retry.begin_attempt()
    attempt = int(os.environ[crash_retry.ATTEMPT_ENV])
    print("header line")
    print("second header line")
    print("progress of attempt", attempt, file=sys.stderr)
    if attempt <= int(sys.argv[1]):
      os.kill(os.getpid(), signal.SIGSEGV)
    print("cpus", len(os.sched_getaffinity(0)))
    sys.exit(3)
""")


def _run(crashes: int, attempts: int, capsys):
  code = crash_retry.run_retrying([sys.executable, "-c", _CHILD, str(crashes)],
                                  attempts, "the stand-in compiler")
  out, err = capsys.readouterr()
  return code, out, err


def test_a_crash_is_retried_in_a_fresh_process_on_one_cpu(capsys):
  code, out, err = _run(crashes=2, attempts=3, capsys=capsys)
  assert code == 3, (out, err)  # The exit status of the attempt that ran through.
  assert out == "header line\nsecond header line\ncpus 1\n"  # Each line once.
  warnings = [line for line in err.splitlines() if line.startswith("warning:")]
  assert warnings == [
      f"warning: the stand-in compiler crashed (SIGSEGV); starting attempt {n} of 3 in "
      "a fresh process, pinned to one CPU core" for n in (2, 3)], err
  assert "Fatal Python error" not in err and "error:" not in err.replace("warning:", "")
  assert [f"progress of attempt {n}" in err for n in (1, 2, 3)] == [True] * 3


def test_begin_attempt_is_false_outside_a_child(monkeypatch):
  monkeypatch.delenv(crash_retry.ATTEMPT_ENV, raising=False)
  cpus = os.sched_getaffinity(0)
  assert not crash_retry.begin_attempt() and os.sched_getaffinity(0) == cpus


def test_no_crash_runs_once_with_every_cpu(capsys):
  code, out, err = _run(crashes=0, attempts=3, capsys=capsys)
  assert code == 3
  assert out == f"header line\nsecond header line\ncpus {len(os.sched_getaffinity(0))}\n"
  assert "warning:" not in err and "progress of attempt 2" not in err


def test_every_attempt_crashing_is_one_error_line_naming_the_dump(capsys):
  code, out, err = _run(crashes=5, attempts=2, capsys=capsys)
  assert code == 1
  assert out == "header line\nsecond header line\n"
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, err
  m = re.fullmatch(r"error: the stand-in compiler crashed \(SIGSEGV\) in each of 2 "
                   r"attempt\(s\); the last crash's output is in (\S+)", errors[0])
  assert m, errors[0]
  try:
    with open(m.group(1)) as f:
      dump = f.read()
    assert "progress of attempt 2" in dump and "Fatal Python error" in dump
    assert "progress of attempt 1" not in dump  # Only the last crash's log is kept.
  finally:
    os.remove(m.group(1))
