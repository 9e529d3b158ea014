"""Preemption agreed across processes: SIGTERM on any host stops every host.

A TPU preemption, `kill` or SLURM's `scancel` may reach only some hosts. The
checkpoint save is collective (orbax writes one step with every process), so a
host that stops alone would leave the others waiting in their next collective.
Every process therefore calls `Preemption.should_stop()` once per step, at the
same point of the loop, and all of them get the same answer.

How they agree: each call starts a max-reduction of the local "SIGTERM seen"
flag over all processes (one int32 per device, a single tiny jitted
collective) and returns the result of the reduction started by the previous
call. By then the loop has already waited for the previous step's metrics,
which the device computed before that reduction, so reading it waits at most
for the reduction's own round trip, not for a step; the price is that the
stop comes one step later than on a single host (a SIGTERM during
step s stops after step s+1 or s+2; TPU preemption notices leave ~30 s).
A single process reads its own flag and runs no collective at all.
"""

from __future__ import annotations

import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class Preemption:
  """Turns SIGTERM into a save-and-exit request that every process agrees on.

  Use as a context manager around the step loop (it installs the SIGTERM
  handler only in the main thread, and restores the previous one on exit).

  Attributes:
    requested: this process received SIGTERM.
    agreed: `should_stop()` returned True: some process received SIGTERM and
      every process stops after the same step.
  """

  def __init__(self):
    self.requested = False
    self.agreed = False
    self._previous = None
    self._reduce = None  # Jitted max over processes; multi-process only.
    self._flag_sharding = None
    self._in_flight = None  # The reduction started by the previous call.

  def __enter__(self) -> Preemption:
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint, then exiting")
    self.requested = True

  def __exit__(self, *unused):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def should_stop(self) -> bool:
    """Whether to save and exit after this step; the same on every process.

    Every process must call this exactly once per step, in the same order
    relative to the other collectives of the step loop.
    """
    if jax.process_count() == 1:
      self.agreed = self.agreed or self.requested
      return self.agreed
    previous = self._in_flight
    self._in_flight = self._start_reduction()
    if previous is not None and int(jax.device_get(previous)) > 0:
      if not self.agreed:
        logging.warning("a process received SIGTERM: every process saves this "
                        "step and exits")
      self.agreed = True
    return self.agreed

  def _start_reduction(self) -> jax.Array:
    """Dispatches the max of every process's flag; returns it unread."""
    if self._reduce is None:
      # Grouped by process, so that each process's devices hold one block.
      devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
      mesh = Mesh(np.asarray(devices), ("devices",))
      self._flag_sharding = NamedSharding(mesh, PartitionSpec("devices"))
      self._reduce = jax.jit(
          jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))
    local = np.full((jax.local_device_count(),), int(self.requested), np.int32)
    flags = jax.make_array_from_process_local_data(
        self._flag_sharding, local)  # [devices]
    return self._reduce(flags)

