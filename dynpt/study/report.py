"""The study's report: `report.md` with Tables 4 and 5, the findings, and two PNGs.

Built only from `results.jsonl` rows and the cells' markers, so it merges
whatever cells exist (a partial study, shards from several machines). Every
number is a mean over seeds with its sample std, and every comparison to
uniform (or to the dynamic sampler) a paired difference over seeds with its
95% t-interval (`dynpt.study.stats`). Empty cells of a table say what is
missing instead of being left out.
"""

from __future__ import annotations

import collections
import math
import os
from typing import Any, Iterable, Mapping, Sequence

from absl import logging

from dynpt.study import grid, stats, store

REPORT = "report.md"
FIGURE1 = "figure1_pretrain_loss_vs_accuracy.png"
FIGURE2 = "figure2_shares.png"
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


def _fmt_diff(d: stats.PairedDifference) -> str:
  if d.n == 0:
    return "missing"
  if math.isnan(d.low):
    return f"{d.mean:+.1f} (n={d.n}, no interval)"
  return f"{d.mean:+.1f} [{d.low:+.1f}, {d.high:+.1f}] (n={d.n})"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
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
          _fmt_diff(stats.paired_difference(per_task.get(t, {}), base.get(t, {})))
          for t in tasks])
  header = ["method", "sampler"] + list(tasks)
  out = [f"## Table 4: pretraining methods on `{cfg.mixture}`, equal pretraining steps",
         "", f"Downstream accuracy (%, each task's official metric), mean ± std over seeds; "
         f"`{MEAN_TASK}` averages the tasks per seed. {cfg.pretrain_steps} pretraining "
         f"steps and {cfg.finetune_steps} finetuning steps per run.", ""]
  out += _md_table(header, acc_rows)
  out += ["", f"Paired difference to `{BASELINE}` (percentage points), mean "
          "[95% t-interval] over seeds:", ""]
  out += _md_table(header, diff_rows)
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
          _fmt_diff(stats.paired_difference(vals[s], vals[base])) for s in others])
  out = ["## Table 5: mixtures of more tasks", "",
         "Downstream accuracy (%), mean ± std over seeds, and the paired difference "
         "[95% t-interval] over seeds.", ""]
  return out + _md_table(header, rows) + [""]


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
    row = [LABELS.get(sampler, sampler), _fmt_diff(vs_uniform), vs_uniform.verdict]
    if sampler != PAPER_SAMPLER:
      vs_dynamic = stats.paired_difference(mean_of(sampler), mean_of(PAPER_SAMPLER))
      row += [_fmt_diff(vs_dynamic), vs_dynamic.verdict]
    else:
      row += ["–", "–"]
    rows.append(row)
  out += _md_table(["method", f"− {BASELINE}", "verdict", f"− {PAPER_SAMPLER}", "verdict"],
                   rows)
  out.append("")
  dyn = stats.paired_difference(mean_of(PAPER_SAMPLER), mean_of(BASELINE))
  if dyn.n:
    if math.isnan(dyn.low):
      out.append(f"- Whether the dynamic sampler beats uniform cannot be told from "
                 f"{dyn.n} paired seed(s): {_fmt_diff(dyn)} points.")
    elif dyn.verdict == "better":
      out.append(f"- The dynamic sampler beats uniform at this scale by {_fmt_diff(dyn)} "
                 "points.")
    else:
      out.append(f"- The dynamic sampler does **not** beat uniform at this scale: "
                 f"{_fmt_diff(dyn)} points ({dyn.verdict}).")
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
    out.append(f"- Pretraining (uniform) against no pretraining: {_fmt_diff(transfer)} "
               f"points ({transfer.verdict}). Where pretraining does not help at all, no "
               "choice of mixture can show an effect downstream.")
  dynamic = table.get((PAPER_SAMPLER, cfg.mixture), {})
  per_task = [(t, stats.paired_difference(dynamic.get(t, {}), _scratch_values(table, t)))
              for t in cfg.downstream]
  if any(d.n for _, d in per_task):
    out.append(f"- Dynamic `{cfg.mixture}` pretraining against no pretraining, per task: "
               + "; ".join(f"{t} {_fmt_diff(d)} ({d.verdict})" for t, d in per_task if d.n)
               + ".")
  return out + [""]


def difficulty_spread(cfg: grid.StudyConfig, out_dir: str) -> list[str]:
  """Per-task training losses of the first-seed uniform run: how far apart the tasks are.

  The dynamic sampler can only move the mixture as much as the tasks' losses
  differ; a narrow spread leaves it near uniform.
  """
  name = grid.pretrained_name(BASELINE, cfg.mixture, list(cfg.seeds)[0])
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


