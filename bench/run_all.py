"""Runs the CPU-sized benchmark set (`make bench`), each script in its own process.

Order matters: train_step.json is written first so that input_pipeline.py can compare
what the pipeline delivers with what the step consumes. The default set, as listed below
(12 mixer rounds), took 758 s on the idle 2-core development machine on 2026-11-25 (toy
world already built; its first build adds about 5 minutes).

  python bench/run_all.py [--data_dir=/tmp/bench_data] [--all]

--all adds the extras that do not fit the 20-minute budget (the bf16 A/B).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
  data_dir = next((a.split("=", 1)[1] for a in sys.argv[1:]
                   if a.startswith("--data_dir=")), "/tmp/bench_data")
  runs = [
      ("train_step.py", []),
      # The ResNet speed-ups against the original flax layers (bench/patches.py).
      ("resnet_trunk.py", ["--size=small",
                           "--versions=reference,conv1x1,norm,autodiff_kgrad,current"]),
      # The 3x3/7x7 kernel gradients, XLA's own against im2col, per layer shape.
      ("conv_kernel_grad.py", []),
      ("ab_step.py", ["--sizes=toy,small", "--variants=reference,current"]),
      ("input_pipeline.py", [f"--data_dir={data_dir}"]),
      # 12 rounds: with 3 the paired median moved by +-2% from run to run.
      ("mixer_overhead.py", [f"--data_dir={data_dir}", "--rounds=12"]),
      ("scaling.py", []),
  ]
  if "--all" in sys.argv[1:]:
    # Extras outside the 20-minute set: bf16 against fp32 on this CPU (4-5 minutes).
    runs.append(("ab_step.py", ["--sizes=small", "--variants=current,current_bf16",
                                "--out=ab_step_bf16"]))
  start = time.time()
  failed = []
  for script, args in runs:
    t = time.time()
    print(f"\n### {script} {' '.join(args)}", flush=True)
    code = subprocess.call([sys.executable, os.path.join(BENCH, script), *args])
    print(f"### {script}: exit {code} after {time.time() - t:.0f} s", flush=True)
    if code:
      failed.append(script)
  print(f"\nbench finished in {time.time() - start:.0f} s; results in "
        f"{os.path.join(BENCH, 'results')}; failed: {failed or 'none'}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
