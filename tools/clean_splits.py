r"""Removes downstream evaluation images from every pretraining and training set.

  python tools/clean_splits.py --data_dir=data/real --out_dir=data/real_clean

Without --out_dir it only reports what would be removed. The report (12-in-1's
Table 7: images before, after and the share removed, per set) is printed and written to
`clean_splits_report.{md,json}` in out_dir (or data_dir). See
`dynpt/converters/clean.py` for how images are matched. An --out_dir that
resolves to --data_dir (a symlink to it too) cleans in place; one whose datasets or
splits are symlinks into --data_dir is refused with one `error:` line (exit 2).
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags

from dynpt import console

console.setup(__name__)  # Before TensorFlow loads: its start-up chatter is dropped.

from dynpt.converters import clean  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Converted data dir.", required=True)
_OUT_DIR = flags.DEFINE_string(
    "out_dir", None, "Where to write the cleaned data dir (default: report only; "
    "equal to --data_dir cleans in place).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  try:
    report = clean.clean_splits(_DATA_DIR.value, _OUT_DIR.value)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  print(clean.format_report(report), flush=True)


if __name__ == "__main__":
  console.run_app(main)
