"""The study's figures: pretraining loss against downstream accuracy, and task shares.

Figure 1 puts one point per sampler and mixture (the mean over its seeds) and
gives Pearson's r over those points with its interval, compared in sign with
the paper's; Figure 2 plots the shares of the mixture's tasks over one run's
training, from its `mixture_history.jsonl`.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

from absl import logging

from dynpt.study import grid, plan, stats, store


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
            + ("" if sure else
               ", but with no interval the sign is not settled" if math.isnan(low) else
               ", but the interval includes 0, so the sign is not settled")
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

  name = plan.pretrained_name(cfg.figure2_sampler, cfg.mixture, list(cfg.seeds)[0])
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
