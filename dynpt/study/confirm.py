"""The confirmatory part of a study's report: the declared contrasts, tested.

A study that declares `StudyConfig.contrasts` before it runs is tested on
those contrasts only: each is a paired difference over seeds with its 95%
t-interval and a two-sided paired-t p-value, Holm-adjusted over all the
declared contrasts (`dynpt.study.stats`). Each downstream task's blind answer
prior (`dynpt.study.prior`) stands next to the accuracies, and the
exploratory study the choices were tuned on (`exploratory_results`) is shown
apart, then each contrast is called held or not held.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

from dynpt.study import grid, stats, tables

ALPHA = 0.05
LABEL_SCRATCH = "scratch"


class _MeanPrior:
  """The blind prior of the task mean (only `best` is defined)."""

  def __init__(self, best: float):
    self.best = best


def _name(sampler: str) -> str:
  return LABEL_SCRATCH if sampler == grid.SCRATCH else sampler


def values(table: Mapping, sampler: str, mixture: str, task: str,
           downstream: Sequence[str]) -> dict[int, float]:
  """seed -> value of `sampler` (or scratch) on `task` (or the per-seed task mean)."""
  if sampler != grid.SCRATCH:
    return dict(table.get((sampler, mixture), {}).get(task, {}))
  per_task = table.get((grid.SCRATCH, grid.SCRATCH), {})
  if task != grid.MEAN_TASK:
    return dict(per_task.get(task, {}))
  seeds = set.intersection(*(set(per_task.get(t, {})) for t in downstream))
  return {s: sum(per_task[t][s] for t in downstream) / len(downstream) for s in sorted(seeds)}


def tested_contrasts(contrasts: Sequence[grid.Contrast], table: Mapping, mixture: str,
                     downstream: Sequence[str]) -> list[dict[str, Any]]:
  """Each contrast's paired difference, raw and Holm-adjusted p-value (input order)."""
  out = []
  for c in contrasts:
    a = values(table, c.a, mixture, c.task, downstream)
    b = values(table, c.b, mixture, c.task, downstream)
    out.append({"contrast": c, "diff": stats.paired_difference(a, b),
                "p": stats.paired_p_value(a, b), "a": stats.summarize(list(a.values())),
                "b": stats.summarize(list(b.values()))})
  for row, adjusted in zip(out, stats.holm([r["p"] for r in out])):
    row["p_holm"] = adjusted
  return out


def verdict(confirmed: Mapping[str, Any], exploratory: stats.PairedDifference | None) -> str:
  """'held', 'reversed', 'not confirmed' or 'untested' for one contrast."""
  d, p = confirmed["diff"], confirmed["p_holm"]
  if d.n < 2 or math.isnan(p):
    return "untested (fewer than 2 paired seeds)"
  if p >= ALPHA:
    return "not confirmed (Holm p >= 0.05)"
  if exploratory is not None and exploratory.n and math.copysign(1, exploratory.mean) != \
      math.copysign(1, d.mean):
    return "reversed (significant, opposite sign to the exploratory estimate)"
  return "held" if d.mean > 0 else "held (negative)"


def _fmt_p(p: float) -> str:
  return "–" if math.isnan(p) else (f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}")


def _fmt_mean(s: stats.Summary) -> str:
  return "missing" if s.n == 0 else f"{s.mean:.1f}"


def resolve(path: str) -> str:
  """A relative `exploratory_results` is relative to the repository root."""
  if os.path.isabs(path):
    return path
  return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))), path)


