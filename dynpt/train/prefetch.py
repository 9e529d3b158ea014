"""The next batch, assembled ahead on a background thread (prefetching).

`BatchPrefetcher.start(draw)` begins assembling the batch of `draw.step` while the
device (or, with synchronous dispatch, the calling thread inside the jitted
call, which releases the GIL) runs the current step; `take()` waits for it
and records the data positions right after it, which is what a checkpoint of
that step must hold whatever batch is being assembled when it is written.
"""

from __future__ import annotations

import concurrent.futures

import jax
import numpy as np

from dynpt.train import batching
from dynpt.train.feedback import Draw


class BatchPrefetcher:
  """One batch ahead of the step loop over a `batching.MixtureInput`."""

  def __init__(self, mixture_input: batching.MixtureInput, batch_sharding):
    self.input = mixture_input
    self.sharding = batch_sharding
    self._ahead: tuple[Draw, concurrent.futures.Future] | None = None

  def start(self, draw: Draw) -> None:
    """Starts assembling this process's rows of the batch `draw` describes."""
    if self._ahead is not None:
      raise RuntimeError(f"batch of step {self._ahead[0].step} started and not taken")
    self._ahead = (draw, self.input.prefetch(draw.counts))

  def peek(self) -> tuple[Draw, dict[str, np.ndarray]]:
    """The started batch (this process's rows), without taking it."""
    if self._ahead is None:
      raise RuntimeError("no batch started")
    draw, future = self._ahead
    return draw, future.result()

  def take(self) -> tuple[Draw, dict[str, jax.Array], dict]:
    """(draw, global batch, this process's data positions after it).

    Call before `start` of the next batch, so that the positions are those
    right after this batch.
    """
    draw, local = self.peek()
    self._ahead = None
    positions = self.input.state()
    batch = {k: jax.make_array_from_process_local_data(self.sharding, v)
             for k, v in local.items()}
    return draw, batch, positions

  def close(self) -> None:
    self.input.close()
