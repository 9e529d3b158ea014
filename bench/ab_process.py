"""Whole train step, this tree against another checkout, in paired child processes (A/B).

`bench/ab_step.py` compares variants inside one process; that cannot compare two ways
of setting up the process itself (the malloc settings and CPU dispatch mode of
`dynpt.hostalloc` hold for a whole process) or two versions of the library. Here each
measurement is a fresh child process that imports `dynpt` and `bench` from one source
tree, sets the process up as that tree's entry points do (`hostalloc.configure_process`
or, in older trees, `hostalloc.reexec_with_tuned_allocator`), builds the step with its
`bench/common.py`, compiles it, takes 3 warm-up steps and times `--steps` more. The
children alternate, baseline first, for `--rounds` rounds, so load from other processes
on a shared machine hits both sides alike; the table gives each side's median over all
its timed steps and the ratio, and the page faults per timed step (the cost the malloc
settings exist to avoid). Each child also reports a fingerprint of the optimized
HLO of its step, so the table says whether both sides compiled the very same program
(then any difference is the process set-up), and the first loss.

  git archive main | tar -x -C /tmp/dynpt_main
  python bench/ab_process.py --baseline=/tmp/dynpt_main --sizes=toy,small --rounds=3
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from bench import common  # noqa: E402

_BASELINE = flags.DEFINE_string("baseline", None, "Source tree of the baseline (A).",
                                required=True)
_SIZES = flags.DEFINE_list("sizes", ["toy", "small"], "Sizes to measure.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds (one child per side).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per child (x4 at toy).")
_OUT = flags.DEFINE_string("out", "ab_process", "Results file name (no .json).")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The child: set the process up as the tree's entry points do, then time the step.
_CHILD = r"""
import hashlib, json, re, resource, statistics, sys, time
from dynpt import hostalloc
setup = getattr(hostalloc, "configure_process", None)
(setup or hostalloc.reexec_with_tuned_allocator)()
from bench import common
size, steps = common.SIZES[sys.argv[1]], int(sys.argv[2])
sb = common.build_step(size)
compiled, compile_s = sb.compile()
hlo = re.sub(r", metadata=\{[^}]*\}", "", compiled.as_text())
losses, times = [], []
for i in range(3 + steps):
  if i == 3:
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  t = time.perf_counter()
  with sb.mesh:
    sb.state, metrics = compiled(sb.state, sb.batch, sb.weights)
  losses.append(float(metrics["loss"]))
  if i >= 3:
    times.append(time.perf_counter() - t)
print("RESULT", json.dumps({
    "times": times, "loss": losses[0], "compile_s": compile_s,
    "hlo_sha": hashlib.sha256(hlo.encode()).hexdigest()[:16],
    "minflt": resource.getrusage(resource.RUSAGE_SELF).ru_minflt,
    "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps}))
"""


def _child(tree: str, size: str, steps: int) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES",)
         and not k.startswith("DYNPT_HOST_ALLOCATOR")}
  env["PYTHONPATH"] = tree
  proc = subprocess.run([sys.executable, "-c", _CHILD, size, str(steps)], cwd=tree,
                        env=env, capture_output=True, text=True)
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"child in {tree} failed:\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def measure(size_name: str, baseline: str) -> list[dict]:
  steps = _STEPS.value * (4 if size_name == "toy" else 1)
  sides = {"before": baseline, "after": ROOT}
  runs: dict[str, list[dict]] = {side: [] for side in sides}
  for r in range(_ROUNDS.value):
    for side, tree in sides.items():
      runs[side].append(_child(tree, size_name, steps))
      print(f"{size_name} round {r + 1} {side}: median "
            f"{common.median(runs[side][-1]['times']):.4f} s", flush=True)
  base = common.median([t for run in runs["before"] for t in run["times"]])
  records = []
  for side, tree in sides.items():
    times = [t for run in runs[side] for t in run["times"]]
    step_s = common.median(times)
    records.append({
        "size": size_name, "side": side, "tree": os.path.abspath(tree),
        "step_time_s": step_s, "min_step_time_s": min(times),
        "per_process_median_s": [round(common.median(run["times"]), 4)
                                 for run in runs[side]],
        "after_over_before": step_s / base,
        "hlo_sha": sorted({run["hlo_sha"] for run in runs[side]}),
        "loss": runs[side][0]["loss"],
        "minflt_per_process": [run["minflt"] for run in runs[side]],
        "faults_per_timed_step": [round(run["faults_per_step"]) for run in runs[side]]})
  return records


def main(argv):
  del argv
  if not os.path.isdir(os.path.join(_BASELINE.value, "dynpt")):
    raise app.UsageError(f"--baseline={_BASELINE.value}: not a dynpt source tree")
  records = []
  for name in _SIZES.value:
    if name not in common.SIZES:
      raise app.UsageError(f"--sizes: unknown size {name!r}; known: {sorted(common.SIZES)}")
    records += measure(name, _BASELINE.value)
    common.print_table(records, ["size", "side", "step_time_s", "min_step_time_s",
                                 "after_over_before", "per_process_median_s",
                                 "faults_per_timed_step", "hlo_sha", "loss"], title="train step, paired processes")
  print(f"wrote {common.write_results(_OUT.value, records)}")


if __name__ == "__main__":
  app.run(main)
