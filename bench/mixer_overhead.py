"""Step time with the dynamic sampler versus a fixed-weight sampler, side by side.

Reproduces the host work of `dynpt.train.loop.train` on the toy config: batch s+1 is
assembled on the background thread from `sampler.counts(s+1)` while step s runs, and
step s-1's metrics are read and fed to `sampler.update` one step late. Both samplers
drive the same compiled step on the same toy world, alternating in blocks so that load
from other processes hits both alike. The fixed sampler replays the dynamic sampler's
counts step by step (`_Replay`): both runs then assemble the same batches, so the input
pipeline's work, which shares the cores with the step and depends on which tasks are
drawn, is the same on both sides. The end-to-end number is the median over rounds of
the paired ratio of block medians. Because whole-step noise on a shared machine is
larger than the 1% target, the sampler's own host time (counts + loss_weights + update)
is also timed call by call; that difference is the overhead the mixer adds.

  python bench/mixer_overhead.py --data_dir=/tmp/bench_data --steps=10 --rounds=3
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from bench import common  # noqa: E402
from dynpt import hostalloc  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/bench_data", "Toy world root.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per sampler per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
_SIZE = flags.DEFINE_string("size", "toy", "Size (bench/common.SIZES).")


class _Recording:
  """The dynamic sampler, keeping the counts it drew per step."""

  def __init__(self, sampler):
    self.inner = sampler
    self.drawn: dict[int, np.ndarray] = {}

  def counts(self, step):
    self.drawn[step] = np.asarray(self.inner.counts(step))
    return self.drawn[step]

  def __getattr__(self, name):
    return getattr(self.inner, name)


class _Replay:
  """A fixed-weight sampler that draws the dynamic sampler's counts of the same step.

  The control for the dynamic sampler: same batches task by task, so the input
  pipeline's work is the same, and only the sampler's own logic differs. A plain
  uniform sampler would also change which tasks' preprocessing runs beside the step.
  """

  def __init__(self, fixed, recording: _Recording):
    self.inner, self.recording = fixed, recording

  def counts(self, step):
    self.inner.counts(step)  # The fixed sampler's own work, kept in the timing.
    return self.recording.drawn[step]

  def __getattr__(self, name):
    return getattr(self.inner, name)


class _Run:
  """One sampler's share of the run: its sampler, its data and its timings."""

  def __init__(self, name: str, sampler, mixture_input):
    self.name = name
    self.sampler = sampler
    self.input = mixture_input
    self.step = 0
    self.step_times: list[float] = []
    self.sampler_times: list[float] = []
    self.block_medians: list[float] = []

  def block(self, sb: common.StepBench, sharding, steps: int) -> None:
    """`steps` steps in the loop's order (prefetch, step, late update)."""
    t = time.perf_counter()
    counts = self.sampler.counts(self.step)
    self.sampler_times.append(time.perf_counter() - t)
    future = self.input.prefetch(counts)
    pending = None
    block_times = []
    for _ in range(steps):
      t_step = time.perf_counter()
      batch = {k: jax.make_array_from_process_local_data(sharding, v)
               for k, v in future.result().items()}
      t = time.perf_counter()
      weights = jnp.asarray(self.sampler.loss_weights(self.step), jnp.float32)
      host = time.perf_counter() - t
      with sb.mesh:
        sb.state, metrics = sb.p_step(sb.state, batch, weights)
      if pending is not None:
        host += self._consume(*pending)
      pending = (self.step, metrics)
      self.step += 1
      t = time.perf_counter()
      counts = self.sampler.counts(self.step)
      host += time.perf_counter() - t
      future = self.input.prefetch(counts)
      jax.block_until_ready(metrics)
      block_times.append(time.perf_counter() - t_step)
      self.sampler_times.append(host)
    # The block's first step waits for a batch whose assembly nothing overlapped (the
    # loop overlaps it with the previous step), so it is left out of the timings.
    self.step_times += block_times[1:]
    self.block_medians.append(common.median(block_times[1:]))
    self._consume(*pending)
    future.result()  # Drop the look-ahead batch (the next block starts its own).

  def _consume(self, step: int, metrics) -> float:
    m = jax.device_get(metrics)
    tokens = np.asarray(m["task_tokens"], np.float64)
    sums = np.asarray(m["task_loss_sum"], np.float64)
    task_loss = np.where(tokens > 0, sums / np.maximum(tokens, 1), np.nan)
    t = time.perf_counter()
    self.sampler.counts(step)
    self.sampler.shares(step)
    self.sampler.update(step, task_loss)
    return time.perf_counter() - t


def main(argv):
  del argv
  import tasks
  from dynpt import mixing
  from dynpt.train import batching, partitioning

  common.ensure_toy_world(_DATA_DIR.value)
  size = common.SIZES[_SIZE.value]
  names = tasks.mixture_task_names("dynpt_24")
  sb = common.build_step(size)
  sharding = partitioning.batch_sharding(sb.mesh)
  dynamic = _Recording(mixing.make_sampler("dynamic", names, size.batch_size, window=20,
                                           min_per_task=1))
  fixed = mixing.make_sampler("fixed", names, size.batch_size,
                              weights=[1.0] * len(names), min_per_task=1)
  # Dynamic first in every round, so the replay finds the counts of its steps.
  samplers = {"dynamic": dynamic, "fixed": _Replay(fixed, dynamic)}
  runs = [_Run(n, s, batching.MixtureInput(
      names, sequence_length={"inputs": size.input_length, "targets": size.target_length},
      image_size=size.image_size, seed=0, data_dir=_DATA_DIR.value))
      for n, s in samplers.items()]
  try:
    for run in runs:  # Warm-up: compile, open every task's pipeline.
      run.block(sb, sharding, 2)
      run.step_times.clear()
      run.sampler_times.clear()
      run.block_medians.clear()
    for _ in range(_ROUNDS.value):
      for run in runs:
        run.block(sb, sharding, _STEPS.value)
  finally:
    for run in runs:
      run.input.close()
  records = []
  for run in runs:
    records.append({"sampler": run.name, "size": size.name, "steps": len(run.step_times),
                    "step_time_s": common.median(run.step_times),
                    "step_time_mean_s": float(np.mean(run.step_times)),
                    "sampler_host_s_per_step": float(np.mean(run.sampler_times))})
  dyn, fix = records
  # Paired by round: the two samplers' blocks of one round ran back to back, so their
  # ratio cancels the machine's slow drifts; the median over rounds drops outliers.
  ratios = [d / f for d, f in zip(runs[0].block_medians, runs[1].block_medians)]
  overhead = {
      "end_to_end": common.median(ratios) - 1.0,
      "sampler_host": (dyn["sampler_host_s_per_step"] - fix["sampler_host_s_per_step"])
                      / fix["step_time_s"],
  }
  for r in records:
    r["overhead_end_to_end"] = overhead["end_to_end"]
    r["overhead_sampler_host"] = overhead["sampler_host"]
  common.print_table(records, ["sampler", "steps", "step_time_s", "step_time_mean_s",
                               "sampler_host_s_per_step", "overhead_end_to_end",
                               "overhead_sampler_host"], title="mixer overhead (toy)")
  print("wrote", common.write_results("mixer_overhead", records))


if __name__ == "__main__":
  hostalloc.configure_process()
  app.run(main)
