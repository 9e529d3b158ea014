"""Whole train step, two or more variants side by side in one process (A/B).

Each variant is the step as the trainer builds it (bench/common.py), compiled with some
ResNet layers switched back to their pre-speed-up versions (bench/patches.py) and/or
another compute dtype. After compilation the variants take turns for `--rounds` rounds
of `--steps` steps, so load from other processes on the shared machine hits them alike;
the table reports the median step of each and its speed-up over the first variant. All
variants start from the same params and batch, so their losses must agree (to float
rounding, or to bf16 precision for a bf16 variant): the table prints the first losses.

  python bench/ab_step.py --sizes=toy,small --variants=reference,conv1x1,current
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from bench import common, patches  # noqa: E402
from dynpt import hostalloc  # noqa: E402

# name -> (bench/patches.py version of the ResNet layers, compute dtype)
VARIANTS = {**{name: (name, "float32") for name in patches.VERSIONS},
            "current_bf16": ("current", "bfloat16"),
            "reference_bf16": ("reference", "bfloat16")}

_SIZES = flags.DEFINE_list("sizes", ["toy", "small"], "Sizes to measure.")
_VARIANTS = flags.DEFINE_list("variants", ["reference", "current"],
                              f"Variants, first is the baseline; known: {sorted(VARIANTS)}.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Alternating rounds.")
_STEPS = flags.DEFINE_integer("steps", 1, "Timed steps per variant per round (x4 at toy).")
_OUT = flags.DEFINE_string("out", "ab_step", "Results file name (no .json).")


class _Variant:
  """One compiled step with its own train state."""

  def __init__(self, name: str, size: common.Size):
    version, dtype = VARIANTS[name]
    self.name = name
    with patches.reference_layers(patches.VERSIONS[version]):
      self.bench = common.build_step(size, dtype=None if dtype == "float32" else dtype)
      self.compiled, self.compile_s = self.bench.compile()
    self.times: list[float] = []
    self.losses: list[float] = []

  def run(self) -> None:
    sb = self.bench
    t = time.perf_counter()
    with sb.mesh:
      sb.state, metrics = self.compiled(sb.state, sb.batch, sb.weights)
    self.losses.append(float(metrics["loss"]))
    self.times.append(time.perf_counter() - t)


def measure(size_name: str) -> list[dict]:
  size = common.SIZES[size_name]
  variants = [_Variant(name, size) for name in _VARIANTS.value]
  for v in variants:  # First call: warm-up, not timed.
    v.run()
    v.times.clear()
  steps = _STEPS.value * (4 if size_name == "toy" else 1)
  for _ in range(_ROUNDS.value):
    for v in variants:
      for _ in range(steps):
        v.run()
  base = common.median(variants[0].times)
  records = []
  for v in variants:
    step_s = common.median(v.times)
    records.append({
        "size": size_name, "variant": v.name, "layers": VARIANTS[v.name][0],
        "dtype": VARIANTS[v.name][1], "batch_size": size.batch_size,
        "step_time_s": step_s, "min_step_time_s": min(v.times),
        "step_times_s": [round(t, 4) for t in v.times],
        "examples_per_s": size.batch_size / step_s, "speedup": base / step_s,
        "compile_s": round(v.compile_s, 2), "losses": [round(x, 5) for x in v.losses[:4]],
        "mfu": size.batch_size / step_s * v.bench.flops().train / common.peak_flops(),
    })
    del v.bench, v.compiled
  return records


def main(argv):
  del argv
  unknown = set(_VARIANTS.value) - set(VARIANTS)
  if unknown:
    raise ValueError(f"--variants: unknown {sorted(unknown)}; known: {sorted(VARIANTS)}")
  records = []
  for name in _SIZES.value:
    if name not in common.SIZES:
      raise ValueError(f"--sizes: unknown size {name!r}; known: {sorted(common.SIZES)}")
    records += measure(name)
    common.print_table(records, ["size", "variant", "dtype", "step_time_s", "min_step_time_s",
                                 "examples_per_s", "speedup", "mfu", "compile_s", "losses"],
                       title="train step A/B")
  print(f"wrote {common.write_results(_OUT.value, records)}")


if __name__ == "__main__":
  hostalloc.configure_process()
  app.run(main)
