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
docs/study.md explains the grid, the columns and how to scale it out.

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
EXIT_CELLS_FAILED = 2
COMPILATION_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "dynpt", "jax")

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


def load_config(gin_files, bindings, quick: bool):
  """The study's StudyConfig from gin; ValueError naming the problem."""
  import gin

  from dynpt.study import grid

  if not gin_files:
    raise ValueError("--gin_file is required (e.g. --gin_file=study/default.gin)")
  dynpt_main.parse_gin(gin_files, bindings)
  try:
    cfg = gin.get_configurable(grid.StudyConfig)()
  except (TypeError, ValueError) as e:
    raise ValueError(f"{', '.join(gin_files)}: {e}") from e
  finally:
    gin.clear_config()
  if not isinstance(cfg, grid.StudyConfig):
    raise ValueError(f"{', '.join(gin_files)} does not configure dynpt.study.grid.StudyConfig")
  return cfg.quick() if quick else cfg


def check_names(cfg) -> None:
  """Fails on a sampler, mixture, task or finetuning gin file that does not exist."""
  import seqio

  import tasks  # noqa: F401  (this entry point registers the tasks, as the gin files do)
  from tasks import mixtures
  from dynpt import mixing
  from dynpt.data import task_registry
  from dynpt.study import grid

  for sampler in list(cfg.samplers) + list(cfg.sweep_samplers):
    if sampler not in mixing.SAMPLERS:
      raise ValueError(f"StudyConfig: unknown sampler {sampler!r}; known: "
                       f"{sorted(mixing.SAMPLERS)}")
  for mixture in [cfg.mixture] + list(cfg.sweep_mixtures):
    try:
      task_registry.mixture_task_names(mixture)
    except ValueError:
      raise ValueError(f"StudyConfig: unknown mixture {mixture!r}; known mixtures: "
                       f"{sorted(mixtures.MIXTURES)} (or one registered task)") from None
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "gin_configs")
  for task in cfg.downstream:
    if task not in seqio.TaskRegistry.names():
      raise ValueError(f"StudyConfig.downstream: unknown task {task!r}")
    path = grid.finetune_gin_file(cfg, task)
    if not (os.path.exists(path) or os.path.exists(os.path.join(root, path))):
      raise ValueError(f"StudyConfig.finetune_gin: {path} (task {task!r}) does not exist")


def study_provenance(cfg, gin_files) -> dict:
  """The commit this study runs from (and whether the tree is dirty) and the
  fingerprint of every gin file it reads (`dynpt.study.provenance`)."""
  from dynpt.study import grid, provenance

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  search = [os.path.join(root, "gin_configs")]
  files = (list(gin_files) + [cfg.pretrain_gin]
           + [grid.finetune_gin_file(cfg, task) for task in cfg.downstream])
  return {**provenance.code_version(root),
          "gin_fingerprint": provenance.gin_fingerprint(files, search)}


def main(argv) -> None:
  if len(argv) > 1:
    _error(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  from dynpt.study import plan, report, runner, store, world

  if not _OUT_DIR.value:
    _error("--out_dir is required")
  if _JOBS.value < 1:
    _error(f"--jobs={_JOBS.value}: must be at least 1")
  out_dir = os.path.abspath(_OUT_DIR.value)
  try:
    index, count = plan.parse_shard(_SHARD.value)
    cfg = load_config(FLAGS.gin_file, FLAGS.gin_bindings, _QUICK.value)
    check_names(cfg)
    cells = plan.expand(cfg)
  except ValueError as e:
    _error(str(e))
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    _error(f"--out_dir={_OUT_DIR.value}: {e}")
  mine = plan.shard(cells, index, count)
  if _CELL.value:
    try:
      mine = plan.select(mine, _CELL.value)
    except ValueError as e:
      _error(str(e))
  if not _REPORT_ONLY.value:
    stale = runner.stale_cells(cfg, mine, out_dir)
    if stale:
      _error(f"{out_dir}: {len(stale)} cell(s) ran with another configuration "
             f"({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}); "
             "use a new --out_dir for a changed study (or delete those cells)")
  done = store.done_cells(out_dir)
  seconds, how = runner.estimate_seconds(cfg, mine, done)
  n_pre = sum(c.init == "pretrained" for c in cells)
  print(f"study: {len(cells)} cells ({n_pre} pretrained, {len(cells) - n_pre} from scratch), "
        f"{len(cfg.seeds)} seed(s), {cfg.pretrain_steps} pretraining / "
        f"{cfg.finetune_steps} finetuning steps{' (--quick)' if _QUICK.value else ''}")
  print(f"shard {index}/{count}: {len(mine)} cells, {sum(c.name in done for c in mine)} "
        f"done; estimated {seconds / 60:.0f} min of cell time to go ({how})", flush=True)
  if _DRY_RUN.value:
    for cell in mine:
      print(f"  {cell.name}{' (done)' if cell.name in done else ''}")
    return
  failed = []
  if not _REPORT_ONLY.value:
    if cfg.toy_scale is not None:
      try:
        world.build_world(cfg, out_dir, progress=_PROGRESS.value)
      except ValueError as e:
        _error(f"StudyConfig.toy_*: {e}")
    env = {}
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
      # Cells and studies share their compilations (XLA keys them by program).
      env["JAX_COMPILATION_CACHE_DIR"] = COMPILATION_CACHE
    try:
      version = study_provenance(cfg, FLAGS.gin_file)
    except FileNotFoundError as e:
      _error(str(e))
    failed = runner.run_cells(cfg, mine, out_dir, env=env, progress=_PROGRESS.value,
                              jobs=_JOBS.value, provenance=version).failed
  try:
    path = report.write_report(cfg, cells, out_dir,
                               title=f"dynpt study ({', '.join(FLAGS.gin_file)})",
                               pool_mixed=_POOL_MIXED.value)
  except ValueError as e:
    _error(f"{out_dir}: {e}")
  print(f"report: {path}")
  print(f"results: {os.path.join(out_dir, store.RESULTS)}")
  if failed:
    print(f"error: {len(failed)} cell(s) failed: {', '.join(failed)}; their logs are in "
          f"{os.path.join(out_dir, 'cells')}/<cell>/{runner.LOG}; run again to retry",
          file=sys.stderr)
    sys.exit(EXIT_CELLS_FAILED)


def run() -> None:
  # `--gin=NAME=VALUE` is accepted as well as t5x's `--gin.NAME=VALUE`.
  argv = ["--gin_bindings=" + a[len("--gin="):] if a.startswith("--gin=") else a
          for a in sys.argv]
  console.run_app(main, argv=dynpt_main.rewrite_gin_args(argv))


if __name__ == "__main__":
  run()
