"""Time per step on 1, 2 and 4 simulated CPU devices, and the sharded path's losses.

Each device count runs in its own subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (the flag is read when JAX starts).
The simulated devices share this machine's cores, so this measures the overhead of
the data-parallel (or fsdp) program, not a speed-up; the losses of the first steps must
agree across device counts to ~1e-5 (same init, same batch, only the reduction order
differs).

  python bench/scaling.py --devices=1,2,4 --size=toy
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from dynpt import hostalloc  # noqa: E402

_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4"], "Simulated device counts.")
_SIZE = flags.DEFINE_string("size", "toy", "Size (bench/common.SIZES).")
_STEPS = flags.DEFINE_integer("steps", 6, "Timed steps per device count.")
_CHILD = flags.DEFINE_bool("child", False, "Internal: measure in this process.")

_LOSS_STEPS = 3  # Steps whose losses are compared across device counts.


def child() -> None:
  import jax

  from bench import common

  size = common.SIZES[_SIZE.value]
  sb = common.build_step(size)
  losses = [sb.run() for _ in range(_LOSS_STEPS)]  # The first one compiles.
  times = common.time_calls(sb.run, _STEPS.value)
  print("RESULT " + json.dumps({
      "devices": jax.device_count(), "size": size.name, "batch_size": size.batch_size,
      "per_device_batch": size.batch_size // jax.device_count(),
      "step_time_s": common.median(times), "step_times_s": [round(t, 4) for t in times],
      "losses": losses}))


def main(argv):
  del argv
  if _CHILD.value:
    child()
    return
  from bench import common

  records = []
  for n in _DEVICES.value:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={int(n)}").strip()
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", f"--size={_SIZE.value}",
         f"--steps={_STEPS.value}"], env=env, capture_output=True, text=True, check=False)
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode or not lines:
      raise RuntimeError(f"scaling child with {n} devices failed "
                         f"(exit {out.returncode}):\n{out.stderr[-3000:]}")
    records.append(json.loads(lines[-1][len("RESULT "):]))
  ref = records[0]["losses"]
  for r in records:
    r["max_abs_loss_diff_vs_1"] = max(abs(a - b) for a, b in zip(r["losses"], ref))
    r["time_vs_1"] = r["step_time_s"] / records[0]["step_time_s"]
  common.print_table(records, ["devices", "per_device_batch", "step_time_s", "time_vs_1",
                               "max_abs_loss_diff_vs_1"],
                     title=f"scaling over simulated CPU devices ({_SIZE.value})")
  print("wrote", common.write_results("scaling", records))


if __name__ == "__main__":
  hostalloc.configure_process()
  app.run(main)