def section(cfg: grid.StudyConfig, table: Mapping, priors: Mapping[str, Any],
            exploratory_table: Mapping | None) -> list[str]:
  """The report's confirmatory sections (markdown lines)."""
  contrasts = [grid.parse_contrast(t, cfg) for t in cfg.contrasts]
  if priors and all(t in priors for t in cfg.downstream):
    # The task mean's prior: the mean of the tasks' priors (each task weighs the same).
    priors = dict(priors, **{grid.MEAN_TASK: _MeanPrior(
        sum(priors[t].best for t in cfg.downstream) / len(cfg.downstream))})
  tested = tested_contrasts(contrasts, table, cfg.mixture, cfg.downstream)
  explored = {}
  if exploratory_table is not None:
    for c in contrasts:
      explored[c.text] = stats.paired_difference(
          values(exploratory_table, c.a, cfg.mixture, c.task, cfg.downstream),
          values(exploratory_table, c.b, cfg.mixture, c.task, cfg.downstream))
  out = ["## Confirmatory contrasts (declared in the config before the run)", "",
         f"World seed {cfg.world_seed}, training seeds {list(cfg.seeds)}, "
         f"{cfg.eval_examples or 'the scale’s'} `val` examples per task. Each contrast is "
         "the mean of per-seed differences (percentage points) with its 95% t-interval; p is "
         "the two-sided paired t-test, Holm-adjusted over the "
         f"{len(contrasts)} declared contrasts (family-wise error {ALPHA}). `a`, `b`: the "
         "two rows' mean accuracy; blind prior: answering without the image (below).", ""]
  rows = []
  for r in tested:
    c = r["contrast"]
    prior = priors.get(c.task)
    rows.append([f"{_name(c.a)} − {_name(c.b)}", c.task, _fmt_mean(r["a"]), _fmt_mean(r["b"]),
                 "–" if prior is None else f"{prior.best:.1f}", tables.fmt_diff(r["diff"]),
                 _fmt_p(r["p"]), _fmt_p(r["p_holm"]),
                 verdict(r, explored.get(c.text))])
  out += tables.md_table(["contrast", "task", "a", "b", "blind prior", "a − b", "p",
                          "p (Holm)", "verdict"], rows)
  out += ["", "## Blind answer prior", "",
          "The accuracy of answering without looking at the image, fitted on the task's "
          "`train` split and scored on the same `val` examples with the official metric "
          "(`dynpt.study.prior`): always the most frequent training answer (*overall*), or "
          "the most frequent training answer of the question's type, its first two words "
          "(*by type*). The prior is the better of the two.", ""]
  prow = []
  for task in cfg.downstream:
    p = priors.get(task)
    accs = [_fmt_mean(stats.summarize(list(values(table, s, cfg.mixture, task,
                                                  cfg.downstream).values())))
            for s in [grid.SCRATCH] + list(cfg.samplers)]
    prow.append([task] + (["–", "–", "–"] if p is None else
                          [f"{p.overall:.1f} (`{p.answer}`)", f"{p.by_type:.1f} ({p.types} types)",
                           f"{p.best:.1f}"]) + accs)
  out += tables.md_table(["task", "overall", "by type", "prior"]
                         + [f"`{_name(s)}`" for s in [grid.SCRATCH] + list(cfg.samplers)], prow)
  out += ["", "## Exploratory (tuned) against confirmatory (held-out)", ""]
  if exploratory_table is None:
    out += ["No exploratory results given (`StudyConfig.exploratory_results`).", ""]
  else:
    out += [f"The exploratory study (`{cfg.exploratory_results}`: toy-world seed 0, on whose "
            "`val` examples the regime was tuned, training seeds 0-2) is not evidence for "
            "these contrasts; it is shown only to say whether its estimates held on a world "
            "nobody tuned on.", ""]
    erows = [[f"{_name(r['contrast'].a)} − {_name(r['contrast'].b)}", r["contrast"].task,
              tables.fmt_diff(explored[r["contrast"].text]), tables.fmt_diff(r["diff"]),
              _fmt_p(r["p_holm"]), verdict(r, explored[r["contrast"].text])] for r in tested]
    out += tables.md_table(["contrast", "task", "exploratory (tuned)",
                            "confirmatory (held-out)", "p (Holm)", "verdict"], erows)
  out += ["", "## What held and what did not", ""]
  for r in tested:
    c = r["contrast"]
    v = verdict(r, explored.get(c.text))
    prior = priors.get(c.task)
    note = ""
    if prior is not None and r["a"].n and r["a"].mean - prior.best < 2.0:
      note = (f" `{_name(c.a)}` ({r['a'].mean:.1f}) is within 2 points of the blind prior "
              f"({prior.best:.1f}): it barely reads the image.")
    got = ("no seed has both rows yet" if r["diff"].n == 0 else
           f"{tables.fmt_diff(r['diff'])} points, Holm p = {_fmt_p(r['p_holm'])}")
    out.append(f"- **{_name(c.a)} − {_name(c.b)} on {c.task}: {v}.** {got}"
               + (f"; exploratory {tables.fmt_diff(explored[c.text])}" if c.text in explored
                  else "")
               + "." + note)
  return out + [""]
