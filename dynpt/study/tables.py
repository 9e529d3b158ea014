"""The study's tables: Tables 4 and 5 and the findings, from `results.jsonl` rows.

Every number is a mean over seeds with its sample std, and every comparison to
uniform (or to the dynamic sampler) a paired difference over seeds with its
95% t-interval (`dynpt.study.stats`). Empty cells of a table say what is
missing instead of being left out.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Iterable, Mapping, Sequence

from dynpt.study import grid, stats

BASELINE = "uniform"
PAPER_SAMPLER = "dynamic"
MEAN_TASK = "mean"  # The average over downstream tasks, computed per seed.
LABELS = {
    "easiest": "easiest only", "hardest": "hardest only", "uniform": "uniform",
    "size": "by dataset size", "loss_reweight": "loss re-weighting",
    "dsg": "12-in-1 DSG round robin", "dynamic": "dynamic difficulty (paper)",
    "odm": "ODM (online data mixing)", "doremi": "DoReMi (online)",
    "ado": "ADO (adaptive data optimization)", "softmax": "softmax of losses",
    grid.SCRATCH: "no pretraining (scratch)",
}

# (sampler, mixture) -> task -> seed -> value
Table = dict[tuple[str, str], dict[str, dict[int, float]]]


def collect(rows: Iterable[Mapping[str, Any]]) -> Table:
  """Values by (sampler, mixture), task and seed, with the per-seed mean over tasks."""
  table: Table = collections.defaultdict(lambda: collections.defaultdict(dict))
  for r in rows:
    table[(r["sampler"], r["mixture"])][r["task"]][int(r["seed"])] = float(r["value"])
  for per_task in table.values():
    tasks = [t for t in per_task if t != MEAN_TASK]
    seeds = set.intersection(*(set(per_task[t]) for t in tasks)) if tasks else set()
    per_task[MEAN_TASK] = {s: sum(per_task[t][s] for t in tasks) / len(tasks)
                           for s in sorted(seeds)}
  return table


def _scratch_values(table: Table, task: str) -> dict[int, float]:
  return table.get((grid.SCRATCH, grid.SCRATCH), {}).get(task, {})


def _fmt_summary(values: Mapping[int, float]) -> str:
  s = stats.summarize(list(values.values()))
  if s.n == 0:
    return "missing"
  std = "–" if math.isnan(s.std) else f"{s.std:.1f}"
  return f"{s.mean:.1f} ± {std} (n={s.n})"


def fmt_diff(d: stats.PairedDifference) -> str:
  """'mean [low, high] (n)' of a paired difference, or what it lacks."""
  if d.n == 0:
    return "missing"
  if math.isnan(d.low):
    return f"{d.mean:+.1f} (n={d.n}, no interval)"
  return f"{d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}] (n={d.n})"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """A markdown table's lines."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return lines


def table4(cfg: grid.StudyConfig, table: Table) -> list[str]:
  tasks = list(cfg.downstream) + [MEAN_TASK]
  base = table.get((BASELINE, cfg.mixture), {})
  acc_rows, diff_rows = [], []
  for sampler in list(cfg.samplers) + [grid.SCRATCH]:
    key = (sampler, grid.SCRATCH if sampler == grid.SCRATCH else cfg.mixture)
    per_task = table.get(key, {})
    if sampler == grid.SCRATCH:
      per_task = collect_scratch(table, cfg.downstream)
    label = LABELS.get(sampler, sampler)
    acc_rows.append([label, f"`{sampler}`"] + [_fmt_summary(per_task.get(t, {})) for t in tasks])
    if sampler != BASELINE:
      diff_rows.append([label, f"`{sampler}`"] + [
          fmt_diff(stats.paired_difference(per_task.get(t, {}), base.get(t, {})))
          for t in tasks])
  header = ["method", "sampler"] + list(tasks)
  out = [f"## Table 4: pretraining methods on `{cfg.mixture}`, equal pretraining steps",
         "", f"Downstream accuracy (%, each task's official metric), mean ± std over seeds; "
         f"`{MEAN_TASK}` averages the tasks per seed. {cfg.pretrain_steps} pretraining "
         f"steps and {cfg.finetune_steps} finetuning steps per run.", ""]
  out += md_table(header, acc_rows)
  out += ["", f"Paired difference to `{BASELINE}` (percentage points), mean "
          "[95% t-interval] over seeds:", ""]
  out += md_table(header, diff_rows)
  return out + [""]


def collect_scratch(table: Table, tasks: Sequence[str]) -> dict[str, dict[int, float]]:
  """The scratch cells (one per task and seed) as one row, with its per-seed mean."""
  per_task = {t: dict(_scratch_values(table, t)) for t in tasks}
  seeds = set.intersection(*(set(v) for v in per_task.values())) if per_task else set()
  per_task[MEAN_TASK] = {s: sum(per_task[t][s] for t in tasks) / len(tasks)
                         for s in sorted(seeds)}
  return per_task


