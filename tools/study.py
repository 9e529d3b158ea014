r"""The pretraining-mixture study: a resumable grid of cells, then a report.

  python tools/study.py --gin_file=study/default.gin --out_dir=studies/default
  python tools/study.py --gin_file=study/default.gin --out_dir=studies/quick --quick
  python tools/study.py --gin_file=study/default.gin --out_dir=DIR --shard=0/4
  python tools/study.py --gin_file=study/default.gin --out_dir=DIR --jobs=2
  python tools/study.py --gin_file=study/default.gin --out_dir=DIR --report_only

Each cell (sampler x mixture x seed: pretrain -> pretraining loss -> export ->
finetune and evaluate on every downstream task; or one from-scratch
finetuning per task and seed) runs in its own worker process
(`dynpt.study.cell`). A finished cell is never run again, so running the same
command after a crash or a kill continues where it stopped. `--shard=i/N`
runs every N-th group of cells (for N machines or array tasks sharing
`--out_dir`); `--jobs=N` runs N cells at once on this machine; `--cell=NAME` runs named cells only (with their references); `--report_only`
merges whatever cells exist into
`results.jsonl`, `report.md` and the figures. `--quick` keeps
StudyConfig.quick_seeds seeds and scales the steps by quick_step_scale.
docs/study.md explains the grid, the columns and how to scale it out; what
runs between these flags and the exit code is `dynpt.study.command`.

Exit codes: 0 every cell of this shard is done; 1 a mistake in the flags or
the config (one `error:` line); 2 some cells failed (listed in the report;
run again to retry them).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dynpt import console  # noqa: E402

# The study process only plans and waits; its workers are the ones computing
# (each cell's log: cells/<cell>/worker.log).
console.setup(__name__)

from absl import flags, logging  # noqa: E402

# Defines --gin_file and --gin_bindings (`--gin.NAME=VALUE`), shared with dynpt.main.
from dynpt import main as dynpt_main  # noqa: E402

EXIT_ERROR = 1

FLAGS = flags.FLAGS
_OUT_DIR = flags.DEFINE_string("out_dir", None, "The study directory (cells, results, report).")
_QUICK = flags.DEFINE_bool("quick", False, "Fewer seeds and steps (StudyConfig.quick_*).")
_SHARD = flags.DEFINE_string("shard", "0/1", "Run shard i of N ('i/N', 0 <= i < N).")
_CELL = flags.DEFINE_multi_string(
    "cell", [], "Run only these cells (names as --dry_run lists them), with their references; "
    "e.g. one cell per SLURM array task.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False,
                                 "Run no cell: merge the existing ones and write the report.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the plan and the estimate; run nothing.")
_POOL_MIXED = flags.DEFINE_bool(
    "pool_mixed", False, "Report rows of different commits or gin files together (the "
    "report names each); without it such a results.jsonl is refused.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar over cells.")
_JOBS = flags.DEFINE_integer(
    "jobs", 1, "Cells run at once on this machine (each in its own worker process); "
    "2 on a 2-core CPU overlaps one cell's compiling with another's training.")


def _error(message: str) -> None:
  from dynpt.study import cell

  print(f"error: {cell.clean_error(message)}", file=sys.stderr, flush=True)
  sys.exit(EXIT_ERROR)


def _register_tasks() -> None:
  import tasks  # noqa: F401  (this entry point registers the tasks, as the gin files do)


def main(argv) -> None:
  if len(argv) > 1:
    _error(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  from dynpt.study import command

  request = command.Request(
      gin_files=FLAGS.gin_file, bindings=FLAGS.gin_bindings, out_dir=_OUT_DIR.value,
      quick=_QUICK.value, shard=_SHARD.value, cells=_CELL.value,
      report_only=_REPORT_ONLY.value, dry_run=_DRY_RUN.value, pool_mixed=_POOL_MIXED.value,
      progress=_PROGRESS.value, jobs=_JOBS.value)
  try:
    code = command.run(request, register_tasks=_register_tasks)
  except command.StudyError as e:
    _error(str(e))
  if code:
    sys.exit(code)


def run() -> None:
  # `--gin=NAME=VALUE` is accepted as well as t5x's `--gin.NAME=VALUE`.
  argv = ["--gin_bindings=" + a[len("--gin="):] if a.startswith("--gin=") else a
          for a in sys.argv]
  console.run_app(main, argv=dynpt_main.rewrite_gin_args(argv))


if __name__ == "__main__":
  run()
