"""Checks a checkpoint before a run trusts it, and what to do with a bad one.

What goes wrong on real clusters (docs/troubleshooting.md): a step folder
left empty, a truncated array file or JSON item, a deleted `_METADATA`, or a
state that holds NaN/inf. `restore_with_fallback` tries steps newest first:
a cheap look at the files (`check_step_files`), then the real restore and a
finiteness check; each bad step is logged with its step and the file or
array that failed, and once an older step restores the bad ones are moved to
`<run_dir>/corrupt_checkpoints/` (`move_aside`, never deleted). When none is
good it fails naming them all and moves nothing. `non_finite_leaves` is also
the guard that keeps NaN out of every save.

Only evidence of damage makes a step "bad" (`is_damage`): a missing or
unparsable file, a failed checksum, data that does not decode, non-finite
values. An error of the machine or the store while restoring (out of memory,
RESOURCE_EXHAUSTED, permission denied, an unavailable or failing store) says
nothing about the checkpoint: the restore stops with
`CheckpointRestoreError`, nothing is moved and nothing older is resumed.
"""

from __future__ import annotations

import errno
import json
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from dynpt import fs

CORRUPT_DIR = "corrupt_checkpoints"  # Beside `checkpoints/`, holds bad steps.
ITEMS = ("state", "mixer", "data")
_MAX_REASON_CHARS = 400


class NoUsableCheckpointError(ValueError):
  """Checkpoints exist but none of them can be restored."""


class CheckpointProblem(Exception):
  """One step's checkpoint is unusable; the message names the step and file."""


class CheckpointRestoreError(EnvironmentError):
  """A restore failed for a reason that is not damage to the checkpoint
  (memory, permission, an unavailable store); nothing was moved."""


# Status codes (absl/TensorStore/XLA) and OS errors of the machine or the
# store, not of the files: they fail the run instead of a fallback.
_ENVIRONMENT_CODES = re.compile(
    r"\b(RESOURCE_EXHAUSTED|PERMISSION_DENIED|UNAVAILABLE|DEADLINE_EXCEEDED|"
    r"UNAUTHENTICATED|ABORTED|CANCELLED)\b")
_ENVIRONMENT_TEXT = re.compile(
    r"out of memory|cannot allocate memory|permission denied|"
    r"input/output error|resource temporarily unavailable|stale file handle|"
    r"too many open files|no space left|disk quota|connection (reset|refused|"
    r"aborted)|timed out", re.IGNORECASE)
_ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "EACCES", "EPERM", "EIO", "EAGAIN", "ENOMEM", "ENOSPC", "EDQUOT",
        "EMFILE", "ENFILE", "ESTALE", "ETIMEDOUT", "ECONNRESET",
        "ECONNREFUSED", "ECONNABORTED", "ENETDOWN", "ENETUNREACH",
        "EHOSTUNREACH", "EBUSY", "EINTR", "ENOLCK") if hasattr(errno, name))
_ENVIRONMENT_TYPES = (MemoryError, PermissionError, TimeoutError,
                      ConnectionError, InterruptedError, BlockingIOError)
# What damaged files raise: orbax's JSON and key errors, TensorStore's
# ValueError with DATA_LOSS (a failed CRC-32C checksum) or OUT_OF_RANGE (a
# truncated file), a missing file.
_DAMAGE_CODES = re.compile(
    r"\b(DATA_LOSS|NOT_FOUND|OUT_OF_RANGE|INVALID_ARGUMENT|FAILED_PRECONDITION)\b"
    r"|checksum|corrupt|truncated", re.IGNORECASE)
_DAMAGE_TYPES = (CheckpointProblem, FileNotFoundError, NotADirectoryError,
                 IsADirectoryError, ValueError, KeyError, IndexError, TypeError,
                 EOFError)


def _chain(error: BaseException) -> list[BaseException]:
  """`error` and the errors it was raised from (a few levels)."""
  out = []
  while error is not None and len(out) < 8 and error not in out:
    out.append(error)
    error = error.__cause__ or error.__context__
  return out


def is_environmental(error: BaseException) -> bool:
  """Whether `error` comes from the machine or the store (memory, permission,
  an unavailable or failing store), not from the checkpoint's files."""
  for e in _chain(error):
    if isinstance(e, _ENVIRONMENT_TYPES):
      return True
    if isinstance(e, OSError) and e.errno in _ENVIRONMENT_ERRNOS:
      return True
    text = str(e)
    if _ENVIRONMENT_CODES.search(text) or _ENVIRONMENT_TEXT.search(text):
      return True
  return False


