"""Where a split is written, and how it replaces the published one.

The split is written into a staging folder, `<dataset>/.staging-<split>/`, and
swapped in for `<dataset>/<split>/` (the published split, the only folder readers
look at) once the pipeline has finished: a run that fails or is killed leaves the
published split as it was, one complete shard plan. A run whose status is `failed`
does not replace a published split whose status was `ok` either; its output stays in
the staging folder. The swap is two renames (`<split>` to `.replaced-<split>`,
staging to `<split>`); a run killed between them is repaired by the next one
(`recover`). An explicit `num_shards` that differs from the published plan refuses to
start, naming `--overwrite` (`check_plan`).
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import logging

from dynpt.converters import base
from dynpt.converters import fs
from dynpt.data import schema

SUMMARY_FILE = "conversion_summary.json"
STAGING_PREFIX = ".staging-"  # <dataset>/.staging-<split>: the split being written.
REPLACED_PREFIX = ".replaced-"  # <dataset>/.replaced-<split>: the old one, mid-swap.


@dataclasses.dataclass
class SplitPlan:
  """The driver-side facts every worker needs (picklable)."""
  converter: base.Converter
  split: str
  out_dir: str
  num_shards: int | None
  records_per_shard: int
  overwrite: bool

  @property
  def split_dir(self) -> str:
    """The published split."""
    return schema.split_dir(self.out_dir, self.converter.name, self.split)

  @property
  def stage_dir(self) -> str:
    return staging_dir(self.out_dir, self.converter.name, self.split)


def staging_dir(out_dir: str, dataset: str, split: str) -> str:
  """Where a split is written before it replaces `<out_dir>/<dataset>/<split>`."""
  return fs.join(out_dir, dataset, STAGING_PREFIX + split)


def _replaced_dir(out_dir: str, dataset: str, split: str) -> str:
  return fs.join(out_dir, dataset, REPLACED_PREFIX + split)


def shard_pattern(folder: str, dataset: str, split: str) -> str:
  return fs.join(folder, os.path.basename(schema.file_pattern("", dataset, split)))


def existing_shards(out_dir: str, dataset: str, split: str) -> list[str]:
  return fs.glob(schema.file_pattern(out_dir, dataset, split))


def check_plan(plan: SplitPlan) -> None:
  """Refuses an explicit shard count that differs from the published shards."""
  if plan.overwrite or not plan.num_shards:
    return
  existing = existing_shards(plan.out_dir, plan.converter.name, plan.split)
  suffix = f"-of-{plan.num_shards:05d}"
  stale = [p for p in existing if not p.endswith(suffix)]
  if stale:
    raise ValueError(
        f"{plan.split_dir} holds shards of a different plan (e.g. "
        f"{os.path.basename(stale[0])}, this run writes *{suffix}); re-run with "
        "--overwrite to replace them")


def recover(plan: SplitPlan) -> None:
  """Finishes or undoes a swap that a killed run left half done."""
  replaced = _replaced_dir(plan.out_dir, plan.converter.name, plan.split)
  if fs.exists(replaced):
    if fs.exists(plan.split_dir):  # Swapped; the old split was not removed yet.
      fs.rmtree(replaced)
    else:  # Killed between the two renames: the old split is still complete.
      logging.warning("%s: restoring the split from %s (an earlier run was killed while "
                      "replacing it)", plan.split_dir, replaced)
      fs.move_dir(replaced, plan.split_dir)


def published_ok(split_dir: str) -> bool:
  """Whether the published split exists with a summary whose status is `ok`."""
  path = fs.join(split_dir, SUMMARY_FILE)
  if not fs.exists(path):
    return False
  try:
    with fs.open_file(path, "r") as f:
      return json.load(f).get("status") == "ok"
  except (ValueError, OSError, AttributeError):
    return False


def publish(plan: SplitPlan) -> None:
  """Swaps the staging folder in for the published split (see module doc)."""
  for name in fs.listdir(plan.stage_dir):  # Temporary files that killed runs left.
    path = fs.join(plan.stage_dir, name)
    if name.startswith("beam-temp-"):
      fs.rmtree(path)
    elif name.startswith(".tmp-"):
      fs.remove(path)
  replaced = _replaced_dir(plan.out_dir, plan.converter.name, plan.split)
  fs.rmtree(replaced)
  if fs.exists(plan.split_dir):
    fs.move_dir(plan.split_dir, replaced)
  fs.move_dir(plan.stage_dir, plan.split_dir)
  fs.rmtree(replaced)
