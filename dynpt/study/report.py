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
FIGURE1_EXPLORATORY = "figure1_exploratory.png"
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


# The paper's Figure 1 relates pretraining loss and downstream accuracy with a
# positive sign (the mixtures with the higher training loss transferred better;
# issue 29 reads it so): a negative r here has the opposite sign.
PAPER_FIGURE1_SIGN = +1


def sampler_points(rows: Sequence[Mapping[str, Any]], downstream: Sequence[str]
                   ) -> list[dict[str, Any]]:
  """One point per (sampler, mixture): per-seed pretraining loss and task-mean accuracy.

  Seeds with every downstream task count. A sampler whose per-seed values all
  equal another's (the same runs, e.g. DSG before it had a signal) joins that
  point rather than counting twice.
  """
  by_cell: dict[str, dict[str, Any]] = {}
  for r in rows:
    if r["init"] == "pretrained" and r.get("pretrain_loss") is not None:
      by_cell.setdefault(r["cell"], {"key": (r["sampler"], r["mixture"]), "seed": r["seed"],
                                     "loss": r["pretrain_loss"], "values": {}}
                         )["values"][r["task"]] = r["value"]
  groups: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
  for c in by_cell.values():
    if all(t in c["values"] for t in downstream):
      acc = sum(c["values"][t] for t in downstream) / len(downstream)
      groups.setdefault(c["key"], {})[int(c["seed"])] = (float(c["loss"]), acc)
  points: list[dict[str, Any]] = []
  for key, seeds in groups.items():
    twin = next((p for p in points if p["seeds"] == seeds), None)
    if twin is not None:
      twin["samplers"].append(key[0])
      continue
    loss = stats.summarize([v[0] for v in seeds.values()])
    acc = stats.summarize([v[1] for v in seeds.values()])
    points.append({"samplers": [key[0]], "mixture": key[1], "seeds": seeds,
                   "loss": loss, "accuracy": acc})
  return points


