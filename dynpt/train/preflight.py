"""Checks, before any model is built, that a run can write what it will write.

Without them an unwritable `checkpoints/` is found at the first save, after
all the training before it (and orbax's asynchronous writer then waits for
minutes before it gives up). Each folder the run writes is created and
probed with a real file, so read-only mounts, full quotas, a file where a
folder should be and permission bits (for non-root users) all fail here,
naming the path.
"""

from __future__ import annotations

import os
import tempfile
from typing import Sequence

from dynpt import fs
from dynpt.mixing import history

RUN_SUBDIRS = ("checkpoints", "tensorboard")
RUN_FILES = ("config.gin", history.HISTORY_FILENAME, "train_summary.json")


class NotWritableError(PermissionError):
  """A folder or file the run writes cannot be written; names the path."""


def _probe_folder(path: str, create: bool) -> None:
  """Writes and removes a file in `path`; a missing folder is created only
  when `create` (else its parent was probed: it can be made when needed)."""
  try:
    if create:
      os.makedirs(path, exist_ok=True)
    elif not os.path.lexists(path):
      return
    if not os.path.isdir(path):
      raise NotWritableError(f"{path} is not a folder; the run writes files "
                             "in a folder there")
    with tempfile.NamedTemporaryFile(dir=path, prefix=".write_probe_"):
      pass
  except NotWritableError:
    raise
  except OSError as e:
    raise NotWritableError(
        f"{path} is not a writable folder ({e.strerror or e}); the run "
        "writes there") from None


def check_writable(run_dir: str, subdirs: Sequence[str] = RUN_SUBDIRS,
                   files: Sequence[str] = RUN_FILES) -> None:
  """Raises `NotWritableError` naming the first path the run could not write.

  Args:
    run_dir: the run directory (created if missing).
    subdirs: folders under it the run writes (probed if present; a missing
      one is made by the run from the probed `run_dir`).
    files: files under it the run writes or rewrites (checked if present).
  """
  if fs.is_remote(run_dir):
    return  # Object stores: no folders to create; errors name the object.
  _probe_folder(run_dir, create=True)
  for sub in subdirs:
    _probe_folder(os.path.join(run_dir, sub), create=False)
  for name in files:
    path = os.path.join(run_dir, name)
    if os.path.isdir(path):
      raise NotWritableError(f"{path} is a folder; the run writes a file there")
    if os.path.exists(path) and not os.access(path, os.W_OK):
      raise NotWritableError(f"{path} is not writable; the run rewrites it")
