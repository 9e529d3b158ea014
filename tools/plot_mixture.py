r"""Plots a run's task mixture over training (the paper's Figure 2).

Usage:
  python tools/plot_mixture.py <run_dir> [--out=PNG]

Reads `<run_dir>/mixture_history.jsonl` (written by the trainer, one line per
sampler update) and writes a PNG with each task's share of the batch and its
loss vs step; by default `<run_dir>/mixture.png`. Corrupt lines are skipped
and counted.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags

# Run from a checkout without installing: make `dynpt` importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dynpt import console  # noqa: E402

console.setup(__name__)  # Before TensorFlow and JAX load: their start-up chatter goes.

from dynpt import fs  # noqa: E402
from dynpt.mixing import history  # noqa: E402
from dynpt.mixing import plot  # noqa: E402

_OUT = flags.DEFINE_string("out", None, "PNG to write (default <run_dir>/mixture.png).")


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError("usage: plot_mixture.py <run_dir> [--out=PNG]")
  run_dir = argv[1]
  path = fs.join(run_dir, history.HISTORY_FILENAME)
  try:
    records, skipped = history.read_history(path)
  except ValueError as e:
    sys.exit(f"error: {e}")
  out = _OUT.value or fs.join(run_dir, "mixture.png")
  plot.plot_history(records, out, title=fs.basename(fs.absolute(run_dir)))
  print(f"wrote {out} ({len(records)} records, {skipped} corrupt lines skipped)")


if __name__ == "__main__":
  console.run_app(main)
