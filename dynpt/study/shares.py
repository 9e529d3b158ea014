"""How much of the batch each sampler gave a named group of tasks.

A study that predicts where a sampler moves the batch (study/lopsided.gin: the
dynamic sampler gives the three hard tasks more than 40% of each batch after
step 300, where uniform gives them 25%) declares the group in
`StudyConfig.share_groups` and the first step counted in `share_from_step`.
The report then gives, per sampler and group, the mean share over those steps
of each seed's pretraining run (from its `mixture_history.jsonl`) and their
mean over seeds, so the prediction is checked on the numbers the sampler
actually used rather than read off Figure 2.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

from dynpt.mixing import history
from dynpt.study import grid, plan, stats, store


def group_share(records: Sequence[Mapping[str, Any]], tasks: Sequence[str],
                from_step: int = 0) -> float:
  """Mean over the history records at `from_step` or later of the tasks' summed share.

  Raises:
    ValueError: no record at or after `from_step`, or a task the records do not name.
  """
  kept = [r for r in records if r["step"] >= from_step]
  if not kept:
    last = max((r["step"] for r in records), default=None)
    raise ValueError(f"no mixture history record at step >= {from_step} (last: {last})")
  missing = [t for t in tasks if t not in kept[0]["shares"]]
  if missing:
    raise ValueError(f"task(s) {', '.join(missing)} not in the mixture "
                     f"({', '.join(sorted(kept[0]['shares']))})")
  return math.fsum(math.fsum(r["shares"][t] for t in tasks) for r in kept) / len(kept)


def seed_shares(cfg: grid.StudyConfig, out_dir: str, sampler: str,
                tasks: Sequence[str]) -> dict[int, float]:
  """{seed: group share} over the finished pretrained cells of `sampler`."""
  out = {}
  for seed in cfg.seeds:
    name = plan.pretrained_name(sampler, cfg.mixture, seed)
    record = store.read_json(os.path.join(store.cell_dir(out_dir, name), store.DONE))
    if not record or not record.get("pretrain_run_dir"):
      continue
    path = os.path.join(record["pretrain_run_dir"], history.HISTORY_FILENAME)
    records, _ = history.read_history(path)
    out[seed] = group_share(records, tasks, cfg.share_from_step)
  return out


def share_lines(cfg: grid.StudyConfig, out_dir: str) -> list[str]:
  """The report's section on `cfg.share_groups` (none when the study declares none)."""
  if not cfg.share_groups:
    return []
  rows = []
  for sampler in cfg.samplers:
    for group, tasks in cfg.share_groups.items():
      try:
        per_seed = seed_shares(cfg, out_dir, sampler, tasks)
      except ValueError as e:
        rows.append([f"`{sampler}`", group, f"error: {e}", "–"])
        continue
      s = stats.summarize([100 * v for v in per_seed.values()])
      seeds = ", ".join(f"s{k}: {100 * v:.1f}" for k, v in sorted(per_seed.items()))
      mean = ("missing" if s.n == 0 else
              f"{s.mean:.1f} ± {'–' if math.isnan(s.std) else f'{s.std:.1f}'} (n={s.n})")
      rows.append([f"`{sampler}`", group, seeds or "missing", mean])
  groups = "; ".join(f"{g}: {', '.join(f'`{t}`' for t in ts)}"
                     for g, ts in cfg.share_groups.items())
  lines = ["## Task-group shares", "",
           f"Percent of each batch the sampler gave the group ({groups}), averaged over "
           f"the sampler updates from step {cfg.share_from_step} on, per seed and over "
           "seeds (mean ± sd), from each pretrained cell's mixture history.", ""]
  header = ["sampler", "group", "per seed (%)", "mean (%)"]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return lines + [""]
