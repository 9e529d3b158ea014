r"""Exports a run's checkpoint: params only, the gin config, the vocabulary
path, and the T5X-layout text tower (see `dynpt.train.export`); or writes the
text tower of a run or an export for Hugging Face or T5X (`dynpt.interop`).

  python tools/export_checkpoint.py --run_dir=runs/demo [--out_dir=...] [--step=N]
  python tools/export_checkpoint.py --format=hf --run_dir=runs/demo --out_dir=hf/
  python tools/export_checkpoint.py --format=t5x --export_dir=exports/x --out_dir=t5x/

The model/data settings of a run are read from `<run_dir>/config.gin`.
`--format=hf` writes config.json, model.safetensors and spiece.model, which
`T5ForConditionalGeneration.from_pretrained` loads; `--format=t5x` writes a T5X
checkpoint folder (msgpack `checkpoint` + zarr arrays).
"""

from __future__ import annotations

import os
import sys
import tempfile

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dynpt import console, hostalloc  # noqa: E402

console.setup(__name__)  # Before TensorFlow and JAX load: their start-up chatter goes.

_FORMAT = flags.DEFINE_enum("format", "dynpt", ["dynpt", "hf", "t5x"],
                            "dynpt: the export finetuning reads; hf / t5x: the text "
                            "tower for Hugging Face / T5X.")
_RUN_DIR = flags.DEFINE_string("run_dir", None, "Run directory.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "An existing export (or import); "
                                  "--format=hf|t5x only.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Default (dynpt): <run_dir>/export.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default latest.")


def _export_run(run_dir: str, out_dir: str | None, step: int | None):
  from dynpt import fs
  from dynpt import main as dynpt_main

  config = fs.join(run_dir, "config.gin")
  if not fs.exists(config):
    sys.exit(f"error: {config} not found: is {run_dir} a dynpt run dir?")
  # Python literals (gin parses them): a path with ', " or \ stays one string.
  bindings = [f"RUN_DIR={run_dir!r}"]
  if out_dir:
    bindings.append(f"export.export.out_dir={out_dir!r}")
  if step is not None:
    bindings.append(f"export.export.step={step}")
  try:
    with fs.local_copy(config) as local_config:  # gin reads local files only.
      dynpt_main.parse_gin([fs.absolute(local_config)], bindings)
    return dynpt_main.run_mode("export")
  except (ValueError, OSError) as e:  # Also a restore stopped by the machine.
    sys.exit(f"error: {' '.join(str(e).split())}")


def main(argv) -> None:
  del argv
  fmt, run_dir, export_dir = _FORMAT.value, _RUN_DIR.value, _EXPORT_DIR.value
  if fmt == "dynpt":
    if not run_dir or export_dir:
      sys.exit("error: the dynpt export needs --run_dir (and takes no --export_dir)")
    print(_export_run(run_dir, _OUT_DIR.value, _STEP.value))
    return
  if bool(run_dir) == bool(export_dir):
    sys.exit(f"error: --format={fmt} needs exactly one of --run_dir and --export_dir")
  if not _OUT_DIR.value:
    sys.exit(f"error: --format={fmt} needs --out_dir")
  from dynpt.interop import exporter

  with tempfile.TemporaryDirectory() as tmp:
    if run_dir:
      export_dir = os.path.join(tmp, "export")
      _export_run(run_dir, export_dir, _STEP.value)
    try:
      result = exporter.export_text_tower(fmt, export_dir, _OUT_DIR.value)
    except (ValueError, OSError) as e:
      sys.exit(f"error: {' '.join(str(e).split())}")
  print(result)


if __name__ == "__main__":
  hostalloc.default_platforms()  # A CPU-only host: JAX's CPU backend, libtpu left alone.
  console.run_app(main)
