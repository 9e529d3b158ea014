"""Assembles each step's task-ordered global batch from per-task iterators.

The sampler decides how many examples each task contributes (`counts`); the
global batch is task-ordered (all of task 0, then task 1, ...). The data is
split into `S` *logical data shards*, independent of how many processes run:
logical shard `k` owns global rows [k*B/S, (k+1)*B/S) and reads shard `k`
of `S` of every task. Process `p` of `P` (S divisible by P) owns the
consecutive logical shards [p*S/P, (p+1)*S/P), i.e. rows
[p*B/P, (p+1)*B/P), the rows its devices hold under the data sharding.

So which example lands in which global row depends only on `S`, not on `P`:
one process reading both shards of an `S = 2` run builds the very batch two
processes build together, and a run checkpointed on N processes resumes on M
(both dividing S) exactly (big_vision/grain-style). Hosts never talk about
the batch. Assembly runs on a background thread while the device runs the
previous step.
"""

from __future__ import annotations

import concurrent.futures
from typing import Sequence

import jax
import numpy as np

from dynpt import mixing


def default_num_data_shards(saved_positions: dict | None, process_count: int,
                            global_batch_size: int) -> int:
  """Logical data shards of a run whose `num_data_shards` was not set.

  A resumed run keeps the shard count it was saved with when this run's
  process count divides it (an exact elastic resume); otherwise, and for a
  fresh run, one logical shard per process.
  """
  if saved_positions:
    saved = len(next(iter(saved_positions.values())))
    if saved % process_count == 0 and global_batch_size % saved == 0:
      return saved
  return process_count


class MixtureInput:
  """Per-task `TaskIterator`s of this process's logical shards plus batch assembly.

  Args:
    task_names: tasks of the mixture, in `task_id` order.
    sequence_length, image_size, seed, data_dir, split, vocabulary: passed to
      every `dynpt.data.pipeline.TaskIterator`.
    process_index, process_count: this process and how many there are
      (default: JAX's).
    positions: {task: [position of logical shard 0, ..., S0-1]} from a
      checkpoint, or None for a fresh run; re-split when S0 != S.
    num_data_shards: S, the logical data shards (default: one per process);
      must be divisible by `process_count`.
    max_damaged_fraction: passed to every `TaskIterator`.

  Raises:
    ValueError: if `num_data_shards` is not a positive multiple of the
      process count.
  """

  def __init__(self, task_names: Sequence[str], *, sequence_length: dict,
               image_size: int, seed: int, data_dir: str | None,
               split: str = "train", vocabulary=None,
               process_index: int | None = None,
               process_count: int | None = None,
               positions: dict | None = None,
               num_data_shards: int | None = None,
               max_damaged_fraction: float = 0.01):
    self.task_names = list(task_names)
    self.process_index = (jax.process_index() if process_index is None
                          else process_index)
    self.process_count = (jax.process_count() if process_count is None
                          else process_count)
    self.num_data_shards = (self.process_count if num_data_shards is None
                            else int(num_data_shards))
    if (self.num_data_shards < 1
        or self.num_data_shards % self.process_count):
      raise ValueError(
          f"num_data_shards={self.num_data_shards} must be a positive multiple "
          f"of the process count {self.process_count}")
    per_process = self.num_data_shards // self.process_count
    # Logical shards this process reads, in global row order.
    self.shard_indices = list(range(self.process_index * per_process,
                                    (self.process_index + 1) * per_process))
    from dynpt.data import pipeline  # TF is only loaded when data is read.

    positions = resplit_positions(positions, self.task_names,
                                  self.num_data_shards)
    # iterators[j][t]: task t of the j-th logical shard of this process.
    self.iterators = [[
        pipeline.TaskIterator(
            name, task_id=i, sequence_length=sequence_length,
            image_size=image_size, seed=seed, split=split, data_dir=data_dir,
            shard_index=k, num_shards=self.num_data_shards,
            start_position=int(positions[name][k]), vocabulary=vocabulary,
            max_damaged_fraction=max_damaged_fraction)
        for i, name in enumerate(self.task_names)] for k in self.shard_indices]
    self._executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="batch_assembly")

  def shard_counts(self, counts: np.ndarray) -> np.ndarray:
    """[shards of this process, tasks] examples each of its logical shards takes."""
    return mixing.host_counts(np.asarray(counts), self.num_data_shards)[
        self.shard_indices]

  def host_counts(self, counts: np.ndarray) -> np.ndarray:
    """This process's number of examples per task, from the global counts."""
    return self.shard_counts(counts).sum(axis=0)

  def next_batch(self, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Takes this process's rows of the global batch described by `counts`."""
    parts = [it.take(int(n))
             for its, row in zip(self.iterators, self.shard_counts(counts))
             for it, n in zip(its, row)]
    return {k: np.concatenate([p[k] for p in parts], axis=0)
            for k in parts[0]}

  def prefetch(self, counts: np.ndarray) -> concurrent.futures.Future:
    """Starts assembling the next batch on the background thread."""
    return self._executor.submit(self.next_batch, np.array(counts))

  def state(self) -> dict:
    """{task: [position of each of this process's logical shards]}."""
    return {name: [int(its[i].position) for its in self.iterators]
            for i, name in enumerate(self.task_names)}

  @property
  def skipped(self) -> int:
    return int(sum(self.skipped_by_task().values()))

  def skipped_by_task(self) -> dict[str, int]:
    """{task: records this process skipped}: unreadable records, plus (on the
    process reading logical shard 0) the records lost to damaged files."""
    counts = {}
    for i, name in enumerate(self.task_names):
      its = [shard[i] for shard in self.iterators]
      damaged = (getattr(its[0], "damaged_records", 0)
                 if self.shard_indices[0] == 0 else 0)
      counts[name] = int(sum(getattr(it, "skipped", 0) for it in its) + damaged)
    return counts

  def close(self) -> None:
    self._executor.shutdown(wait=True)


def resplit_positions(positions: dict | None, task_names: Sequence[str],
                      num_shards: int) -> dict[str, list[int]]:
  """Per-task, per-logical-shard start positions, re-split if S changed.

  Args:
    positions: {task: [position of shard 0, ..., shard N-1]} from a
      checkpoint (None for a fresh run).
    task_names: tasks of the mixture.
    num_shards: logical data shards of this run (M).

  Returns:
    {task: [M positions]}. With M == N, the saved positions unchanged (an
    exact resume, whatever the process count). With M != N, every new shard
    starts at ceil(total / M): the run keeps its epoch progress per task
    (the same number of examples consumed, to within one per shard) although
    shard membership changes, so examples are neither lost nor repeated
    beyond that rounding.
  """
  out = {}
  for name in task_names:
    saved = None if positions is None else positions.get(name)
    if saved is None:
      out[name] = [0] * num_shards
    elif len(saved) == num_shards:
      out[name] = [int(p) for p in saved]
    else:
      total = int(sum(saved))
      out[name] = [-(-total // num_shards)] * num_shards
  return out
