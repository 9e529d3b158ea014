"""Checkpoints of everything a run needs to continue exactly: orbax, public API.

One orbax `CheckpointManager` saves three items together, so a restore is
all-or-nothing:
  state  — the `TrainState` arrays (params, optimizer state, step, rng),
           restored straight into their shardings;
  mixer  — the mixture feedback's state (`dynpt.train.feedback`): the
           sampler's (plain numpy arrays, a few of length |T|) and the
           per-task losses of the last step or two, not yet applied;
  data   — per-task data positions (JSON: a few integers per task).
Saving is asynchronous: the step does not wait for the write.

What goes wrong on real clusters is handled here (docs/troubleshooting.md):
- `save` refuses a state with NaN/inf (`NonFiniteStateError`), so a diverged
  run never leaves a poisoned checkpoint to resume into;
- `restore_latest_good` takes the newest step that validates (see
  `dynpt.train.checkpoint_validation`): damaged newer steps are logged and
  moved to `<run_dir>/corrupt_checkpoints/`, never deleted; when none is
  good it fails naming them all (`NoUsableCheckpointError`);
- only evidence of damage moves a step: a restore that fails for another
  reason (out of memory, permission, an unavailable store) stops the run
  naming it (`CheckpointRestoreError`), and nothing is moved or cut.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from dynpt import fs
from dynpt.train.checkpoint_validation import (CORRUPT_DIR, CheckpointProblem,
                                               CheckpointRestoreError,
                                               NoUsableCheckpointError,
                                               move_aside, non_finite_leaves,
                                               restore_with_fallback)

__all__ = ["CORRUPT_DIR", "CheckpointRestoreError", "Checkpointer",
           "NoUsableCheckpointError",
           "NonFiniteStateError", "load_params", "restore_params",
           "save_params"]


class NonFiniteStateError(ValueError):
  """A state to be saved holds NaN/inf; it was not saved."""


def checked_path(path: str) -> str:
  """`path` as it is; a ValueError for a path TensorStore would misread.

  TensorStore's file store takes `\\` for a folder separator, so a folder
  named `a\\b` would have its arrays written under `a/b`, elsewhere.
  """
  if "\\" in path and not fs.is_remote(path):
    raise ValueError(f"{path}: checkpoint folders cannot contain a backslash "
                     "(TensorStore reads it as a folder separator and would write "
                     "the arrays elsewhere); choose a path without one")
  return path


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


class Checkpointer:
  """Saves/restores (state, mixer state, data state) under `run_dir/checkpoints`."""

  def __init__(self, run_dir: str, *, keep: int = 3, save_every: int = 1000,
               async_save: bool = True):
    self.run_dir = checked_path(fs.absolute(run_dir))  # A local folder or a bucket (dynpt.fs).
    self.directory = fs.join(self.run_dir, "checkpoints")
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
    bad = non_finite_leaves(state)
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
      CheckpointRestoreError: when a restore fails for a reason that is not
        damage (memory, permission, storage); nothing is moved.
    """
    def restore_step(step):
      restored = self.restore(step, abstract_state, shardings)
      bad = non_finite_leaves(restored[0])
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
    return fs.join(self.directory, str(step))

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
    CheckpointRestoreError: when a restore fails for a reason that is not
      damage (memory, permission, storage).
  """
  directory = fs.join(checked_path(fs.absolute(run_dir)), "checkpoints")
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
    bad = non_finite_leaves(params)
    if bad:
      raise CheckpointProblem(
          f"params hold NaN/inf in {len(bad)} arrays (e.g. {bad[0]})")
    return jax.tree.map(np.asarray, params)

  try:
    found_step, params = restore_with_fallback(
        steps, lambda s: fs.join(directory, str(s)), restore_step,
        items=("state",))
  finally:
    manager.close()
  return params, int(found_step)


def save_params(directory: str, params: Any) -> None:
  """Params-only checkpoint (orbax), the format exports and finetuning use."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(checked_path(fs.absolute(directory)), params, force=True)


def load_params(directory: str) -> Any:
  """Loads a params-only checkpoint written by `save_params` (numpy leaves)."""
  if not fs.isdir(directory):
    raise FileNotFoundError(f"no params checkpoint at {directory}")
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(fs.absolute(directory))
  return jax.tree.map(np.asarray, params)
