"""Examples/s that the 24-task mixture delivers on its own, against what the step eats.

Builds the toy world (once, under --data_dir), then times `MixtureInput.next_batch`
with the dynamic sampler's counts for each size's batch and image size. The step's
consumption is read from bench/results/train_step.json when it is there. The loop
assembles batch s+1 on a thread while the device runs step s, so on a CPU both share
the cores: the pipeline must be several times faster than the step, not just faster.

  python bench/input_pipeline.py --data_dir=/tmp/bench_data --sizes=toy,small
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from dynpt import hostalloc  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", "/tmp/bench_data", "Toy world root.")
_SIZES = flags.DEFINE_list("sizes", ["toy", "small"], "Sizes (batch, image size).")
_EXAMPLES = flags.DEFINE_integer(
    "examples", 6144, "Timed examples per size; well above what the per-task "
    "buffers and tf.data prefetch hold (24 tasks x 3 x 32), so the rate is sustained.")
_MIXTURE = flags.DEFINE_string("mixture", "dynpt_24", "Mixture to read.")


def _step_examples_per_s() -> dict[str, float]:
  path = os.path.join(common.RESULTS_DIR, "train_step.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {r["size"]: r["examples_per_s"] for r in json.load(f)["records"]}


def measure(size_name: str, task_names: list[str]) -> dict:
  from dynpt import mixing
  from dynpt.train import batching

  size = common.SIZES[size_name]
  sampler = mixing.make_sampler("dynamic", task_names, size.batch_size, window=20,
                                min_per_task=min(1, size.batch_size // len(task_names)))
  t0 = time.perf_counter()
  mi = batching.MixtureInput(
      task_names, sequence_length={"inputs": size.input_length,
                                   "targets": size.target_length},
      image_size=size.image_size, seed=0, data_dir=_DATA_DIR.value)
  try:
    first = time.perf_counter()
    mi.next_batch(np.ones(len(task_names), np.int64))  # Opens every task's pipeline.
    open_s = time.perf_counter() - first
    times = []
    for step in range(-(-_EXAMPLES.value // size.batch_size)):
      counts = sampler.counts(step)
      t = time.perf_counter()
      batch = mi.next_batch(counts)
      times.append(time.perf_counter() - t)
    shapes = {k: list(v.shape) for k, v in batch.items()}
  finally:
    mi.close()
  # The mean, not the median: a task refills its 32-example buffer only every few
  # batches, so most calls are copies and a few carry the decoding.
  per_batch = float(np.mean(times))
  return {"size": size_name, "batch_size": size.batch_size, "image_size": size.image_size,
          "tasks": len(task_names), "construct_s": round(first - t0, 2),
          "first_batch_s": round(open_s, 2), "batch_time_s": per_batch,
          "examples_per_s": size.batch_size / per_batch,
          "batch_time_median_s": common.median(times),
          "batch_time_max_s": max(times), "shapes": shapes}


def main(argv):
  del argv
  import tasks

  build_s = common.ensure_toy_world(_DATA_DIR.value)
  names = tasks.mixture_task_names(_MIXTURE.value)
  consumed = _step_examples_per_s()
  records = []
  for name in _SIZES.value:
    rec = measure(name, names)
    rec["toy_world_build_s"] = round(build_s, 1)
    rec["step_examples_per_s"] = consumed.get(name)
    if rec["step_examples_per_s"]:
      rec["headroom"] = rec["examples_per_s"] / rec["step_examples_per_s"]
    records.append(rec)
    common.print_table(records, ["size", "batch_size", "image_size", "batch_time_s",
                                 "examples_per_s", "step_examples_per_s", "headroom",
                                 "first_batch_s"], title="input pipeline (24 tasks)")
  print("wrote", common.write_results("input_pipeline", records))


if __name__ == "__main__":
  hostalloc.configure_process()
  app.run(main)
