r"""Exports a run's checkpoint: params only, the gin config, the vocabulary
path, and the T5X-layout text tower (see `dynpt.train.export`).

  python tools/export_checkpoint.py --run_dir=runs/demo [--out_dir=...] [--step=N]

The model/data settings are read from `<run_dir>/config.gin`.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run directory.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Default: <run_dir>/export.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default latest.")


def main(argv) -> None:
  del argv
  from dynpt import main as dynpt_main

  config = os.path.join(_RUN_DIR.value, "config.gin")
  if not os.path.exists(config):
    sys.exit(f"error: {config} not found: is {_RUN_DIR.value} a dynpt run dir?")
  bindings = [f"RUN_DIR='{_RUN_DIR.value}'"]
  if _OUT_DIR.value:
    bindings.append(f"export.export.out_dir='{_OUT_DIR.value}'")
  if _STEP.value is not None:
    bindings.append(f"export.export.step={_STEP.value}")
  dynpt_main.parse_gin([os.path.abspath(config)], bindings)
  print(dynpt_main.run_mode("export"))


if __name__ == "__main__":
  app.run(main)
