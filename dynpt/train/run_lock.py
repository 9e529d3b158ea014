"""One trainer per run directory: an advisory lock on `<run_dir>/.lock`.

Two trainers on one RUN_DIR interleave the mixture history, overwrite each
other's checkpoints and `config.gin`. The lock is `flock(2)` on a file in the
run directory: the kernel drops it when the holder exits however it exits
(`kill -9` included), so a crashed run never leaves a stale lock. The file
keeps the holder's host, pid, start time and command line so the refusal
names it.

Works on local disks and on NFS (where flock is emulated with POSIX locks).
Object stores (`gs://`, `s3://`) have no locks: there only the launcher can
ensure that one job writes a run directory, and `acquire` says so in the log.
Multi-host runs lock from process 0, and every process learns the answer.

A run takes the lock once, in its set-up (`dynpt.train.session.claimed_run_dir`,
for pretraining and finetuning alike); a second hold of the same directory is
refused, from this process too.

The lock file is opened without following links (`O_NOFOLLOW`): a `.lock`
that is a symbolic link (or a hard link, or not a plain file) is refused
with `UnsafeLockFileError`, and nothing is written where it points.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import stat
import sys

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from dynpt import fs

LOCK_FILE = ".lock"


class RunDirInUseError(RuntimeError):
  """Another process holds the run directory; the message names it."""


class UnsafeLockFileError(OSError):
  """`<run_dir>/.lock` is a symbolic link (or not a plain file of its own):
  it is not opened, so nothing is written where it points."""


def _open_lock_file(lock_path: str) -> int:
  """A descriptor of the lock file, created if absent, never through a link.

  `O_NOFOLLOW` refuses a symbolic link (a dangling one too, which `O_CREAT`
  would otherwise create at its target); a hard link or a non-file is refused
  after opening, before anything is written.
  """
  flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
  advice = ("dynpt writes its holder's name into the lock file, so it never "
            "opens one that leads elsewhere. Remove it (what it points to is "
            "left as it is) and run again")
  try:
    fd = os.open(lock_path, flags, 0o644)
  except OSError as e:
    if e.errno == errno.ELOOP or os.path.islink(lock_path):
      raise UnsafeLockFileError(
          f"{lock_path} is a symbolic link (to {os.readlink(lock_path)}); "
          f"{advice}") from None
    raise
  st = os.fstat(fd)
  if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
    os.close(fd)
    what = ("not a plain file" if not stat.S_ISREG(st.st_mode)
            else f"a hard link ({st.st_nlink} names for one file)")
    raise UnsafeLockFileError(f"{lock_path} is {what}; {advice}")
  return fd


def is_local(path: str) -> bool:
  return not fs.is_remote(path)


def _holder_info() -> dict:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec="seconds"),
          "command": " ".join(sys.argv)[:500]}


def describe_holder(lock_path: str) -> str:
  """'pid 123 on host h since t (command ...)', from the lock file's text."""
  try:
    fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as f:
      info = json.load(f)
    return (f"pid {info['pid']} on host {info['host']} since "
            f"{info['started']} (command: {info['command']})")
  except (OSError, ValueError, KeyError, TypeError):
    return "a process that has not written its name yet"


def _lock_locally(lock_path: str) -> tuple[int | None, str | None]:
  """Takes the lock: (its descriptor, None), or (None, the holder's description).

  Another descriptor of the file, this process's own included, is refused:
  `flock` locks belong to an open file description.

  Raises:
    UnsafeLockFileError: the lock file is a link or not a plain file.
  """
  fd = _open_lock_file(lock_path)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      return None, describe_holder(lock_path)
    raise
  os.ftruncate(fd, 0)
  os.write(fd, json.dumps(_holder_info()).encode())
  os.fsync(fd)
  return fd, None


class RunLock:
  """Context manager holding `run_dir` for this trainer.

  Raises (on enter):
    RunDirInUseError: naming the holder (pid, host, start, command) when
      another process holds the directory.
    UnsafeLockFileError: when `<run_dir>/.lock` is a symbolic link (or not a
      plain file of its own); nothing is written to it or where it points.
  """

  def __init__(self, run_dir: str):
    self.run_dir = run_dir
    self.lock_path = fs.join(fs.absolute(run_dir), LOCK_FILE)
    self._fd: int | None = None  # The locked file's descriptor (process 0).

  def acquire(self) -> None:
    if not is_local(self.run_dir):
      logging.log_first_n(
          logging.WARNING,
          "run directory %s is in an object store: it cannot be locked, so "
          "no local lock is taken; one trainer per RUN_DIR is the launcher's "
          "job (tools/launch_tpu.py stops the previous one first; "
          "docs/scaling.md)", 1, self.run_dir)
      return
    holder, unsafe = None, None
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(self.lock_path), exist_ok=True)
      try:
        self._fd, holder = _lock_locally(self.lock_path)
      except UnsafeLockFileError as e:
        unsafe = e  # Raised below, once every process knows.
    if jax.process_count() > 1:
      refused = int(multihost_utils.broadcast_one_to_all(np.asarray(
          2 if unsafe else int(holder is not None), np.int32)))
      if refused == 2 and unsafe is None:
        unsafe = UnsafeLockFileError(f"{self.lock_path} is refused (see the "
                                     "log of process 0)")
      if refused == 1 and holder is None:
        holder = "another trainer (see the log of process 0)"
    if unsafe is not None:
      logging.error("%s", unsafe)
      raise unsafe
    if holder is not None:
      raise RunDirInUseError(
          f"run directory {self.run_dir} is in use by {holder}; a second "
          "trainer would corrupt its checkpoints and history. Wait for it to "
          "finish, stop it, or choose another RUN_DIR")

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "RunLock":
    self.acquire()
    return self

  def __exit__(self, *unused) -> None:
    self.release()
