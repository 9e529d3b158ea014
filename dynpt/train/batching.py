"""Assembles each step's task-ordered global batch from per-task iterators.

The sampler decides how many examples each task contributes (`counts`); the
global batch is task-ordered (all of task 0, then task 1, ...) and host `h`
owns rows [h*B/H, (h+1)*B/H). Each host reads only its own shard of every
task and fills only its rows, so hosts never need to talk about the batch.
Assembly runs on a background thread while the device runs the previous step.
"""

from __future__ import annotations

import concurrent.futures
from typing import Sequence

import jax
import numpy as np


class MixtureInput:
  """Per-task `TaskIterator`s of this host plus batch assembly."""

  def __init__(self, task_names: Sequence[str], *, sequence_length: dict,
               image_size: int, seed: int, data_dir: str | None,
               split: str = "train", vocabulary=None,
               process_index: int | None = None,
               process_count: int | None = None,
               positions: dict | None = None):
    self.task_names = list(task_names)
    self.process_index = (jax.process_index() if process_index is None
                          else process_index)
    self.process_count = (jax.process_count() if process_count is None
                          else process_count)
    from dynpt.data import pipeline  # TF is only loaded when data is read.

    positions = resplit_positions(positions, self.task_names,
                                  self.process_count)
    self.iterators = [
        pipeline.TaskIterator(
            name, task_id=i, sequence_length=sequence_length,
            image_size=image_size, seed=seed, split=split, data_dir=data_dir,
            shard_index=self.process_index, num_shards=self.process_count,
            start_position=int(positions[name][self.process_index]),
            vocabulary=vocabulary)
        for i, name in enumerate(self.task_names)]
    self._executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="batch_assembly")

  def host_counts(self, counts: np.ndarray) -> np.ndarray:
    """This host's number of examples per task, from the global counts."""
    from dynpt import mixing

    return mixing.host_counts(np.asarray(counts), self.process_count)[
        self.process_index]

  def next_batch(self, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Takes this host's rows of the global batch described by `counts`."""
    parts = [it.take(int(n)) for it, n in
             zip(self.iterators, self.host_counts(counts))]
    return {k: np.concatenate([p[k] for p in parts], axis=0)
            for k in parts[0]}

  def prefetch(self, counts: np.ndarray) -> concurrent.futures.Future:
    """Starts assembling the next batch on the background thread."""
    return self._executor.submit(self.next_batch, np.array(counts))

  def state(self) -> dict:
    """Positions of this host's iterators: {task: position}."""
    return {name: int(it.position)
            for name, it in zip(self.task_names, self.iterators)}

  @property
  def skipped(self) -> int:
    return int(sum(getattr(it, "skipped", 0) for it in self.iterators))

  def close(self) -> None:
    self._executor.shutdown(wait=True)


def resplit_positions(positions: dict | None, task_names: Sequence[str],
                      num_hosts: int) -> dict[str, list[int]]:
  """Per-task, per-host start positions, re-split if the host count changed.

  Args:
    positions: {task: [position of host 0, ..., host N-1]} from a checkpoint
      (None for a fresh run).
    task_names: tasks of the mixture.
    num_hosts: hosts of this run (M).

  Returns:
    {task: [M positions]}. With M == N, the saved positions unchanged. With
    M != N, every new host starts at ceil(total / M): the run keeps its epoch
    progress per task (the same number of examples consumed, to within one
    per host) although shard membership changes, so examples are neither
    lost nor repeated beyond that rounding.
  """
  out = {}
  for name in task_names:
    saved = None if positions is None else positions.get(name)
    if saved is None:
      out[name] = [0] * num_hosts
    elif len(saved) == num_hosts:
      out[name] = [int(p) for p in saved]
    else:
      total = int(sum(saved))
      out[name] = [-(-total // num_hosts)] * num_hosts
  return out
