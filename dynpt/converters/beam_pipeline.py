"""The Beam pipeline of one split, and the options and runner it runs with.

    list_units (driver) -> expand_unit (parallel) [-> group rows per image] -> items
      -> key = hash of the item -> shard = key mod num_shards -> group per shard
      -> write the shard (sorted by key) -> results, skips -> run file

Listing is parallel: the driver only names the units (files, tars, byte ranges); the
workers read them. `num_shards` follows from the item count (one shard per
`records_per_shard` items) unless given. A listing unit that cannot be read at all is
tagged `errors` and fails the split with one message naming it. Every skip (listing
or record) is a Beam metric `skipped/<reason>` and a line of `<split>/skipped.jsonl`
(`{"reason", "where"}`: file, `file:line`, `file@byte`). The pipeline's totals, skip
examples and errors land in the staging folder's run file, which `engine.convert`
reads once the pipeline has finished.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

from dynpt.converters import fs
from dynpt.converters import shards
from dynpt.converters import skips
from dynpt.converters.staging import SplitPlan

DEFAULT_RUNNER = "DirectRunner"
SKIPPED_FILE = "skipped.jsonl"
RUN_FILE = "last_run.json"
EXAMPLES_PER_REASON = 3
SKIP_NAMESPACE = "skipped"


def _skip_json(reason: str, where: str) -> str:
  return json.dumps({"reason": reason, "where": where}, ensure_ascii=False)


def _list_unit(unit: Any, plan: SplitPlan):
  """expand_unit as a FlatMap: items (or grouped parts) out, `Skipped` tagged.

  A unit whose file cannot be read or parsed at all (ValueError, OSError: the readers'
  errors for bad input, which name the file; anything else is named with the unit)
  is tagged `errors`; `convert` raises it after the run, so the user gets one message
  naming the file rather than a worker's traceback.
  """
  import apache_beam as beam

  try:
    for out in plan.converter.expand_unit(plan.split, unit):
      if isinstance(out, skips.Skipped):
        yield beam.pvalue.TaggedOutput("skipped", (out.reason, out.where))
      else:
        yield out
  except (ValueError, OSError) as e:
    yield beam.pvalue.TaggedOutput("errors", str(e))
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    yield beam.pvalue.TaggedOutput("errors", f"{str(unit)[:300]}: {type(e).__name__}: {e}")


def _combine_group(element: tuple[str, Iterable[Any]], plan: SplitPlan):
  """combine_group over a GroupByKey result; None drops the group (not an item)."""
  import apache_beam as beam

  key, parts = element
  try:
    out = plan.converter.combine_group(plan.split, key, list(parts))
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # One group, one skip.
    out = skips.Skipped(shards.UNEXPECTED, f"group {str(key)[:200]!r}: {type(e).__name__}: {e}")
  if isinstance(out, skips.Skipped):
    yield beam.pvalue.TaggedOutput("skipped", (out.reason, out.where))
  elif out is not None:
    yield out


def _first_errors(messages: Iterable[Any]) -> list[str]:
  out: set[str] = set()
  for m in messages:
    out.update(m if isinstance(m, list) else [m])
  return sorted(out)[:EXAMPLES_PER_REASON]


def _write_shard(element: tuple[int, Iterable[Any]], plan: SplitPlan, num_shards: int):
  """GroupByKey(shard) -> write_shard as a FlatMap; emits the result, tags its skips."""
  import apache_beam as beam

  index, entries = element
  result = shards.write_shard(plan, index, num_shards, [e for e in entries if e is not None])
  for reason, where, _ in result.skips:
    yield beam.pvalue.TaggedOutput("skipped", (reason, where))
  yield {"written": result.written, "resumed": int(result.resumed),
         "labels": result.labels}


def _count_skip(skip: tuple[str, str]) -> str:
  from apache_beam.metrics import Metrics

  Metrics.counter(SKIP_NAMESPACE, skip[0]).inc()
  return _skip_json(*skip)


def _merge_totals(results: Iterable[dict]) -> dict:
  """Sums shard results (or partial sums: Beam merges in any order and grouping)."""
  out = {"written": 0, "shards": 0, "resumed": 0, "labels": set()}
  for r in results:
    out["written"] += r["written"]
    out["shards"] += r.get("shards", 1)  # A partial sum counts its shards.
    out["resumed"] += r["resumed"]
    out["labels"] |= set(r["labels"])
  return out


def _merge_examples(pairs: Iterable[Any]) -> dict:
  """{reason: [count, first few `where`s in sorted order]} of (reason, where) pairs.

  Also merges its own outputs, in any order and grouping (a Beam combiner).
  """
  out: dict[str, list] = {}
  for s in pairs:
    parts = s.items() if isinstance(s, dict) else [(s[0], [1, [s[1]]])]
    for reason, (n, wheres) in parts:
      count, kept = out.get(reason, (0, []))
      out[reason] = [count + n, sorted(set(kept) | set(wheres))[:EXAMPLES_PER_REASON]]
  return out


def _write_run_file(_, plan: SplitPlan, num_items: int, num_shards: int, totals: dict,
                    examples: dict, errors: list[str]) -> None:
  path = fs.join(plan.stage_dir, shards.STATE_DIR, RUN_FILE)
  fs.makedirs(os.path.dirname(path))
  with fs.open_file(path, "w") as f:
    json.dump({"items": num_items, "num_shards": num_shards,
               "written": totals["written"], "shards": totals["shards"],
               "shards_resumed": totals["resumed"], "labels": sorted(totals["labels"]),
               "skips": examples, "errors": errors}, f)


def build_pipeline(pipeline, plan: SplitPlan, units: list[Any]) -> None:
  """Adds the conversion of one split to `pipeline` (see module doc)."""
  import apache_beam as beam
  from apache_beam import pvalue

  conv = plan.converter
  listed = (pipeline
            | "Units" >> beam.Create(units)
            | "SpreadUnits" >> beam.Reshuffle()
            | "List" >> beam.FlatMap(_list_unit, plan).with_outputs(
                "skipped", "errors", main="items"))
  items, skip_parts = listed.items, [listed.skipped]
  if conv.grouped:
    combined = (items
                | "GroupRows" >> beam.GroupByKey()
                | "Combine" >> beam.FlatMap(_combine_group, plan).with_outputs(
                    "skipped", main="items"))
    items = combined.items
    skip_parts.append(combined.skipped)
  keyed = items | "Key" >> beam.Map(lambda item: (shards.item_key(item), item))
  num_items = keyed | "CountItems" >> beam.combiners.Count.Globally()
  fixed, per_shard = plan.num_shards, plan.records_per_shard
  num_shards = num_items | "NumShards" >> beam.Map(
      lambda n: fixed or shards.default_num_shards(n, per_shard))
  shards_view = pvalue.AsSingleton(num_shards)
  assigned = keyed | "Assign" >> beam.Map(lambda kv, n: (shards.shard_of(kv[0], n), kv),
                                          shards_view)
  every_shard = num_shards | "EveryShard" >> beam.FlatMap(
      lambda n: [(s, None) for s in range(n)])  # Empty shards are written too.
  written = ((assigned, every_shard)
             | "WithEmpty" >> beam.Flatten()
             | "GroupShards" >> beam.GroupByKey()
             | "Write" >> beam.FlatMap(_write_shard, plan, shards_view).with_outputs(
                 "skipped", main="results"))
  skip_parts.append(written.skipped)
  all_skips = tuple(skip_parts) | "AllSkips" >> beam.Flatten()
  _ = (all_skips
       | "CountSkips" >> beam.Map(_count_skip)
       | "SkippedJsonl" >> beam.io.WriteToText(
           fs.join(plan.stage_dir, SKIPPED_FILE), num_shards=1, shard_name_template=""))
  totals = written.results | "Totals" >> beam.CombineGlobally(_merge_totals)
  examples = all_skips | "Examples" >> beam.CombineGlobally(_merge_examples)
  errors = listed.errors | "Errors" >> beam.CombineGlobally(_first_errors)
  _ = (pipeline
       | "Once" >> beam.Create([None])
       | "RunFile" >> beam.Map(_write_run_file, plan, pvalue.AsSingleton(num_items),
                               shards_view, pvalue.AsSingleton(totals),
                               pvalue.AsSingleton(examples), pvalue.AsSingleton(errors)))


def pipeline_options(pipeline_args: Sequence[str] = ()):
  """Beam options: `pipeline_args` as given, DirectRunner with one worker per CPU else."""
  from apache_beam.options.pipeline_options import PipelineOptions

  args = list(pipeline_args)
  given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
  if "--runner" not in given:
    args.append(f"--runner={DEFAULT_RUNNER}")
  if "--direct_num_workers" not in given:
    args.append(f"--direct_num_workers={os.cpu_count() or 1}")
  if "--direct_running_mode" not in given:
    args.append("--direct_running_mode=multi_threading")
  return PipelineOptions(args)


def unknown_pipeline_args(pipeline_args: Sequence[str]) -> list[str]:
  """The arguments that no Beam pipeline option parses (Beam would drop them quietly)."""
  import argparse

  from apache_beam.options.pipeline_options import PipelineOptions

  parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
  for cls in PipelineOptions.__subclasses__():
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
  _, unknown = parser.parse_known_args(list(pipeline_args))
  return unknown


def local_runner(options):
  """The DirectRunner's FnApiRunner for `--runner=DirectRunner`, else None (Beam's choice).

  Beam's DirectRunner first tries its Prism runner, a Go binary it downloads at run
  time; conversion must not depend on a download, so the in-process FnApiRunner (what
  the DirectRunner falls back to, with the same direct_* options) is used directly.
  """
  if options.get_all_options()["runner"] not in (None, "DirectRunner", "direct"):
    return None
  from apache_beam.portability.api import beam_provision_api_pb2
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  from apache_beam.runners.portability.portable_runner import JobServiceHandle

  encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
  return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
      beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def metric_counts(result) -> dict[str, int]:
  """Skip counts by reason from the pipeline's metrics (committed where supported)."""
  from apache_beam.metrics.metric import MetricsFilter

  counts: dict[str, int] = {}
  try:
    query = result.metrics().query(MetricsFilter().with_namespace(SKIP_NAMESPACE))
  except NotImplementedError:  # A runner without metrics: the caller falls back.
    return counts
  for c in query["counters"]:
    value = c.committed if c.committed is not None else c.attempted
    counts[c.key.metric.name] = counts.get(c.key.metric.name, 0) + int(value or 0)
  return counts
