"""The transfer table: finetuning from a pretrained export against from scratch, over seeds.

Each arm is compared at equal finetuning steps and seed, so the per-seed difference
is the effect of the initialisation alone; its mean and spread are what decide
whether pretraining helped (docs/study/transfer.md).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def _cell(x: np.ndarray) -> str:
  """'mean +- std' in points (sample std; 0 for one seed)."""
  return f"{x.mean():7.1f} +- {x.std(ddof=1) if len(x) > 1 else 0.0:4.1f}"


def paired_scores(results: Iterable[dict], task: str) -> dict[int, dict[str, float]]:
  """{seed: {'pretrained': points, 'scratch': points}} for seeds with both arms."""
  by_seed: dict[int, dict[str, float]] = {}
  for r in results:
    if r.get("kind") == "finetune" and r["task"] == task:
      by_seed.setdefault(r["seed"], {})[r["init"]] = float(r["score"])
  return {s: v for s, v in sorted(by_seed.items()) if {"pretrained", "scratch"} <= set(v)}


def summarize(results: Sequence[dict], tasks: Sequence[str]) -> list[str]:
  """Lines of the closing table: per task, mean +- std of each arm and of the gain.

  Args:
    results: records with kind='finetune', seed, task, init ('pretrained' or
      'scratch') and score (the task's primary metric, in points as `dynpt.metrics` reports
      it); other records are ignored.
    tasks: the rows, in order.

  Returns:
    A header line and one line per task; a task without a seed that finished
    both arms says so instead of reporting half a comparison.
  """
  lines = [f"{'task':<10}{'pretrained':>16}{'scratch':>16}{'gain':>16}  seeds"]
  for task in tasks:
    paired = paired_scores(results, task)
    if not paired:
      lines.append(f"{task:<10}  (no seed with both arms finished)")
      continue
    pre = np.array([v["pretrained"] for v in paired.values()])
    scr = np.array([v["scratch"] for v in paired.values()])
    lines.append(f"{task:<10}{_cell(pre):>16}{_cell(scr):>16}{_cell(pre - scr):>16}  "
                 f"{','.join(map(str, paired))}")
  return lines