def table5(cfg: grid.StudyConfig, table: Table) -> list[str]:
  if not cfg.sweep_samplers:
    return []
  samplers = list(cfg.sweep_samplers)
  base = BASELINE if BASELINE in samplers else samplers[0]
  others = [s for s in samplers if s != base]
  mixtures = list(dict.fromkeys(list(cfg.sweep_mixtures) + [cfg.mixture]))
  header = ["mixture", "task"] + [f"`{s}`" for s in samplers] + [
      f"`{s}` − `{base}`" for s in others]
  rows = []
  for mixture in mixtures:
    for task in list(cfg.downstream) + [MEAN_TASK]:
      vals = {s: table.get((s, mixture), {}).get(task, {}) for s in samplers}
      rows.append([f"`{mixture}`", task] + [_fmt_summary(vals[s]) for s in samplers] + [
          fmt_diff(stats.paired_difference(vals[s], vals[base])) for s in others])
  out = ["## Table 5: mixtures of more tasks", "",
         "Downstream accuracy (%), mean ± std over seeds, and the paired difference "
         "[95% t-interval] over seeds.", ""]
  return out + md_table(header, rows) + [""]


def findings(cfg: grid.StudyConfig, table: Table) -> list[str]:
  """Plain sentences: which methods beat uniform and the dynamic sampler, by how much."""
  mean_of = lambda s: table.get((s, cfg.mixture), {}).get(MEAN_TASK, {})  # noqa: E731
  out = ["## Findings", "",
         f"Differences of the mean downstream accuracy over tasks on `{cfg.mixture}`, "
         "paired by seed, 95% t-interval; a method *beats* another only when the whole "
         "interval is above 0.", ""]
  rows = []
  for sampler in cfg.samplers:
    if sampler == BASELINE:
      continue
    vs_uniform = stats.paired_difference(mean_of(sampler), mean_of(BASELINE))
    row = [LABELS.get(sampler, sampler), fmt_diff(vs_uniform), vs_uniform.verdict]
    if sampler != PAPER_SAMPLER:
      vs_dynamic = stats.paired_difference(mean_of(sampler), mean_of(PAPER_SAMPLER))
      row += [fmt_diff(vs_dynamic), vs_dynamic.verdict]
    else:
      row += ["–", "–"]
    rows.append(row)
  out += md_table(["method", f"− {BASELINE}", "verdict", f"− {PAPER_SAMPLER}", "verdict"],
                   rows)
  out.append("")
  dyn = stats.paired_difference(mean_of(PAPER_SAMPLER), mean_of(BASELINE))
  if dyn.n:
    if math.isnan(dyn.low):
      out.append(f"- Whether the dynamic sampler beats uniform cannot be told from "
                 f"{dyn.n} paired seed(s): {fmt_diff(dyn)} points.")
    elif dyn.verdict == "better":
      out.append(f"- The dynamic sampler beats uniform at this scale by {fmt_diff(dyn)} "
                 "points.")
    else:
      out.append(f"- The dynamic sampler does **not** beat uniform at this scale: "
                 f"{fmt_diff(dyn)} points ({dyn.verdict}).")
  beat_u = [s for s in cfg.samplers if s != BASELINE and stats.paired_difference(
      mean_of(s), mean_of(BASELINE)).verdict == "better"]
  beat_d = [s for s in cfg.samplers if s not in (PAPER_SAMPLER,) and stats.paired_difference(
      mean_of(s), mean_of(PAPER_SAMPLER)).verdict == "better"]
  out.append(f"- Methods that beat uniform: {', '.join(f'`{s}`' for s in beat_u) or 'none'}.")
  out.append(f"- Methods that beat the dynamic sampler: "
             f"{', '.join(f'`{s}`' for s in beat_d) or 'none'}.")
  scratch = collect_scratch(table, cfg.downstream)[MEAN_TASK]
  transfer = stats.paired_difference(mean_of(BASELINE), scratch)
  if transfer.n:
    out.append(f"- Pretraining (uniform) against no pretraining: {fmt_diff(transfer)} "
               f"points ({transfer.verdict}). Where pretraining does not help at all, no "
               "choice of mixture can show an effect downstream.")
  dynamic = table.get((PAPER_SAMPLER, cfg.mixture), {})
  per_task = [(t, stats.paired_difference(dynamic.get(t, {}), _scratch_values(table, t)))
              for t in cfg.downstream]
  if any(d.n for _, d in per_task):
    out.append(f"- Dynamic `{cfg.mixture}` pretraining against no pretraining, per task: "
               + "; ".join(f"{t} {fmt_diff(d)} ({d.verdict})" for t, d in per_task if d.n)
               + ".")
  return out + [""]
