"""Checkpoints of everything a run needs to continue exactly: orbax, public API.

One orbax `CheckpointManager` saves three items together, so a restore is
all-or-nothing:
  state  — the `TrainState` arrays (params, optimizer state, step, rng),
           restored straight into their shardings;
  mixer  — the sampler's state (plain numpy arrays, a few of length |T|);
  data   — per-task data positions (JSON: a few integers per task).
Saving is asynchronous: the step does not wait for the write.

What goes wrong on real clusters is handled here (docs/troubleshooting.md):
- `save` refuses a state with NaN/inf (`NonFiniteStateError`), so a diverged
  run never leaves a poisoned checkpoint to resume into;
- `restore_latest_good` validates the newest step (its files, then a full
  restore and a finiteness check); a bad one is logged with its step and
  file and the next older step is tried; once one restores, the bad ones are
  moved to `<run_dir>/corrupt_checkpoints/` (never deleted); only when none is good does it fail, naming
  every step it tried (`NoUsableCheckpointError`) and moving nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

CORRUPT_DIR = "corrupt_checkpoints"  # Beside `checkpoints/`, holds bad steps.
ITEMS = ("state", "mixer", "data")
_MAX_REASON_CHARS = 400


class NonFiniteStateError(ValueError):
  """A state to be saved holds NaN/inf; it was not saved."""


class NoUsableCheckpointError(ValueError):
  """Checkpoints exist but none of them can be restored."""


class CheckpointProblem(Exception):
  """One step's checkpoint is unusable; the message names the step and file."""