def is_damage(error: BaseException) -> bool:
  """Whether `error` is evidence that a checkpoint's files are damaged: a file
  missing or unparsable, a failed checksum, data that does not decode, NaN.
  An environmental error (`is_environmental`) never is."""
  if is_environmental(error):
    return False
  return any(isinstance(e, _DAMAGE_TYPES) or _DAMAGE_CODES.search(str(e))
             for e in _chain(error))


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
  """[all(isfinite(x)) for x in leaves] as one bool vector (one transfer);
  compiled once per state structure."""
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def non_finite_leaves(tree: Any) -> list[str]:
  """Paths of floating-point leaves of `tree` holding NaN or inf.

  One jitted reduction (a bool per leaf), so sharded and multi-host arrays
  are checked where they live and every process gets the same answer.
  """
  leaves = [(jax.tree_util.keystr(path), leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype,
                                                         jnp.inexact)]
  if not leaves:
    return []
  finite = np.asarray(_finite_flags([x for _, x in leaves]))
  return [name for (name, _), ok in zip(leaves, finite) if not bool(ok)]


_TENSORSTORE_PATH = re.compile(r"'path': '([^']*)'")


def _short(error: BaseException) -> str:
  """One bounded line for an error; a TensorStore dump becomes its array and files.

  TensorStore's read errors print the whole spec (~2k characters) before
  anything useful; what matters is the array that failed and the folder
  whose files hold it.
  """
  text = " ".join(str(error).split())
  name = type(error).__name__
  if "TensorStore(" in text:
    paths = _TENSORSTORE_PATH.findall(text)
    arrays = [p.rstrip("/") for p in paths if not p.startswith("/")]
    folders = sorted({p for p in paths if p.startswith("/")})
    text = (f"{text.split(' See full TensorStore')[0]} of array "
            f"{arrays[-1] if arrays else '?'} stored under "
            f"{', '.join(folders) or '?'} (a data file there is damaged)")
  if len(text) > _MAX_REASON_CHARS:
    text = text[:_MAX_REASON_CHARS] + " ..."
  return f"{name}: {text}"


_ITEM_METADATA = {"state": "_METADATA", "mixer": "metadata", "data": "metadata"}


def check_step_files(step_dir: str, items: tuple[str, ...] = ITEMS) -> None:
  """Raises `CheckpointProblem` naming the first missing or unreadable file.

  A cheap look at what a restore needs before trying it: the item folders,
  the state's `_METADATA` and the JSON items, each parsed. An error reading
  them that is not damage (`is_environmental`: permission, I/O) is raised as
  it is.
  """
  if not fs.isdir(step_dir):
    raise CheckpointProblem(f"{step_dir} is not a directory")
  names = set(fs.listdir(step_dir))  # A folder that cannot be read raises here.
  for item in items:
    if item not in names or not fs.isdir(fs.join(step_dir, item)):
      raise CheckpointProblem(f"{fs.join(step_dir, item)} is missing")
  paths = [fs.join(step_dir, item, _ITEM_METADATA[item]) for item in items]
  if "state" in items:  # Orbax's other JSON files of the state, when present.
    state_dir = fs.join(step_dir, "state")
    paths.append(fs.join(state_dir, "_sharding"))
    meta_dir = fs.join(state_dir, "array_metadatas")
    if fs.isdir(meta_dir):
      paths += [fs.join(meta_dir, f) for f in fs.listdir(meta_dir)]
  for path in paths:
    if path.endswith("_sharding") and not fs.exists(path):
      continue
    try:
      json.loads(fs.read_text(path))
    except FileNotFoundError:
      raise CheckpointProblem(f"{path} is missing") from None
    except (OSError, ValueError) as e:
      if is_environmental(e):
        raise
      raise CheckpointProblem(f"{path} is unreadable ({_short(e)})") from None


_RESTORED, _DAMAGED, _NOT_DAMAGE = 0, 1, 2  # A step's verdict, worst wins.


def _worst_on_any_process(verdict: int) -> int:
  """The worst verdict of any process (each may see a different file)."""
  if jax.process_count() == 1:
    return verdict
  verdicts = multihost_utils.process_allgather(np.asarray(verdict, np.int32))
  return int(np.max(np.asarray(verdicts)))


