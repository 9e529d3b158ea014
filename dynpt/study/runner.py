"""Runs the study's cells: one worker process per cell, finished cells skipped.

The runner writes each cell's spec (the gin files and bindings of each
stage, `dynpt.study.cell`), starts `python -m dynpt.study.cell` on it, and
waits. A worker that fails, hangs past `cell_timeout_s` or is killed leaves a
`failed.json` with its exit code and the tail of its log; the study goes on
with the next cell and the report lists the failure. A cell whose reference
(DoReMi's uniform run) is not done is not started and is recorded as failed
for that reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Mapping, Sequence

from absl import logging

from dynpt import fs
from dynpt.study import grid, plan, store, world
from dynpt.study.cell import SPEC

LOG = "worker.log"
LOG_TAIL_CHARS = 4000


def cell_spec(cfg: grid.StudyConfig, cell: plan.Cell, out_dir: str) -> dict[str, Any]:
  """Everything the worker of `cell` needs, as plain JSON."""
  out_dir = fs.absolute(out_dir)
  directory = store.cell_dir(out_dir, cell.name)
  data = world.data_dir(cfg, out_dir)
  spec: dict[str, Any] = {
      "name": cell.name, "sampler": cell.sampler, "mixture": cell.mixture,
      "seed": cell.seed, "init": cell.init, "out_dir": out_dir, "cell_dir": directory,
      "pretrain": None, "finetune": []}
  if cell.init == "pretrained":
    run_dir = os.path.join(directory, "pretrain")
    options = sampler_options(cfg, cell)
    if cell.reference is not None:
      options.update(reference_run_dir=os.path.join(
          store.cell_dir(out_dir, cell.reference), "pretrain"),
                     num_steps=cfg.pretrain_steps)
    values = {"RUN_DIR": run_dir, "DATA_DIR": data, "MIXTURE": cell.mixture,
              "SAMPLER": cell.sampler, "SAMPLER_OPTIONS": options, "SEED": cell.seed,
              "NUM_STEPS": cfg.pretrain_steps,
              "WARMUP_STEPS": grid.warmup_steps(cfg, cfg.pretrain_steps),
              **cfg.common_bindings, **cfg.pretrain_bindings}
    spec["pretrain"] = {"gin_files": [cfg.pretrain_gin], "bindings": bindings(values),
                        "run_dir": run_dir, "loss_fraction": cfg.pretrain_loss_fraction}
  for task in cell.tasks:
    run_dir = os.path.join(directory, f"finetune_{task}")
    values = {"RUN_DIR": run_dir, "DATA_DIR": data, "SEED": cell.seed,
              "NUM_STEPS": cfg.finetune_steps,
              "WARMUP_STEPS": grid.warmup_steps(cfg, cfg.finetune_steps),
              "EVAL_EVERY": cfg.finetune_steps,  # One evaluation, after the last step.
              **({} if cfg.eval_examples is None else {"EVAL_EXAMPLES": cfg.eval_examples}),
              **cfg.common_bindings, **cfg.finetune_bindings}
    spec["finetune"].append({"task": task, "run_dir": run_dir,
                             "gin_files": [grid.finetune_gin_file(cfg, task)],
                             "bindings": bindings(values)})
  spec["fingerprint"] = fingerprint(spec)
  spec["world_seed"] = cfg.world_seed
  return spec


def gin_literal(value: Any) -> str:
  """A Python value as gin writes it (gin parses Python literals)."""
  if isinstance(value, float) and not math.isfinite(value):
    raise ValueError(f"gin cannot express the value {value}")
  if isinstance(value, Mapping):
    return "{" + ", ".join(f"{gin_literal(k)}: {gin_literal(v)}"
                           for k, v in value.items()) + "}"
  if isinstance(value, (list, tuple)):
    inner = ", ".join(gin_literal(v) for v in value)
    return f"({inner},)" if isinstance(value, tuple) and len(value) == 1 else (
        f"({inner})" if isinstance(value, tuple) else f"[{inner}]")
  return repr(value)


def bindings(values: Mapping[str, Any]) -> list[str]:
  """`NAME=VALUE` gin binding lines, in order."""
  return [f"{name}={gin_literal(value)}" for name, value in values.items()]


def fingerprint(spec: dict[str, Any]) -> str:
  """A digest of what the cell computes: its gin files, their contents and bindings.

  The contents cover every gin file a stage reads, the files it `include`s
  too (`_gin_contents`), so an edited config makes the finished cells stale
  instead of mixing two configurations in one report. The study directory's
  own path is left out, so cells copied in from a shard that ran elsewhere
  match.
  """
  what = {"pretrain": spec["pretrain"] and dict(
              {k: spec["pretrain"][k] for k in ("gin_files", "bindings", "loss_fraction")},
              gin_contents=_gin_contents(spec["pretrain"]["gin_files"])),
          "finetune": [dict({k: f[k] for k in ("task", "gin_files", "bindings")},
                            gin_contents=_gin_contents(f["gin_files"]))
                       for f in spec["finetune"]]}
  text = json.dumps(what, sort_keys=True).replace(spec["out_dir"], "<out_dir>")
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _gin_contents(gin_files: Sequence[str]) -> str:
  """A digest of the contents of `gin_files` and every file they include
  (`provenance.gin_fingerprint`), found as the worker's gin finds them (the
  current directory, then `dynpt.main`'s search paths); 'missing: ...' when one
  is not found (the cell then fails naming it)."""
  from dynpt import main as dynpt_main
  from dynpt.study import provenance

  try:
    return provenance.gin_fingerprint(gin_files, dynpt_main._default_search_paths())
  except FileNotFoundError as e:
    return f"missing: {e}"


def stale_cells(cfg: grid.StudyConfig, cells: Sequence[plan.Cell], out_dir: str) -> list[str]:
  """Cells finished under another configuration than `cfg`'s.

  Their results would silently mix two configurations into one table, so the
  study refuses to continue in that directory. (A cell that only started
  under another configuration is set aside when it runs: `run_one`.)
  """
  stale = []
  for cell in cells:
    old = store.read_json(os.path.join(store.cell_dir(out_dir, cell.name), store.DONE))
    if old and old.get("fingerprint") != fingerprint(cell_spec(cfg, cell, out_dir)):
      stale.append(cell.name)
  return stale


def _set_aside_if_changed(spec: dict[str, Any]) -> None:
  """Moves an unfinished cell's directory away when its configuration changed.

  Its stage markers and checkpoints belong to the old configuration (for
  example a failed cell whose sampler options were then fixed); they move to
  `<out_dir>/stale/<cell>-<time>` rather than being deleted.
  """
  directory = spec["cell_dir"]
  old = store.read_json(os.path.join(directory, SPEC))
  if old is None or old.get("fingerprint") == spec["fingerprint"]:
    return
  target = os.path.join(spec["out_dir"], "stale",
                        f"{spec['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
  os.makedirs(os.path.dirname(target), exist_ok=True)
  os.replace(directory, target)
  logging.warning("cell %s: its configuration changed since it last ran; the old "
                  "directory is now %s", spec["name"], target)


def sampler_options(cfg: grid.StudyConfig, cell: plan.Cell) -> dict[str, Any]:
  """The cell's SAMPLER_OPTIONS: the config's, plus what the cell decides.

  A sampler that draws at random (takes `seed`) gets the cell's seed unless
  the config sets one, so seeds differ in the draws too.
  """
  import inspect

  from dynpt import mixing

  options = dict(cfg.sampler_options.get(cell.sampler, {}))
  cls = mixing.SAMPLERS.get(cell.sampler)
  if cls is not None and "seed" in inspect.signature(cls.__init__).parameters:
    options.setdefault("seed", cell.seed)
  return options


def predicted_seconds(cfg: grid.StudyConfig, cell: plan.Cell) -> float:
  """The prior estimate of one cell's wall time (StudyConfig's seconds_per_*)."""
  pretrained = cell.init == "pretrained"
  return (cfg.seconds_per_run * (pretrained + len(cell.tasks))
          + pretrained * cfg.pretrain_steps * cfg.seconds_per_pretrain_step
          + len(cell.tasks) * cfg.finetune_steps * cfg.seconds_per_finetune_step)


def estimate_seconds(cfg: grid.StudyConfig, cells: Sequence[plan.Cell],
                     done: dict[str, dict[str, Any]]) -> tuple[float, str]:
  """(seconds the cells not yet done will take, how that was estimated).

  Cells of this study that finished already calibrate the prior: it is
  scaled by the median of their measured over predicted times.
  """
  by_name = {c.name: c for c in cells}
  timed = [(r["seconds"], predicted_seconds(cfg, by_name[n]))
           for n, r in done.items() if n in by_name and r.get("seconds")]
  scale, how = 1.0, "prior (StudyConfig.seconds_per_*)"
  if timed:
    # The median ratio: the first cells also fill the compilation cache.
    scale = statistics.median(t / max(p, 1e-9) for t, p in timed)
    how = f"prior x {scale:.2f}, the median over {len(timed)} finished cell(s)"
  todo = [c for c in cells if c.name not in done]
  return scale * sum(predicted_seconds(cfg, c) for c in todo), how


@dataclasses.dataclass
class RunSummary:
  ran: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  failed: list[str] = dataclasses.field(default_factory=list)


def run_cells(cfg: grid.StudyConfig, cells: Sequence[plan.Cell], out_dir: str,
              env: dict[str, str] | None = None, progress: bool = True,
              jobs: int = 1, provenance: dict[str, Any] | None = None) -> RunSummary:
  """Runs every cell of `cells` that is not done; never raises for a cell.

  With `jobs` > 1 that many workers run at once (a cell waits for its
  reference); a worker spends much of its time in single-threaded work
  (starting Python, building the input pipeline, compiling), so two workers
  on two cores finish a grid sooner than one. Cells start in grid order.
  `provenance` (the code's commit, the gin files' fingerprint:
  `dynpt.study.provenance`) goes into each cell's spec and rows.
  """
  import concurrent.futures

  from dynpt import console

  if jobs < 1:
    raise ValueError(f"jobs={jobs}: must be at least 1")
  _STOPPING.clear()
  summary = RunSummary()
  pending = list(cells)
  names = {c.name for c in cells}
  failed_here: set[str] = set()
  running: dict[concurrent.futures.Future, plan.Cell] = {}

  def blocked(cell: plan.Cell) -> bool:
    """The cell's reference is in this run and has not ended yet."""
    ref = cell.reference
    return (ref is not None and ref in names and ref not in failed_here
            and not store.is_done(out_dir, ref))

  with console.progress(total=len(cells), desc="study", unit="cell", enabled=progress,
                        file=sys.stdout) as bar, \
      concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
    try:
      while pending or running:
        for cell in list(pending):
          if len(running) >= jobs:
            break
          if store.is_done(out_dir, cell.name):
            pending.remove(cell)
            summary.skipped.append(cell.name)
            bar.update(1)
          elif cell.reference is not None and (
              cell.reference in failed_here
              or (cell.reference not in names and not store.is_done(out_dir, cell.reference))):
            pending.remove(cell)
            why = (f"its reference cell {cell.reference} "
                   + ("failed" if cell.reference in failed_here else "is not done"))
            store.mark_failed(out_dir, cell.name, {"returncode": None, "error": why,
                                                   "time": time.time()})
            summary.failed.append(cell.name)
            failed_here.add(cell.name)
            logging.warning("cell %s not started: %s", cell.name, why)
            bar.update(1)
          elif not blocked(cell):
            pending.remove(cell)
            running[pool.submit(run_one, cfg, cell, out_dir, env, provenance)] = cell
            bar.set_postfix_str(", ".join(c.name for c in running.values()))
        if not running:
          for cell in pending:  # Unreachable with `plan.order`ed cells; never spin.
            store.mark_failed(out_dir, cell.name, {
                "returncode": None, "time": time.time(),
                "error": f"its reference cell {cell.reference} did not run"})
            summary.failed.append(cell.name)
          break
        finished, _ = concurrent.futures.wait(
            running, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in finished:
          cell = running.pop(future)
          if future.result():
            summary.ran.append(cell.name)
          else:
            summary.failed.append(cell.name)
            failed_here.add(cell.name)
          bar.update(1)
    except BaseException:  # Ctrl-C / SIGTERM of the study: stop the workers too.
      _stop_workers()
      raise
  return summary


_LIVE: set[subprocess.Popen] = set()
_STOPPING = threading.Event()


def _stop_workers() -> None:
  _STOPPING.set()
  for proc in list(_LIVE):
    proc.terminate()
  for proc in list(_LIVE):
    proc.wait()


def run_one(cfg: grid.StudyConfig, cell: plan.Cell, out_dir: str,
            env: dict[str, str] | None = None,
            provenance: dict[str, Any] | None = None) -> bool:
  """Runs one cell's worker; True when it finished, else its failure is recorded."""
  spec = cell_spec(cfg, cell, out_dir)
  spec["provenance"] = dict(provenance or {})
  _set_aside_if_changed(spec)
  directory = spec["cell_dir"]
  os.makedirs(directory, exist_ok=True)
  spec_path = os.path.join(directory, SPEC)
  store.write_json_atomic(spec_path, spec)
  log_path = os.path.join(directory, LOG)
  t0 = time.time()
  with open(log_path, "ab") as log:
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} cell {cell.name}\n".encode())
    log.flush()
    proc = subprocess.Popen([sys.executable, "-m", "dynpt.study.cell", spec_path],
                            stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, **(env or {})))
    _LIVE.add(proc)
    try:
      code = proc.wait(timeout=cfg.cell_timeout_s)
      error = None if code == 0 else _error_line(log_path)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
      code, error = None, f"no result after {cfg.cell_timeout_s:.0f} s (cell_timeout_s)"
    except BaseException:  # Ctrl-C / SIGTERM of the study: stop the worker too.
      proc.terminate()
      proc.wait()
      raise
    finally:
      _LIVE.discard(proc)
  if _STOPPING.is_set():  # The study was stopped: the cell is not a failure, it resumes.
    return False
  if code == 0 and store.is_done(out_dir, cell.name):
    return True
  if code == 0:
    error = "the worker exited 0 without writing its done marker"
  store.mark_failed(out_dir, cell.name, {
      "returncode": code, "error": error, "seconds": round(time.time() - t0, 2),
      "log": log_path, "log_tail": _tail(log_path), "time": time.time()})
  logging.warning("cell %s failed (exit %s): %s; log: %s", cell.name, code, error, log_path)
  return False


def _tail(path: str) -> str:
  with open(path, "rb") as f:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - LOG_TAIL_CHARS))
    return f.read().decode(errors="replace")


def _error_line(log_path: str) -> str:
  """The worker's `error:` line, else the last line of its log (a traceback's)."""
  lines = [ln for ln in _tail(log_path).splitlines() if ln.strip()]
  for line in reversed(lines):
    if line.startswith("error:"):
      return line[len("error:"):].strip()
  return lines[-1].strip() if lines else "no output"
