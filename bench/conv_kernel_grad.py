"""Kernel gradient of the ResNet's kxk convolutions: XLA's own against im2col, per layer.

For each layer shape (the toy, small and base trunks' 3x3 and 7x7 convolutions at their
benchmark batches, and a few batches around them) times the jitted kernel gradient two
ways, alternating in `--rounds` rounds: autodiff of `lax.conv_general_dilated` (what
XLA:CPU computes by itself) and `dynpt.models.cpu_kernels.conv.kernel_gradient` (one
im2col matrix product). The table shows which is faster and whether `conv.im2col_applies` picks
im2col for the shape; that rule's bounds were set from these numbers (docs/performance.md).

  python bench/conv_kernel_grad.py [--rounds=10]
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from dynpt import hostalloc  # noqa: E402
from dynpt.models.cpu_kernels import conv  # noqa: E402

_ROUNDS = flags.DEFINE_integer("rounds", 10, "Alternating rounds per layer.")

# (label, batch, input H = W, C_in, C_out, kernel, stride)
LAYERS = [
    ("toy stem", 96, 64, 3, 8, 7, 2),
    ("toy block1 3x3", 96, 16, 8, 8, 3, 1),
    ("toy block2 3x3/2", 96, 16, 16, 16, 3, 2),
    ("toy block3 3x3", 96, 4, 32, 32, 3, 1),
    ("small stem", 8, 224, 3, 64, 7, 2),
    ("small block1 3x3", 8, 56, 64, 64, 3, 1),
    ("small block2 3x3/2", 8, 56, 128, 128, 3, 2),
    ("small block2 3x3", 8, 28, 128, 128, 3, 1),
    ("small block3 3x3", 8, 14, 256, 256, 3, 1),
    ("base stem", 4, 224, 3, 64, 7, 2),
    ("base block1 3x3", 4, 56, 64, 64, 3, 1),
    ("base block2 3x3/2", 4, 56, 128, 128, 3, 2),
    ("base block2 3x3", 4, 28, 128, 128, 3, 1),
    ("batch 2 block1 3x3", 2, 56, 64, 64, 3, 1),
    ("batch 16 block2 3x3", 16, 28, 128, 128, 3, 1),
    ("batch 16 block3 3x3", 16, 14, 256, 256, 3, 1),
    ("batch 32 block3 3x3", 32, 14, 256, 256, 3, 1),
]


def _time(fn, args) -> float:
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  records = []
  for label, n, h, c_in, c_out, k, s in LAYERS:
    x = jax.numpy.asarray(rng.standard_normal((n, h, h, c_in), np.float32))
    w = jax.numpy.asarray(rng.standard_normal((k, k, c_in, c_out), np.float32))
    g = jax.numpy.asarray(rng.standard_normal(
        (n, -(-h // s), -(-h // s), c_out), np.float32))
    autodiff = jax.jit(lambda x, w, g: jax.vjp(
        lambda w: conv.same_conv(x, w, s), w)[1](g)[0])  # noqa: B023
    im2col = jax.jit(lambda x, w, g: conv.kernel_gradient(x, g, w.shape, s))  # noqa: B023
    fns = {"autodiff": autodiff, "im2col": im2col}
    outs = {name: fn(x, w, g) for name, fn in fns.items()}
    err = float(np.max(np.abs(outs["im2col"] - outs["autodiff"]))
                / np.max(np.abs(outs["autodiff"])))
    times = {name: [] for name in fns}
    for _ in range(_ROUNDS.value):
      for name, fn in fns.items():
        times[name].append(_time(fn, (x, w, g)))
    gflop = 2 * n * g.shape[1] * g.shape[2] * k * k * c_in * c_out / 1e9
    rec = {"layer": label, "x_shape": [n, h, h, c_in], "kernel": [k, k, c_in, c_out],
           "strides": s, "gflop": gflop, "max_rel_diff": err,
           "rule_picks_im2col": conv.im2col_applies(x.shape, w.shape, s)}
    for name in fns:
      rec[f"{name}_ms"] = common.median(times[name]) * 1e3
      rec[f"{name}_gflop_per_s"] = gflop / rec[f"{name}_ms"] * 1e3
    rec["im2col_speedup"] = rec["autodiff_ms"] / rec["im2col_ms"]
    rec["rule_is_right"] = rec["rule_picks_im2col"] == (rec["im2col_speedup"] > 1.0)
    records.append(rec)
  common.print_table(records, ["layer", "gflop", "autodiff_ms", "im2col_ms",
                               "im2col_speedup", "rule_picks_im2col", "rule_is_right"],
                     title="3x3/7x7 kernel gradients: XLA's own vs im2col")
  wrong = [r["layer"] for r in records if not r["rule_is_right"]]
  print(f"rule agrees with the faster method on {len(records) - len(wrong)}/{len(records)}"
        f" layers{'; not on: ' + ', '.join(wrong) if wrong else ''}")
  print(f"wrote {common.write_results('conv_kernel_grad', records)}")


if __name__ == "__main__":
  hostalloc.configure_process()
  app.run(main)