def _jsonable(tree: Any) -> Any:
  """numpy -> lists for the JSON items; keeps dtype info for exact restore."""
  if isinstance(tree, dict):
    return {str(k): _jsonable(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_jsonable(v) for v in tree]
  if isinstance(tree, np.ndarray):
    return {"__ndarray__": tree.tolist(), "dtype": str(tree.dtype),
            "shape": list(tree.shape)}
  if isinstance(tree, np.generic):
    return tree.item()
  return tree


def _from_jsonable(tree: Any) -> Any:
  if isinstance(tree, dict):
    if "__ndarray__" in tree:
      return np.asarray(tree["__ndarray__"], dtype=tree["dtype"]).reshape(
          tree["shape"])
    return {k: _from_jsonable(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_from_jsonable(v) for v in tree]
  return tree


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
  """[all(isfinite(x)) for x in leaves] as one bool vector (one transfer);
  compiled once per state structure."""
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def _non_finite_leaves(tree: Any) -> list[str]:
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
  if not os.path.isdir(step_dir):
    raise CheckpointProblem(f"{step_dir} is not a directory")
  for item in items:
    if not os.path.isdir(os.path.join(step_dir, item)):
      raise CheckpointProblem(f"{os.path.join(step_dir, item)} is missing")
  paths = [os.path.join(step_dir, item, _ITEM_METADATA[item]) for item in items]
  if "state" in items:  # Orbax's other JSON files of the state, when present.
    state_dir = os.path.join(step_dir, "state")
    paths.append(os.path.join(state_dir, "_sharding"))
    meta_dir = os.path.join(state_dir, "array_metadatas")
    if os.path.isdir(meta_dir):
      paths += [os.path.join(meta_dir, f) for f in sorted(os.listdir(meta_dir))]
  for path in paths:
    if path.endswith("_sharding") and not os.path.exists(path):
      continue
    try:
      with open(path) as f:
        json.load(f)
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
  wait for it, so no process lists the step afterwards.
  """
  dest_root = os.path.join(os.path.abspath(run_dir), CORRUPT_DIR)
  base = os.path.join(dest_root, os.path.basename(step_dir))
  dest, n = base, 0
  while os.path.exists(dest):
    n += 1
    dest = f"{base}.{n}"
  if jax.process_index() == 0:
    os.makedirs(dest_root, exist_ok=True)
    shutil.move(step_dir, dest)
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


class Checkpointer:
  """Saves/restores (state, mixer state, data state) under `run_dir/checkpoints`."""

  def __init__(self, run_dir: str, *, keep: int = 3, save_every: int = 1000,
               async_save: bool = True):
    self.run_dir = os.path.abspath(run_dir)
    self.directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=1, create=True,
        enable_async_checkpointing=async_save)
    self.save_every = save_every
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "mixer", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def should_save(self, step: int, last_step: int) -> bool:
    return step == last_step or (self.save_every > 0 and
                                 step % self.save_every == 0)

  def save(self, step: int, state: Any, mixer_state: dict,
           data_state: dict) -> None:
    """Saves asynchronously; returns once device buffers are copied.

    Raises:
      NonFiniteStateError: naming the step and the first bad leaves, when the
        state holds NaN/inf (nothing is written).
    """
    bad = _non_finite_leaves(state)
    if bad:
      raise NonFiniteStateError(
          f"the state after step {step} holds NaN/inf in {len(bad)} arrays "
          f"(e.g. {', '.join(bad[:3])}); checkpoint {step} was not written")
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        mixer=ocp.args.JsonSave(_jsonable(mixer_state)),
        data=ocp.args.JsonSave(_jsonable(data_state))), force=True)
    logging.info("checkpoint for step %d scheduled in %s", step,
                 self.directory)

  def restore(self, step: int, abstract_state: Any,
              shardings: Any) -> tuple[Any, dict, dict]:
    """Restores step `step` into `shardings`; returns (state, mixer, data)."""
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state, shardings)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target),
        mixer=ocp.args.JsonRestore(), data=ocp.args.JsonRestore()))
    return (restored["state"], _from_jsonable(restored["mixer"]),
            _from_jsonable(restored["data"]))

  def restore_latest_good(self, abstract_state: Any, shardings: Any
                          ) -> tuple[int, Any, dict, dict] | None:
    """(step, state, mixer, data) of the newest usable checkpoint, or None.

    A step that fails `check_step_files`, fails to restore or holds NaN/inf
    is logged (step, file, reason) and the next older one is tried; once one
    restores, the bad newer ones are moved to
    `<run_dir>/corrupt_checkpoints/<step>` (never deleted).

    Raises:
      NoUsableCheckpointError: when checkpoints exist but none is usable.
    """
    def restore_step(step):
      restored = self.restore(step, abstract_state, shardings)
      bad = _non_finite_leaves(restored[0])
      if bad:
        raise CheckpointProblem(
            f"state holds NaN/inf in {len(bad)} arrays (e.g. {bad[0]})")
      return restored

    def set_aside(step, folder):
      dest = move_aside(self.run_dir, folder)
      logging.warning("moved the unusable checkpoint of step %d to %s", step,
                      dest)

    found = restore_with_fallback(self.all_steps(), self._step_dir,
                                  restore_step, set_aside)
    self._manager.reload()
    if found is None:
      return None
    step, (state, mixer, data) = found
    return step, state, mixer, data

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def restore_params(run_dir: str, step: int | None = None) -> tuple[Any, int]:
  """Params (host numpy arrays) of a run's checkpoint; latest good by default.

  Reads only what was saved (no optimizer or model config needed), so export
  works whatever optimizer the run used. The arrays are restored onto this
  process's first device, whatever topology saved them (a checkpoint of a
  multi-host run can be exported on one machine). Without `step`, a damaged
  or non-finite newest checkpoint is logged and the next older one is used;
  nothing is moved (export may run beside a trainer; the trainer moves bad
  steps aside when it next starts).

  Raises:
    FileNotFoundError: when there is no checkpoint (or no step `step`).
    NoUsableCheckpointError: naming each step tried, when none is usable.
  """
  directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_names=("state",),
      item_handlers={"state": ocp.StandardCheckpointHandler()})
  steps = list(manager.all_steps())
  if step is not None:
    if step not in steps:
      manager.close()
      raise FileNotFoundError(f"no checkpoint of step {step} in {directory}; "
                              f"steps there: {sorted(steps)}")
    steps = [step]
  if not steps:
    manager.close()
    raise FileNotFoundError(f"no checkpoint in {directory}")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def restore_step(s):
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        manager.item_metadata(s)["state"])
    restored = manager.restore(s, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
    params = restored["state"]["params"]
    bad = _non_finite_leaves(params)
    if bad:
      raise CheckpointProblem(
          f"params hold NaN/inf in {len(bad)} arrays (e.g. {bad[0]})")
    return jax.tree.map(np.asarray, params)

  try:
    found_step, params = restore_with_fallback(
        steps, lambda s: os.path.join(directory, str(s)), restore_step,
        items=("state",))
  finally:
    manager.close()
  return params, int(found_step)


def save_params(directory: str, params: Any) -> None:
  """Params-only checkpoint (orbax), the format exports and finetuning use."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(directory), params, force=True)


def load_params(directory: str) -> Any:
  """Loads a params-only checkpoint written by `save_params` (numpy leaves)."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no params checkpoint at {directory}")
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.abspath(directory))
  return jax.tree.map(np.asarray, params)
