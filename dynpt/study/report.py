"""The study's report: `report.md` with Tables 4 and 5, the findings, and two PNGs.

Built only from `results.jsonl` rows and the cells' markers, so it merges
whatever cells exist (a partial study, shards from several machines). The
tables and findings are `tables`, the figures `figures`, the confirmatory
tests `confirm`; this module says which code made the rows, which cells are
done, and puts the sections together.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from absl import logging

from dynpt import fs
from dynpt.study import figures, grid, plan, provenance, shares, store, tables, world

REPORT = "report.md"
FIGURE1 = "figure1_pretrain_loss_vs_accuracy.png"
FIGURE2 = "figure2_shares.png"
FIGURE1_EXPLORATORY = "figure1_exploratory.png"


def difficulty_spread(cfg: grid.StudyConfig, out_dir: str) -> list[str]:
  """Per-task training losses of the first-seed uniform run: how far apart the tasks are.

  The dynamic sampler can only move the mixture as much as the tasks' losses
  differ; a narrow spread leaves it near uniform.
  """
  name = plan.pretrained_name(tables.BASELINE, cfg.mixture, list(cfg.seeds)[0])
  marker = store.read_json(os.path.join(store.cell_dir(out_dir, name), "stages",
                                        "pretrain_loss.json"))
  if not marker or not marker.get("task_loss"):
    return []
  losses = sorted(marker["task_loss"].items(), key=lambda kv: kv[1])
  lo, hi = losses[0], losses[-1]
  mid = losses[len(losses) // 2]
  return ["## Spread of task difficulty", "",
          f"Train-split loss per task after uniform pretraining (`{name}`): lowest "
          f"`{lo[0]}` {lo[1]:.3f}, median `{mid[0]}` {mid[1]:.3f}, highest `{hi[0]}` "
          f"{hi[1]:.3f} (ratio {hi[1] / max(lo[1], 1e-9):.1f}). The sampler's window, "
          "floor (`min_per_task`) and temperature act on these differences.", ""]


def confirmatory(cfg: grid.StudyConfig, table: tables.Table, out_dir: str) -> list[str]:
  """The declared contrasts, blind priors and the exploratory study (`confirm`)."""
  from dynpt.study import confirm, prior

  priors = {}
  if cfg.toy_scale is not None or cfg.data_dir:
    for task in cfg.downstream:
      try:
        priors[task] = prior.task_prior(world.data_dir(cfg, out_dir), task, cfg.eval_examples)
      except (ValueError, OSError) as e:
        logging.warning("blind prior of %s: %s", task, e)
  explored = None
  if cfg.exploratory_results:
    path = confirm.resolve(cfg.exploratory_results)
    if os.path.exists(path):
      explored = tables.collect(store.read_rows(path))
    else:
      logging.warning("exploratory results %s not found", path)
  return confirm.section(cfg, table, priors, explored)


def status_lines(cells: Sequence[plan.Cell], done: Mapping[str, Any],
                 failed: Mapping[str, Mapping[str, Any]]) -> list[str]:
  planned = {c.name for c in cells}
  out = ["## Cells", "", f"{len(planned & set(done))} of {len(planned)} planned cells "
         f"done; {len(planned & set(failed))} failed; "
         f"{len(planned - set(done) - set(failed))} not run yet."]
  extra = sorted(set(done) - planned)
  if extra:
    out.append(f"Also found {len(extra)} finished cell(s) outside this grid (not in the "
               f"tables): {', '.join(extra)}.")
  if failed:
    out += ["", "Failed cells (run the study again to retry them):", ""]
    out += [f"- `{name}`: {rec.get('error')} (exit {rec.get('returncode')}"
            + (f", log `{rec['log']}`)" if rec.get("log") else ")")
            for name, rec in sorted(failed.items())]
  return out + [""]


def provenance_lines(rows: Sequence[Mapping[str, Any]], pool_mixed: bool) -> list[str]:
  """Which code and gin files made the rows; ValueError when they differ, unless pooled."""
  versions = provenance.code_versions(rows)
  named = [f"commit `{c[:10]}`{' (dirty tree)' if d == 'True' else ''}, gin files `{g}`: "
           f"{n} rows" for (c, d, g), n in sorted(versions.items())]
  if len(versions) > 1 and not pool_mixed:
    raise ValueError(f"results.jsonl holds rows of {len(versions)} code versions "
                     f"({'; '.join(named)}); pass --pool_mixed to pool them in one report, "
                     "or run them into separate --out_dir")
  worlds = sorted({str(r.get("world_seed", "unrecorded")) for r in rows})
  head = ("Pooled (--pool_mixed) rows of different code versions: " if len(versions) > 1
          else "Every row comes from one code version: ")
  return [head + "; ".join(named) + f". World seed(s): {', '.join(worlds)}.", ""]


def write_report(cfg: grid.StudyConfig, cells: Sequence[plan.Cell], out_dir: str,
                 title: str = "dynpt study", pool_mixed: bool = False) -> str:
  """Merges the finished cells into results.jsonl and writes report.md and the PNGs.

  Raises:
    ValueError: the rows come from different commits or gin files and
      `pool_mixed` is False.
  """
  rows = store.merge_results(out_dir)
  done, failed = store.done_cells(out_dir), store.failed_cells(out_dir)
  table = tables.collect(rows)
  lines = [f"# {title}", "", f"Study directory `{fs.absolute(out_dir)}`; "
           f"{len(rows)} rows in `{store.RESULTS}`; seeds {list(cfg.seeds)}; downstream "
           f"tasks {list(cfg.downstream)}.", ""]
  lines += provenance_lines(rows, pool_mixed)
  lines += status_lines(cells, done, failed)
  if cfg.contrasts:
    lines += confirmatory(cfg, table, out_dir)
    lines += ["The tables below are descriptive: their paired differences are not the "
              "declared tests and are not corrected for multiplicity.", ""]
  else:
    lines += tables.findings(cfg, table)
  lines += tables.table4(cfg, table)
  lines += tables.table5(cfg, table)
  lines += figures.figure1(rows, cfg, os.path.join(out_dir, FIGURE1))
  if cfg.contrasts and cfg.exploratory_results:
    from dynpt.study import confirm

    path = confirm.resolve(cfg.exploratory_results)
    if os.path.exists(path):
      lines += figures.figure1(store.read_rows(path), cfg,
                               os.path.join(out_dir, FIGURE1_EXPLORATORY),
                               heading="Figure 1 of the exploratory study (tuned world, seeds 0-2)")
  lines += figures.figure2(cfg, out_dir, os.path.join(out_dir, FIGURE2))
  lines += shares.share_lines(cfg, out_dir)
  lines += difficulty_spread(cfg, out_dir)
  path = os.path.join(out_dir, REPORT)
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path
