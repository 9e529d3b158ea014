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
"""

from __future__ import annotations

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
  the state's `_METADATA` and the JSON items, each parsed.
  """
  if not fs.isdir(step_dir):
    raise CheckpointProblem(f"{step_dir} is not a directory")
  for item in items:
    if not fs.isdir(fs.join(step_dir, item)):
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
      raise CheckpointProblem(f"{path} is unreadable ({_short(e)})") from None


def _all_processes_agree(ok: bool) -> bool:
  """True when `ok` holds on every process (each may see a different file)."""
  if jax.process_count() == 1:
    return ok
  flags = multihost_utils.process_allgather(np.asarray(int(ok), np.int32))
  return bool(np.all(np.asarray(flags)))


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


def restore_with_fallback(steps: list[int], step_dir: Callable[[int], str],
                          restore_step: Callable[[int], Any],
                          set_aside: Callable[[int, str], None] | None = None,
                          items: tuple[str, ...] = ITEMS
                          ) -> tuple[int, Any] | None:
  """Restores the newest step that restores cleanly; None when `steps` is empty.

  Each bad step is logged (step, folder, reason) as it is found. Only once
  an older step has restored are the bad ones passed to `set_aside`: when
  none is good, every step stays where it is, so the failure repeats on the
  next start instead of turning into a silent fresh run.

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
  """
  problems, bad = [], []
  for step in sorted(steps, reverse=True):
    folder = step_dir(step)
    try:
      check_step_files(folder, items)
      restored, reason = restore_step(step), None
    except CheckpointProblem as e:
      reason = str(e)
    except Exception as e:  # pylint: disable=broad-except
      # Orbax/tensorstore raise many types for damaged files (ValueError,
      # KeyError, OSError, XlaRuntimeError...); any of them makes the step
      # unusable, and the reason is logged.
      reason = _short(e)
    if not _all_processes_agree(reason is None):
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