def figure1(rows: Sequence[Mapping[str, Any]], cfg: grid.StudyConfig, path: str) -> list[str]:
  """Scatter of pretraining loss against mean downstream accuracy, with Pearson's r."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  by_cell: dict[str, dict[str, Any]] = {}
  for r in rows:
    if r["init"] == "pretrained" and r.get("pretrain_loss") is not None:
      by_cell.setdefault(r["cell"], {"loss": r["pretrain_loss"], "mixture": r["mixture"],
                                     "values": {}})["values"][r["task"]] = r["value"]
  points = [(c["loss"], sum(c["values"].values()) / len(c["values"]), c["mixture"])
            for c in by_cell.values() if len(c["values"]) == len(cfg.downstream)]
  if not points:
    return []
  r_all = stats.pearson([p[0] for p in points], [p[1] for p in points])
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for mixture in dict.fromkeys(p[2] for p in points):
    xs = [p[0] for p in points if p[2] == mixture]
    ys = [p[1] for p in points if p[2] == mixture]
    ax.scatter(xs, ys, label=mixture, alpha=0.8)
  ax.set_xlabel("pretraining loss (train split, mean over the mixture's tasks)")
  ax.set_ylabel("downstream accuracy (%, mean over tasks)")
  ax.set_title(f"Figure 1: Pearson r = {r_all:.2f} over {len(points)} runs")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  per_task = []
  for task in cfg.downstream:
    pairs = [(c["loss"], c["values"][task]) for c in by_cell.values() if task in c["values"]]
    r = stats.pearson([p[0] for p in pairs], [p[1] for p in pairs])
    per_task.append(f"`{task}` r = {r:.2f} (n={len(pairs)})")
  return ["## Figure 1: pretraining loss against downstream accuracy", "",
          f"![Figure 1]({os.path.basename(path)})", "",
          f"Pearson r over all pretrained runs: {r_all:.2f} (n={len(points)}); per task: "
          + "; ".join(per_task) + ". The losses of mixtures of different tasks are "
          "averages over different task sets.", ""]


def figure2(cfg: grid.StudyConfig, out_dir: str, path: str) -> list[str]:
  """The shares of the mixture's tasks over training, from one run's history."""
  from dynpt.mixing import history, plot

  name = grid.pretrained_name(cfg.figure2_sampler, cfg.mixture, list(cfg.seeds)[0])
  record = store.read_json(os.path.join(store.cell_dir(out_dir, name), store.DONE))
  if not record or not record.get("pretrain_run_dir"):
    return [f"Figure 2 needs the finished cell `{name}`.", ""]
  hist = os.path.join(record["pretrain_run_dir"], history.HISTORY_FILENAME)
  try:
    records, _ = history.read_history(hist)
  except ValueError as e:
    logging.warning("figure 2: %s", e)
    return [f"Figure 2: {e}", ""]
  plot.plot_history(records, path, title=f"Figure 2: shares over training ({name})")
  return ["## Figure 2: task shares over training", "",
          f"![Figure 2]({os.path.basename(path)})", "",
          f"From `{hist}` ({len(records)} sampler updates).", ""]


def status_lines(cells: Sequence[grid.Cell], done: Mapping[str, Any],
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


def write_report(cfg: grid.StudyConfig, cells: Sequence[grid.Cell], out_dir: str,
                 title: str = "dynpt study") -> str:
  """Merges the finished cells into results.jsonl and writes report.md and the PNGs."""
  rows = store.merge_results(out_dir)
  done, failed = store.done_cells(out_dir), store.failed_cells(out_dir)
  table = collect(rows)
  lines = [f"# {title}", "", f"Study directory `{os.path.abspath(out_dir)}`; "
           f"{len(rows)} rows in `{store.RESULTS}`; seeds {list(cfg.seeds)}; downstream "
           f"tasks {list(cfg.downstream)}.", ""]
  lines += status_lines(cells, done, failed)
  lines += findings(cfg, table)
  lines += table4(cfg, table)
  lines += table5(cfg, table)
  lines += figure1(rows, cfg, os.path.join(out_dir, FIGURE1))
  lines += figure2(cfg, out_dir, os.path.join(out_dir, FIGURE2))
  lines += difficulty_spread(cfg, out_dir)
  path = os.path.join(out_dir, REPORT)
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path
