"""Runs a converter as an Apache Beam pipeline, resumably and without losing anything silently.

One pipeline per split, the same on the DirectRunner (the default) and on Dataflow,
Flink or Spark. `convert` is the driver; each step has its own module:

* `beam_pipeline`: the pipeline (parallel listing, items keyed by hash, one group
  per shard), the Beam options and the runner; every skip is a Beam metric
  `skipped/<reason>` and a line of `<split>/skipped.jsonl`.
* `shards`: writing or resuming one shard (sorted by key, with a state file), so a
  re-run redoes only the shards whose items changed; one bad item is one skip.
* `staging`: the split is written into `<dataset>/.staging-<split>/` and swapped in
  for the published `<dataset>/<split>/` once the pipeline has finished, so a run
  that fails or is killed leaves the published split as it was.

The summary (`conversion_summary.json`) has the counts, the top skip reasons with
example files and a status: `failed` if nothing was written or more than
`max_skip_fraction` of the items were skipped (reasons in `FILTER_REASONS` are the
source's own filters and do not count). A `failed` run does not replace a published
split whose status was `ok`. The caller decides how to exit.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

from absl import logging

from dynpt.converters import base
from dynpt.converters import beam_pipeline
from dynpt.converters import fs
from dynpt.converters import shards
from dynpt.converters import staging

LABELS_FILE = "labels.txt"  # As read by `dynpt.data.sources.label_vocabulary`.
DEFAULT_RECORDS_PER_SHARD = 2000
DEFAULT_MAX_SKIP_FRACTION = 0.01
# Reasons that are a source's own selection, not lost data (Open Images images whose
# labels are all human-rejected): recorded, but not held against max_skip_fraction.
FILTER_REASONS = frozenset({"no_verified_labels"})


def convert(converter: base.Converter, split: str, out_dir: str, *,
            num_shards: int | None = None,
            records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
            overwrite: bool = False,
            max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION,
            pipeline_args: Sequence[str] = ()) -> dict[str, Any]:
  """Converts one split of a data set into `out_dir` and returns its summary.

  Args:
    converter: the data set's converter, holding its options (raw_dir, ...).
    split: output split name (one of `converter.splits`).
    out_dir: data dir to write `<dataset>/<split>/` into (local or `gs://`).
    num_shards: shards to write; default one per `records_per_shard` items.
    records_per_shard: used when `num_shards` is not given.
    overwrite: replace existing shards instead of resuming.
    max_skip_fraction: the summary's status is `failed` above this skip fraction.
    pipeline_args: Beam pipeline options (`--runner=DataflowRunner`, `--project=...`,
      `--direct_num_workers=2`, ...); default the DirectRunner on every CPU.

  Returns:
    The summary, also written as `conversion_summary.json` into `summary["output_dir"]`:
    the published `<out_dir>/<dataset>/<split>/` (`summary["published"]`), or the
    staging folder when a `failed` run did not replace an `ok` split.

  Raises:
    FileNotFoundError, ValueError: for a missing raw file or a conflicting plan,
      before any work starts; ValueError for a listing unit that cannot be read (the
      published split is left as it was).
  """
  import apache_beam as beam

  converter.check_split(split)
  if records_per_shard < 1 or (num_shards is not None and num_shards < 1):
    raise ValueError(f"num_shards and records_per_shard must be at least 1, got "
                     f"{num_shards} and {records_per_shard}")
  if not 0 <= max_skip_fraction <= 1:
    raise ValueError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction}")
  start = time.time()
  dataset = converter.name
  plan = staging.SplitPlan(converter=converter, split=split, out_dir=out_dir,
                           num_shards=num_shards, records_per_shard=records_per_shard,
                           overwrite=overwrite)
  units = converter.list_units(split)
  staging.recover(plan)
  staging.check_plan(plan)
  if overwrite:  # Nothing staged by earlier runs is kept; the published split stays.
    fs.rmtree(plan.stage_dir)
  fs.makedirs(plan.stage_dir)
  options = beam_pipeline.pipeline_options(pipeline_args)
  logging.info("%s/%s: %d listing units, Beam options %s", dataset, split, len(units),
               options.get_all_options(drop_default=True))
  pipeline = beam.Pipeline(runner=beam_pipeline.local_runner(options), options=options)
  beam_pipeline.build_pipeline(pipeline, plan, units)
  result = pipeline.run()
  result.wait_until_finish()

  stage = plan.stage_dir
  with fs.open_file(fs.join(stage, shards.STATE_DIR, beam_pipeline.RUN_FILE), "r") as f:
    run = json.load(f)
  if run["errors"]:
    raise ValueError(f"{dataset}/{split}: unreadable input: " + "; ".join(run["errors"]))
  suffix = f"-of-{run['num_shards']:05d}"
  for path in fs.glob(staging.shard_pattern(stage, dataset, split)):
    if not path.endswith(suffix):  # Staged by an earlier run of another plan.
      shards.remove_shard(path)
  skipped = beam_pipeline.metric_counts(result) or {r: v[0] for r, v in run["skips"].items()}
  summary = summarize(converter, split, run, skipped, max_skip_fraction)
  publish = summary["status"] == "ok" or not staging.published_ok(plan.split_dir)
  removed = [p for p in staging.existing_shards(out_dir, dataset, split)
             if not p.endswith(suffix)] if publish else []
  summary.update(shards_removed=len(removed), published=publish,
                 output_dir=plan.split_dir if publish else stage,
                 runner=options.get_all_options()["runner"] or beam_pipeline.DEFAULT_RUNNER,
                 seconds=round(time.time() - start, 2))
  with fs.open_file(fs.join(stage, staging.SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=2)
  if not publish:
    logging.warning("%s/%s: status failed; %s keeps its earlier output (status ok), this "
                    "run's output is in %s", dataset, split, plan.split_dir, stage)
    return summary
  staging.publish(plan)
  if converter.writes_labels and split == "train":
    with fs.open_file(fs.join(out_dir, dataset, LABELS_FILE), "w") as f:
      f.write("".join(f"{n}\n" for n in run["labels"]))
  return summary


def summarize(converter: base.Converter, split: str, run: dict, skipped: dict[str, int],
              max_skip_fraction: float) -> dict[str, Any]:
  """The split's summary from the pipeline's run file and skip counts, with its status."""
  total = sum(skipped.values())
  lost = sum(n for r, n in skipped.items() if r not in FILTER_REASONS)
  fraction = lost / max(1, run["written"] + total)
  problems = []
  if run["written"] == 0:
    problems.append("wrote 0 records")
  if fraction > max_skip_fraction:
    problems.append(f"skipped {fraction:.1%} of its items (more than "
                    f"--max_skip_fraction={max_skip_fraction:g})")
  top = sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0]))
  return {
      "dataset": converter.name, "split": split, "raw_dir": converter.raw_dir,
      "status": "failed" if problems else "ok", "problems": problems,
      "items": run["items"], "written": run["written"],
      "skipped": dict(sorted(skipped.items())), "skipped_total": total,
      "skip_fraction": round(fraction, 6), "max_skip_fraction": max_skip_fraction,
      "top_skips": [{"reason": r, "count": n,
                     "examples": run["skips"].get(r, [0, []])[1]} for r, n in top[:5]],
      "skipped_file": beam_pipeline.SKIPPED_FILE,
      "num_shards": run["num_shards"], "shards_written": run["shards"] -
      run["shards_resumed"], "shards_resumed": run["shards_resumed"],
  }


def format_summary(summary: dict[str, Any]) -> str:
  """One human-readable block: what was written and why anything was skipped."""
  lines = [f"{summary['dataset']}/{summary['split']}: wrote {summary['written']} records "
           f"from {summary['items']} items into {summary['num_shards']} shards "
           f"({summary['shards_resumed']} resumed) in {summary['seconds']} s"]
  if summary["skipped"]:
    lines.append(f"  skipped {summary['skipped_total']} "
                 f"(each in {summary['split']}/{beam_pipeline.SKIPPED_FILE}):")
    for top in summary["top_skips"]:
      lines.append(f"    {top['reason']}: {top['count']}, e.g. "
                   + "; ".join(top["examples"]))
  else:
    lines.append("  skipped nothing")
  if not summary.get("published", True):
    lines.append(f"  not published: {summary['dataset']}/{summary['split']} keeps its "
                 f"earlier output (status ok); this run's is in {summary['output_dir']}")
  return "\n".join(lines)