def move_aside(run_dir: str, step_dir: str) -> str:
  """Moves a bad step folder to `<run_dir>/corrupt_checkpoints/`; its new path.

  Never deletes: the files stay for inspection. Process 0 moves; the others
  wait for it, so no process lists the step afterwards. In a bucket the move
  is a copy of every object, then a delete (`dynpt.fs.rename`).
  """
  dest_root = fs.join(fs.absolute(run_dir), CORRUPT_DIR)
  base = fs.join(dest_root, fs.basename(step_dir))
  dest, n = base, 0
  while fs.exists(dest):
    n += 1
    dest = f"{base}.{n}"
  if jax.process_index() == 0:
    fs.rename(step_dir, dest)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"dynpt_move_aside_{step_dir}")
  return dest


def _not_damage_error(step: int, folder: str, reason: str | None,
                      error: BaseException | None) -> CheckpointRestoreError:
  """The error that stops a restore which failed for a reason not damage."""
  head = (f"restoring checkpoint step {step} ({folder}) failed: "
          f"{reason or 'on another process (see its log)'}")
  if error is None:
    return CheckpointRestoreError(
        f"{head}, for a reason that is not damage to the checkpoint: nothing was "
        "moved and no older step was used")
  if is_environmental(error):
    return CheckpointRestoreError(
        f"{head}. That is an error of the machine or the storage (memory, "
        "permission, availability), not damage to the checkpoint: nothing was "
        "moved and no older step was used. Fix the cause and run again")
  corrupt = fs.join(fs.dirname(fs.dirname(folder)), CORRUPT_DIR)
  return CheckpointRestoreError(
      f"{head}. That error is not known as damage to the checkpoint, so nothing "
      f"was moved and no older step was used; if the files of step {step} are "
      f"damaged, move {folder} into {corrupt}/ and run again to resume from the "
      "step before")


def restore_with_fallback(steps: list[int], step_dir: Callable[[int], str],
                          restore_step: Callable[[int], Any],
                          set_aside: Callable[[int, str], None] | None = None,
                          items: tuple[str, ...] = ITEMS
                          ) -> tuple[int, Any] | None:
  """Restores the newest step that restores cleanly; None when `steps` is empty.

  Each bad step is logged (step, folder, reason) as it is found. Only once
  an older step has restored are the bad ones passed to `set_aside`: when
  none is good, every step stays where it is, so the failure repeats on the
  next start instead of turning into a silent fresh run. A step is bad only
  on evidence of damage (`is_damage`); any other error (out of memory,
  permission, an unavailable store, or one not known as damage) stops the
  restore there with `CheckpointRestoreError`: nothing is set aside and no
  older step is used, so a good newest checkpoint is never given up for a
  passing failure.

  Args:
    steps: candidate steps (any order).
    step_dir: step -> its folder.
    restore_step: step -> restored value; raises on a bad checkpoint.
    set_aside: called with (step, folder) for each bad step newer than the
      one restored.
    items: the item folders a step must have (`check_step_files`).

  Raises:
    NoUsableCheckpointError: naming every step tried and why, when none
      restores.
    CheckpointRestoreError: naming the step, folder and error, when a
      restore fails for a reason that is not damage (on any process).
  """
  problems, bad = [], []
  for step in sorted(steps, reverse=True):
    folder = step_dir(step)
    verdict, reason, error = _RESTORED, None, None
    try:
      check_step_files(folder, items)
      restored = restore_step(step)
    except CheckpointProblem as e:
      verdict, reason = _DAMAGED, str(e)
    except Exception as e:  # pylint: disable=broad-except
      # Orbax/TensorStore raise many types for damaged files (ValueError with
      # DATA_LOSS or OUT_OF_RANGE, KeyError, JSONDecodeError...); `is_damage`
      # tells them from the machine's and the store's errors.
      verdict = _DAMAGED if is_damage(e) else _NOT_DAMAGE
      reason, error = _short(e), e
    worst = _worst_on_any_process(verdict)
    if worst == _NOT_DAMAGE:
      if verdict != _NOT_DAMAGE:  # Another process's error: its log has it.
        reason, error = None, None
      raise _not_damage_error(step, folder, reason, error)
    verdict = worst
    if verdict == _DAMAGED:
      reason = reason or "unreadable on another process (see its log)"
      logging.error("checkpoint step %d (%s) is unusable: %s", step, folder,
                    reason)
      problems.append(f"step {step} ({folder}): {reason}")
      bad.append((step, folder))
      continue
    if bad:
      logging.warning("using checkpoint step %d: newer step(s) %s are "
                      "unusable", step, [s for s, _ in bad])
    for bad_step, bad_folder in bad:
      if set_aside is not None:
        set_aside(bad_step, bad_folder)
    return step, restored
  if problems:
    raise NoUsableCheckpointError(
        f"no usable checkpoint among {len(problems)}, nothing was moved: "
        + "; ".join(problems))
  return None
