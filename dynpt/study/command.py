"""What `tools/study.py` runs: the study's config, its checks, its plan, its cells, its report.

The tool only parses flags into a `Request`; everything between those flags and
the exit code is here, so a study can be started (and tested) without the
command line. A mistake in the flags or the config raises `StudyError` before
any cell runs: the tool prints it as one `error:` line and exits 1. `run`
returns 0 when every cell of its shard is done, `EXIT_CELLS_FAILED` when some
failed (the report lists them; running again retries them).

Task registration stays with the entry point (dynpt.study imports no `tasks`,
.importlinter): `run` calls the `register_tasks` it is given before it checks
the config's task and mixture names.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable, Sequence

from dynpt import fs
from dynpt.study import grid

EXIT_CELLS_FAILED = 2
# Cells and studies share their compilations (XLA keys them by program).
COMPILATION_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "dynpt", "jax")


class StudyError(Exception):
  """A mistake in the flags or the study's config, said in one line."""


@dataclasses.dataclass(frozen=True)
class Request:
  """The command line of a study (the flags of `tools/study.py`)."""
  gin_files: Sequence[str]
  bindings: Sequence[str]
  out_dir: str | None
  quick: bool = False
  shard: str = "0/1"
  cells: Sequence[str] = ()
  report_only: bool = False
  dry_run: bool = False
  pool_mixed: bool = False
  progress: bool = True
  jobs: int = 1


def load_config(gin_files: Sequence[str], bindings: Sequence[str],
                quick: bool) -> grid.StudyConfig:
  """The study's StudyConfig from gin; ValueError naming the problem."""
  import gin

  from dynpt import main as dynpt_main

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


def check_names(cfg: grid.StudyConfig) -> None:
  """Fails on a sampler, mixture, task or finetuning gin file that does not exist.

  The tasks and mixtures must be registered (`import tasks`) beforehand.
  """
  import seqio

  from dynpt import mixing
  from dynpt.data import task_registry
  from dynpt.study import provenance

  for sampler in list(cfg.samplers) + list(cfg.sweep_samplers):
    if sampler not in mixing.SAMPLERS:
      raise ValueError(f"StudyConfig: unknown sampler {sampler!r}; known: "
                       f"{sorted(mixing.SAMPLERS)}")
  for mixture in [cfg.mixture] + list(cfg.sweep_mixtures):
    try:
      task_registry.mixture_task_names(mixture)
    except ValueError:
      raise ValueError(f"StudyConfig: unknown mixture {mixture!r}; known mixtures: "
                       f"{sorted(task_registry.mixtures())} (or one registered task)") from None
  for task in cfg.downstream:
    if task not in seqio.TaskRegistry.names():
      raise ValueError(f"StudyConfig.downstream: unknown task {task!r}")
    path = grid.finetune_gin_file(cfg, task)
    if not (os.path.exists(path) or os.path.exists(os.path.join(provenance.GIN_DIR, path))):
      raise ValueError(f"StudyConfig.finetune_gin: {path} (task {task!r}) does not exist")


def study_provenance(cfg: grid.StudyConfig, gin_files: Sequence[str]) -> dict:
  """The commit this study runs from (and whether the tree is dirty) and the
  fingerprint of every gin file it reads (`dynpt.study.provenance`)."""
  from dynpt.study import provenance

  return provenance.of_gin_files(
      list(gin_files) + [cfg.pretrain_gin]
      + [grid.finetune_gin_file(cfg, task) for task in cfg.downstream])


def run(request: Request, register_tasks: Callable[[], None]) -> int:
  """Plans the study, runs the cells of its shard that are not done, writes the report.

  Prints the plan and its estimate, then where the report and results are.

  Returns:
    0, or `EXIT_CELLS_FAILED` when some cells failed.

  Raises:
    StudyError: a mistake in the flags or the config (nothing has run).
  """
  from dynpt.study import plan, report, runner, store, world

  if not request.out_dir:
    raise StudyError("--out_dir is required")
  if request.jobs < 1:
    raise StudyError(f"--jobs={request.jobs}: must be at least 1")
  try:
    out_dir = store.local_folder("--out_dir", request.out_dir)
    index, count = plan.parse_shard(request.shard)
    cfg = load_config(request.gin_files, request.bindings, request.quick)
    register_tasks()
    check_names(cfg)
    cells = plan.expand(cfg)
  except ValueError as e:
    raise StudyError(str(e)) from e
  try:
    fs.makedirs(out_dir)
  except OSError as e:
    raise StudyError(f"--out_dir={request.out_dir}: {e}") from e
  mine = plan.shard(cells, index, count)
  if request.cells:
    try:
      mine = plan.select(mine, request.cells)
    except ValueError as e:
      raise StudyError(str(e)) from e
  if not request.report_only:
    stale = runner.stale_cells(cfg, mine, out_dir)
    if stale:
      raise StudyError(f"{out_dir}: {len(stale)} cell(s) ran with another configuration "
                       f"({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}); "
                       "use a new --out_dir for a changed study (or delete those cells)")
  done = store.done_cells(out_dir)
  seconds, how = runner.estimate_seconds(cfg, mine, done)
  n_pre = sum(c.init == "pretrained" for c in cells)
  print(f"study: {len(cells)} cells ({n_pre} pretrained, {len(cells) - n_pre} from scratch), "
        f"{len(cfg.seeds)} seed(s), {cfg.pretrain_steps} pretraining / "
        f"{cfg.finetune_steps} finetuning steps{' (--quick)' if request.quick else ''}")
  print(f"shard {index}/{count}: {len(mine)} cells, {sum(c.name in done for c in mine)} "
        f"done; estimated {seconds / 60:.0f} min of cell time to go ({how})", flush=True)
  if request.dry_run:
    for cell in mine:
      print(f"  {cell.name}{' (done)' if cell.name in done else ''}")
    return 0
  failed = []
  if not request.report_only:
    if cfg.toy_scale is not None:
      try:
        world.build_world(cfg, out_dir, progress=request.progress)
      except ValueError as e:
        raise StudyError(f"StudyConfig.toy_*: {e}") from e
    env = {}
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
      env["JAX_COMPILATION_CACHE_DIR"] = COMPILATION_CACHE
    try:
      version = study_provenance(cfg, request.gin_files)
    except FileNotFoundError as e:
      raise StudyError(str(e)) from e
    failed = runner.run_cells(cfg, mine, out_dir, env=env, progress=request.progress,
                              jobs=request.jobs, provenance=version).failed
  try:
    path = report.write_report(cfg, cells, out_dir,
                               title=f"dynpt study ({', '.join(request.gin_files)})",
                               pool_mixed=request.pool_mixed)
  except ValueError as e:
    raise StudyError(f"{out_dir}: {e}") from e
  print(f"report: {path}")
  print(f"results: {os.path.join(out_dir, store.RESULTS)}")
  if failed:
    print(f"error: {len(failed)} cell(s) failed: {', '.join(failed)}; their logs are in "
          f"{os.path.join(out_dir, 'cells')}/<cell>/{runner.LOG}; run again to retry",
          file=sys.stderr)
    return EXIT_CELLS_FAILED
  return 0
