"""Draws the mixture over training, like the paper's Figure 2.

Top panel: each task's percent of the batch vs step; bottom panel: each task's
training loss vs step. With 24 tasks named `<source>_<kind>` (e.g. `cc3m_mlm`,
`oi_list_objects`), colour encodes the task kind and line style the source,
so tasks of a kind read as a family; the legend sits outside the axes.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

from dynpt import fs

_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)))


def split_task_name(name: str) -> tuple[str, str]:
  """`cc3m_list_objects` -> ("cc3m", "list_objects"); names without "_" are their own kind."""
  source, sep, kind = name.partition("_")
  return (source, kind) if sep and kind else (name, name)


def task_styles(task_names: Sequence[str]) -> dict[str, dict[str, Any]]:
  """Matplotlib line kwargs per task: colour by kind, line style by source."""
  import matplotlib  # Lazy: the samplers themselves do not need matplotlib.
  kinds: list[str] = []
  sources: list[str] = []
  for t in task_names:
    source, kind = split_task_name(t)
    kinds += [kind] if kind not in kinds else []
    sources += [source] if source not in sources else []
  if len(kinds) <= 10:
    # tab10 reordered so the first 8 kinds (dynpt's) get the most distinct hues.
    tab10 = matplotlib.colormaps["tab10"]
    palette = [tab10(i) for i in (0, 1, 2, 3, 4, 9, 8, 7, 5, 6)]
  else:
    tab20 = matplotlib.colormaps["tab20"]
    palette = [tab20(i) for i in range(tab20.N)]
  return {
      t: {"color": palette[kinds.index(split_task_name(t)[1]) % len(palette)],
          "linestyle": _LINESTYLES[sources.index(split_task_name(t)[0]) % len(_LINESTYLES)]}
      for t in task_names
  }


def bucket_mean(steps: np.ndarray, values: np.ndarray,
                max_points: int) -> tuple[np.ndarray, np.ndarray]:
  """Averages consecutive records into at most `max_points` buckets.

  A 500k-step run logs 500k noisy points per task; bucketing keeps the PNG
  light and shows the trend of the loss instead of its step-to-step noise.
  NaN values (steps where a task had no examples) are ignored in a bucket.
  """
  if steps.size <= max_points:
    return steps, values
  edges = np.linspace(0, steps.size, max_points + 1).astype(int)
  xs, ys = [], []
  for lo, hi in zip(edges[:-1], edges[1:]):
    if hi > lo:
      chunk = values[lo:hi]
      xs.append(steps[lo:hi].mean())
      ys.append(np.nanmean(chunk) if np.any(~np.isnan(chunk)) else np.nan)
  return np.asarray(xs), np.asarray(ys)


def plot_history(records: Sequence[dict[str, Any]], out_path: str,
                 title: str | None = None, max_points: int = 500) -> None:
  """Writes a two-panel PNG (shares and per-task loss vs step) to `out_path`.

  Args:
    records: history records as returned by `dynpt.mixing.read_history`.
    out_path: PNG path to write.
    title: optional figure title (e.g. the run directory).
    max_points: records are averaged into at most this many points per line.

  Raises:
    ValueError: if there are no records.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if not records:
    raise ValueError(f"no mixture history records to plot into {out_path}")
  task_names: list[str] = []
  for r in records:
    task_names += [t for t in r["shares"] if t not in task_names]
  steps = np.asarray([r["step"] for r in records])                  # [records]

  def _series(key: str, t: str) -> np.ndarray:
    return np.asarray([float(r[key].get(t, np.nan)) for r in records], np.float64)

  styles = task_styles(task_names)
  fig, (ax_share, ax_loss) = plt.subplots(2, 1, figsize=(13, 9), sharex=True)
  for t in task_names:
    x, share = bucket_mean(steps, _series("shares", t), max_points)
    ax_share.plot(x, 100.0 * share, label=t, linewidth=1.3, **styles[t])
    x, loss = bucket_mean(steps, _series("task_loss", t), max_points)
    ax_loss.plot(x, loss, linewidth=1.0, **styles[t])
  ax_share.set_ylabel("percent of batch")
  ax_share.set_ylim(bottom=0)
  ax_loss.set_ylabel("task loss (mean token CE)")
  ax_loss.set_xlabel("step")
  for ax in (ax_share, ax_loss):
    ax.grid(alpha=0.3)
  ax_share.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
                  ncol=1 if len(task_names) <= 16 else 2, title="task")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
  plt.close(fig)
  fs.write_bytes(out_path, png.getvalue())  # A local file or an object (dynpt.fs).