def figure1(rows: Sequence[Mapping[str, Any]], cfg: grid.StudyConfig, path: str,
            heading: str = "Figure 1: pretraining loss against downstream accuracy"
            ) -> list[str]:
  """Pretraining loss against mean downstream accuracy: one point per sampler.

  Each point is the mean over seeds, its error bars the seeds' standard
  deviation; Pearson's r is over the points (independent runs, not seeds),
  with a Fisher-z 95% interval, and its sign is compared with the paper's.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  points = sampler_points(rows, cfg.downstream)
  if not points:
    return []
  xs = [p["loss"].mean for p in points]
  ys = [p["accuracy"].mean for p in points]
  r = stats.pearson(xs, ys)
  low, high = stats.pearson_interval(r, len(points))
  zero = lambda v: 0.0 if math.isnan(v) else v  # noqa: E731
  fig, ax = plt.subplots(figsize=(6.5, 4.8))
  for mixture in dict.fromkeys(p["mixture"] for p in points):
    mine = [p for p in points if p["mixture"] == mixture]
    ax.errorbar([p["loss"].mean for p in mine], [p["accuracy"].mean for p in mine],
                xerr=[zero(p["loss"].std) for p in mine],
                yerr=[zero(p["accuracy"].std) for p in mine], fmt="o", capsize=3,
                label=mixture, alpha=0.85)
    for p in mine:
      ax.annotate("=".join(p["samplers"]), (p["loss"].mean, p["accuracy"].mean),
                  fontsize=7, xytext=(3, 3), textcoords="offset points")
  ax.set_xlabel("pretraining loss (train split, mean over the mixture's tasks)")
  ax.set_ylabel("downstream accuracy (%, mean over tasks)")
  ax.set_title(f"r = {r:.2f} over {len(points)} sampler-mixture points (mean ± std over seeds)",
               fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  interval = ("no interval with fewer than 4 points" if math.isnan(low)
              else f"95% interval [{low:+.2f}, {high:+.2f}]")
  if math.isnan(r):
    sign = "With fewer than 3 points (or no spread) there is no correlation to compare."
  else:
    same = (r > 0) == (PAPER_FIGURE1_SIGN > 0)
    sure = not math.isnan(low) and (low > 0 or high < 0)
    sign = (f"Its sign is {'the same as' if same else 'the opposite of'} the paper's "
            f"Figure 1 (positive: higher pretraining loss, better transfer)"
            + ("" if sure else ", but the interval includes 0, so the sign is not settled")
            + ".")
  merged = [p for p in points if len(p["samplers"]) > 1]
  one = [p for p in points if p["mixture"] == cfg.mixture]
  if len(one) < len(points):  # Losses of different task sets: also one mixture alone.
    r1 = stats.pearson([p["loss"].mean for p in one], [p["accuracy"].mean for p in one])
    lo1, hi1 = stats.pearson_interval(r1, len(one))
    sign += (f" On `{cfg.mixture}` alone (one task set, {len(one)} points): r = {r1:.2f}"
             + ("" if math.isnan(lo1) else f" [{lo1:+.2f}, {hi1:+.2f}]") + ".")
  return [f"## {heading}", "",
          f"![Figure 1]({os.path.basename(path)})", "",
          f"One point per sampler and mixture (mean over its seeds, error bars one standard "
          f"deviation over seeds). Pearson r over the {len(points)} points: {r:.2f} "
          f"({interval}). {sign}"
          + (" Samplers whose runs are identical count once: "
             + ", ".join("=".join(p["samplers"]) for p in merged) + "." if merged else "")
          + " The losses of mixtures of different tasks are averages over different task "
          "sets.", ""]


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


def confirmatory(cfg: grid.StudyConfig, table: Table, out_dir: str) -> list[str]:
  """The declared contrasts, blind priors and the exploratory study (`confirm`)."""
  from dynpt.study import confirm, prior

  priors = {}
  if cfg.toy_scale is not None or cfg.data_dir:
    for task in cfg.downstream:
      try:
        priors[task] = prior.task_prior(grid.data_dir(cfg, out_dir), task, cfg.eval_examples)
      except (ValueError, OSError) as e:
        logging.warning("blind prior of %s: %s", task, e)
  explored = None
  if cfg.exploratory_results:
    path = confirm.resolve(cfg.exploratory_results)
    if os.path.exists(path):
      explored = collect(confirm.read_rows(path))
    else:
      logging.warning("exploratory results %s not found", path)
  return confirm.section(cfg, table, priors, explored)


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


PROVENANCE = ("commit", "dirty", "gin_fingerprint")


def code_versions(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, ...], int]:
  """(commit, dirty, gin fingerprint) -> rows; 'unrecorded' where a row has none."""
  out: dict[tuple[str, ...], int] = collections.Counter()
  for r in rows:
    out[tuple(str(r.get(k, "unrecorded")) for k in PROVENANCE)] += 1
  return dict(out)


def provenance_lines(rows: Sequence[Mapping[str, Any]], pool_mixed: bool) -> list[str]:
  """Which code and gin files made the rows; ValueError when they differ, unless pooled."""
  versions = code_versions(rows)
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


def write_report(cfg: grid.StudyConfig, cells: Sequence[grid.Cell], out_dir: str,
                 title: str = "dynpt study", pool_mixed: bool = False) -> str:
  """Merges the finished cells into results.jsonl and writes report.md and the PNGs.

  Raises:
    ValueError: the rows come from different commits or gin files and
      `pool_mixed` is False.
  """
  rows = store.merge_results(out_dir)
  done, failed = store.done_cells(out_dir), store.failed_cells(out_dir)
  table = collect(rows)
  lines = [f"# {title}", "", f"Study directory `{os.path.abspath(out_dir)}`; "
           f"{len(rows)} rows in `{store.RESULTS}`; seeds {list(cfg.seeds)}; downstream "
           f"tasks {list(cfg.downstream)}.", ""]
  lines += provenance_lines(rows, pool_mixed)
  lines += status_lines(cells, done, failed)
  if cfg.contrasts:
    lines += confirmatory(cfg, table, out_dir)
    lines += ["The tables below are descriptive: their paired differences are not the "
              "declared tests and are not corrected for multiplicity.", ""]
  else:
    lines += findings(cfg, table)
  lines += table4(cfg, table)
  lines += table5(cfg, table)
  lines += figure1(rows, cfg, os.path.join(out_dir, FIGURE1))
  if cfg.contrasts and cfg.exploratory_results:
    from dynpt.study import confirm

    path = confirm.resolve(cfg.exploratory_results)
    if os.path.exists(path):
      lines += figure1(confirm.read_rows(path), cfg, os.path.join(out_dir, FIGURE1_EXPLORATORY),
                       heading="Figure 1 of the exploratory study (tuned world, seeds 0-2)")
  lines += figure2(cfg, out_dir, os.path.join(out_dir, FIGURE2))
  lines += difficulty_spread(cfg, out_dir)
  path = os.path.join(out_dir, REPORT)
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return path
