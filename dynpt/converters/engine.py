"""Runs a converter as an Apache Beam pipeline, resumably and without losing anything silently.

One pipeline per split, the same on the DirectRunner (the default) and on Dataflow,
Flink or Spark:

    list_units (driver) -> expand_unit (parallel) [-> group rows per image] -> items
      -> key = hash of the item -> shard = key mod num_shards -> group per shard
      -> write the shard (sorted by key) -> results, skips -> summary

* Listing is parallel: the driver only names the units (files, tars, byte ranges);
  the workers read them. `num_shards` follows from the item count (one shard per
  `records_per_shard` items) unless given.
* The split is written into a staging folder, `<dataset>/.staging-<split>/`, and
  swapped in for `<dataset>/<split>/` (the published split, the only folder readers
  look at) once the pipeline has finished: a run that fails or is killed leaves the
  published split as it was, one complete shard plan. A run whose status is `failed`
  (below) does not replace a published split whose status was `ok` either; its output
  stays in the staging folder. The swap is two renames (`<split>` to
  `.replaced-<split>`, staging to `<split>`); a run killed between them is repaired by
  the next one.
* A shard holds the items whose key hash falls in it, sorted by key, so its content
  depends only on the raw data, not on listing order or worker count. Its state file
  (`conversion_state/<shard>.json`) keeps a fingerprint of its item keys, its size,
  its counts, its skips and the class names it wrote; the shard is written under a
  hidden name and renamed into place, and its state is written after that (the old
  state removed first), so a state file never describes another shard. A re-run keeps
  a shard, from the staging folder or the published split (hard-linked into staging),
  only if its file exists, its fingerprint and size match and none of the images or
  videos it skipped as missing has appeared since: images added since the first run
  change the fingerprint of the shards they fall in (items listed from image files or
  tars) or turn up in that re-check (items listed from annotations), and those shards
  are redone. An unreadable state file is a warning and its shard is redone.
  An explicit `num_shards` that differs from the published plan refuses to start,
  naming `--overwrite`.
* One bad item is one skip: `Skip` from `make_record` is recorded under its reason,
  and any other exception of one item (a decoder's IndexError, a value that does not
  convert) as `unexpected_error` naming the item and the exception. A listing unit
  that cannot be read at all fails the split with one message naming it.
* Every skip (listing or record) is a Beam metric `skipped/<reason>` and a line of
  `<split>/skipped.jsonl` (`{"reason", "where"}`: file, `file:line`, `file@byte`).
* The summary (`conversion_summary.json`) has the counts, the top skip reasons with
  example files and a status: `failed` if nothing was written or more than
  `max_skip_fraction` of the items were skipped (reasons in `FILTER_REASONS` are the
  source's own filters and do not count). The caller decides how to exit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Iterable, Sequence

from absl import logging

from dynpt.data import schema
from dynpt.converters import base
from dynpt.converters import fs

DEFAULT_RUNNER = "DirectRunner"
STATE_DIR = "conversion_state"
SUMMARY_FILE = "conversion_summary.json"
SKIPPED_FILE = "skipped.jsonl"
RUN_FILE = "last_run.json"
STAGING_PREFIX = ".staging-"  # <dataset>/.staging-<split>: the split being written.
REPLACED_PREFIX = ".replaced-"  # <dataset>/.replaced-<split>: the old one, mid-swap.
LABELS_FILE = "labels.txt"  # As read by `dynpt.data.sources.label_vocabulary`.
DEFAULT_RECORDS_PER_SHARD = 2000
DEFAULT_MAX_SKIP_FRACTION = 0.01
# Reasons that are a source's own selection, not lost data (Open Images images whose
# labels are all human-rejected): recorded, but not held against max_skip_fraction.
FILTER_REASONS = frozenset({"no_verified_labels"})
# A resumed shard is redone if an item it skipped for these reasons can now be read.
RECHECK_REASONS = frozenset({"missing_image", "missing_video"})
EXAMPLES_PER_REASON = 3
SKIP_NAMESPACE = "skipped"
UNEXPECTED = "unexpected_error"  # An exception other than `Skip` from one item.


def item_key(item: Any) -> str:
  """A stable key of an item: the hash of its canonical json (order-independent)."""
  text = json.dumps(item, sort_keys=True, default=str, separators=(",", ":"))
  return hashlib.sha1(text.encode("utf-8")).hexdigest()


def shard_of(key: str, num_shards: int) -> int:
  """The shard of an item key (uniform: the key is a hash)."""
  return int(key[:15], 16) % num_shards


def default_num_shards(num_items: int, records_per_shard: int) -> int:
  return max(1, -(-num_items // records_per_shard))


def fingerprint(keys: Iterable[str]) -> str:
  return hashlib.sha1("\n".join(keys).encode("utf-8")).hexdigest()


def _state_path(shard_file: str) -> str:
  folder, name = os.path.split(shard_file)
  return fs.join(folder, STATE_DIR, name + ".json")


def staging_dir(out_dir: str, dataset: str, split: str) -> str:
  """Where a split is written before it replaces `<out_dir>/<dataset>/<split>`."""
  return fs.join(out_dir, dataset, STAGING_PREFIX + split)


def _replaced_dir(out_dir: str, dataset: str, split: str) -> str:
  return fs.join(out_dir, dataset, REPLACED_PREFIX + split)


def _shard_pattern(folder: str, dataset: str, split: str) -> str:
  return fs.join(folder, os.path.basename(schema.file_pattern("", dataset, split)))


def _existing_shards(out_dir: str, dataset: str, split: str) -> list[str]:
  return fs.glob(schema.file_pattern(out_dir, dataset, split))


def _remove_shard(path: str) -> None:
  for p in (path, _state_path(path)):
    if fs.exists(p):
      fs.remove(p)


def _describe(item: Any) -> str:
  return json.dumps(item, default=str, ensure_ascii=False)[:500]


@dataclasses.dataclass
class ShardResult:
  """What one shard holds (also its state json, with the fingerprint and its skips)."""
  index: int
  written: int
  fingerprint: str
  labels: list[str]
  skips: list[list[str]]  # [reason, where, item key] of each item skipped in writing.
  resumed: bool = False
  size: int | None = None  # Bytes of the shard file (absent in older state files).


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


# ------------------------------------------------------------------ pipeline steps


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
      if isinstance(out, base.Skipped):
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
    out = base.Skipped(UNEXPECTED, f"group {str(key)[:200]!r}: {type(e).__name__}: {e}")
  if isinstance(out, base.Skipped):
    yield beam.pvalue.TaggedOutput("skipped", (out.reason, out.where))
  elif out is not None:
    yield out


def _first_errors(messages: Iterable[Any]) -> list[str]:
  out: set[str] = set()
  for m in messages:
    out.update(m if isinstance(m, list) else [m])
  return sorted(out)[:EXAMPLES_PER_REASON]


def _load_state(shard_file: str) -> ShardResult | None:
  """The saved state of a complete shard, or None (absent, unreadable, stale)."""
  state = _state_path(shard_file)
  if not (fs.exists(shard_file) and fs.exists(state)):
    return None
  try:
    with fs.open_file(state, "r") as f:
      d = json.load(f)
    result = ShardResult(index=d["index"], written=d["written"],
                         fingerprint=d["fingerprint"], labels=d["labels"],
                         skips=d["skips"], resumed=True, size=d.get("size"))
    if not all(isinstance(s, list) and len(s) == 3 for s in result.skips):
      return None
    if result.size is not None and fs.size(shard_file) != result.size:
      return None  # The state of another shard file: redo.
  except KeyError:  # A state file of an older converter version: redo the shard.
    return None
  except (ValueError, TypeError, AttributeError, OSError) as e:
    logging.warning("%s: unreadable conversion state (%s: %s); writing its shard again",
                    state, type(e).__name__, e)
    return None
  return result


def _missing_now_present(conv: base.Converter, state: ShardResult,
                         items: dict[str, Any]) -> bool:
  """Whether an item the shard skipped as missing has its image or video now."""
  for reason, _, key in state.skips:
    if reason in RECHECK_REASONS and key in items:
      try:
        conv.make_record(items[key])
      except MemoryError:
        raise
      except Exception:  # pylint: disable=broad-except  # Skip, or any other failure.
        continue
      return True
  return False


def _commit(tmp: str, path: str, result: ShardResult) -> None:
  """Renames a finished shard into place, then writes its state.

  The old state goes first: a kill at any point leaves either no state (the shard is
  redone) or the state of exactly the file on disk.
  """
  state = _state_path(path)
  fs.makedirs(os.path.dirname(state))
  if fs.exists(state):
    fs.remove(state)
  fs.rename(tmp, path)
  result = dataclasses.replace(result, resumed=False, size=fs.size(path))
  with fs.open_file(state + ".tmp", "w") as f:
    json.dump(dataclasses.asdict(result), f)
  fs.rename(state + ".tmp", state)


def _resume(plan: SplitPlan, staged: str, published: str, fp: str,
            items: dict[str, Any]) -> ShardResult | None:
  """A shard of the same items from an earlier run (staged or published), or None.

  A published shard is hard-linked (else copied) into the staging folder.
  """
  for candidate in (staged, published):
    state = _load_state(candidate)
    if (state is None or state.fingerprint != fp
        or _missing_now_present(plan.converter, state, items)):
      continue
    if candidate != staged:
      folder, name = os.path.split(staged)
      tmp = fs.join(folder, f".tmp-{name}")
      if fs.exists(tmp):
        fs.remove(tmp)
      fs.link_or_copy(candidate, tmp)
      _commit(tmp, staged, state)
    return state
  return None


def write_shard(plan: SplitPlan, index: int, num_shards: int,
                keyed_items: Sequence[tuple[str, Any]]) -> ShardResult:
  """Writes (or resumes) shard `index` into the staging folder: items sorted by key."""
  import tensorflow as tf

  conv = plan.converter
  keyed_items = sorted(keyed_items, key=lambda kv: kv[0])
  fp = fingerprint(k for k, _ in keyed_items)
  published = schema.shard_path(plan.out_dir, conv.name, plan.split, index, num_shards)
  name = os.path.basename(published)
  path = fs.join(plan.stage_dir, name)
  if not plan.overwrite:
    state = _resume(plan, path, published, fp, dict(keyed_items))
    if state is not None:
      return state
  tmp = fs.join(plan.stage_dir, f".tmp-{name}")
  labels, skips, written = set(), [], 0
  try:
    with tf.io.TFRecordWriter(tmp) as writer:
      for key, item in keyed_items:
        try:
          record = conv.make_record(item)
          example = schema.encode_example(record)
        except base.Skip as e:
          skips.append([e.reason, e.detail or _describe(item), key])
          continue
        except MemoryError:
          raise
        except Exception as e:  # pylint: disable=broad-except  # One item, one skip.
          skips.append([UNEXPECTED, f"{_describe(item)}: {type(e).__name__}: {e}", key])
          continue
        writer.write(example)
        written += 1
        if conv.writes_labels:
          labels.update(record.get("objects/label", ()))
  except BaseException:
    if fs.exists(tmp):
      fs.remove(tmp)
    raise
  result = ShardResult(index=index, written=written, fingerprint=fp,
                       labels=sorted(labels), skips=skips)
  _commit(tmp, path, result)
  return result


def _write_shard(element: tuple[int, Iterable[Any]], plan: SplitPlan, num_shards: int):
  """GroupByKey(shard) -> write_shard as a FlatMap; emits the result, tags its skips."""
  import apache_beam as beam

  index, entries = element
  result = write_shard(plan, index, num_shards, [e for e in entries if e is not None])
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


def _merge_examples(skips: Iterable[Any]) -> dict:
  """{reason: [count, first few `where`s in sorted order]} of (reason, where) pairs.

  Also merges its own outputs, in any order and grouping (a Beam combiner).
  """
  out: dict[str, list] = {}
  for s in skips:
    parts = s.items() if isinstance(s, dict) else [(s[0], [1, [s[1]]])]
    for reason, (n, wheres) in parts:
      count, kept = out.get(reason, (0, []))
      out[reason] = [count + n, sorted(set(kept) | set(wheres))[:EXAMPLES_PER_REASON]]
  return out


def _write_run_file(_, plan: SplitPlan, num_items: int, num_shards: int, totals: dict,
                    examples: dict, errors: list[str]) -> None:
  path = fs.join(plan.stage_dir, STATE_DIR, RUN_FILE)
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
  keyed = items | "Key" >> beam.Map(lambda item: (item_key(item), item))
  num_items = keyed | "CountItems" >> beam.combiners.Count.Globally()
  fixed, per_shard = plan.num_shards, plan.records_per_shard
  num_shards = num_items | "NumShards" >> beam.Map(
      lambda n: fixed or default_num_shards(n, per_shard))
  shards_view = pvalue.AsSingleton(num_shards)
  assigned = keyed | "Assign" >> beam.Map(lambda kv, n: (shard_of(kv[0], n), kv),
                                          shards_view)
  every_shard = num_shards | "EveryShard" >> beam.FlatMap(
      lambda n: [(s, None) for s in range(n)])  # Empty shards are written too.
  written = ((assigned, every_shard)
             | "WithEmpty" >> beam.Flatten()
             | "GroupShards" >> beam.GroupByKey()
             | "Write" >> beam.FlatMap(_write_shard, plan, shards_view).with_outputs(
                 "skipped", main="results"))
  skip_parts.append(written.skipped)
  skips = tuple(skip_parts) | "AllSkips" >> beam.Flatten()
  _ = (skips
       | "CountSkips" >> beam.Map(_count_skip)
       | "SkippedJsonl" >> beam.io.WriteToText(
           fs.join(plan.stage_dir, SKIPPED_FILE), num_shards=1, shard_name_template=""))
  totals = written.results | "Totals" >> beam.CombineGlobally(_merge_totals)
  examples = skips | "Examples" >> beam.CombineGlobally(_merge_examples)
  errors = listed.errors | "Errors" >> beam.CombineGlobally(_first_errors)
  _ = (pipeline
       | "Once" >> beam.Create([None])
       | "RunFile" >> beam.Map(_write_run_file, plan, pvalue.AsSingleton(num_items),
                               shards_view, pvalue.AsSingleton(totals),
                               pvalue.AsSingleton(examples), pvalue.AsSingleton(errors)))


# -------------------------------------------------------------------------- driver


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


def _local_runner(options):
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


def _check_plan(plan: SplitPlan) -> None:
  """Refuses an explicit shard count that differs from the published shards."""
  if plan.overwrite or not plan.num_shards:
    return
  existing = _existing_shards(plan.out_dir, plan.converter.name, plan.split)
  suffix = f"-of-{plan.num_shards:05d}"
  stale = [p for p in existing if not p.endswith(suffix)]
  if stale:
    raise ValueError(
        f"{plan.split_dir} holds shards of a different plan (e.g. "
        f"{os.path.basename(stale[0])}, this run writes *{suffix}); re-run with "
        "--overwrite to replace them")


def _recover(plan: SplitPlan) -> None:
  """Finishes or undoes a swap that a killed run left half done."""
  replaced = _replaced_dir(plan.out_dir, plan.converter.name, plan.split)
  if fs.exists(replaced):
    if fs.exists(plan.split_dir):  # Swapped; the old split was not removed yet.
      fs.rmtree(replaced)
    else:  # Killed between the two renames: the old split is still complete.
      logging.warning("%s: restoring the split from %s (an earlier run was killed while "
                      "replacing it)", plan.split_dir, replaced)
      fs.move_dir(replaced, plan.split_dir)


def _published_ok(split_dir: str) -> bool:
  """Whether the published split exists with a summary whose status is `ok`."""
  path = fs.join(split_dir, SUMMARY_FILE)
  if not fs.exists(path):
    return False
  try:
    with fs.open_file(path, "r") as f:
      return json.load(f).get("status") == "ok"
  except (ValueError, OSError, AttributeError):
    return False


def _publish(plan: SplitPlan) -> None:
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


def _metric_counts(result) -> dict[str, int]:
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
  plan = SplitPlan(converter=converter, split=split, out_dir=out_dir,
                   num_shards=num_shards, records_per_shard=records_per_shard,
                   overwrite=overwrite)
  units = converter.list_units(split)
  _recover(plan)
  _check_plan(plan)
  if overwrite:  # Nothing staged by earlier runs is kept; the published split stays.
    fs.rmtree(plan.stage_dir)
  fs.makedirs(plan.stage_dir)
  options = pipeline_options(pipeline_args)
  logging.info("%s/%s: %d listing units, Beam options %s", dataset, split, len(units),
               options.get_all_options(drop_default=True))
  pipeline = beam.Pipeline(runner=_local_runner(options), options=options)
  build_pipeline(pipeline, plan, units)
  result = pipeline.run()
  result.wait_until_finish()

  stage = plan.stage_dir
  with fs.open_file(fs.join(stage, STATE_DIR, RUN_FILE), "r") as f:
    run = json.load(f)
  if run["errors"]:
    raise ValueError(f"{dataset}/{split}: unreadable input: " + "; ".join(run["errors"]))
  suffix = f"-of-{run['num_shards']:05d}"
  for path in fs.glob(_shard_pattern(stage, dataset, split)):
    if not path.endswith(suffix):  # Staged by an earlier run of another plan.
      _remove_shard(path)
  skipped = _metric_counts(result) or {r: v[0] for r, v in run["skips"].items()}
  summary = summarize(converter, split, run, skipped, max_skip_fraction)
  publish = summary["status"] == "ok" or not _published_ok(plan.split_dir)
  removed = [p for p in _existing_shards(out_dir, dataset, split)
             if not p.endswith(suffix)] if publish else []
  summary.update(shards_removed=len(removed), published=publish,
                 output_dir=plan.split_dir if publish else stage,
                 runner=options.get_all_options()["runner"] or DEFAULT_RUNNER,
                 seconds=round(time.time() - start, 2))
  with fs.open_file(fs.join(stage, SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=2)
  if not publish:
    logging.warning("%s/%s: status failed; %s keeps its earlier output (status ok), this "
                    "run's output is in %s", dataset, split, plan.split_dir, stage)
    return summary
  _publish(plan)
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
      "skipped_file": SKIPPED_FILE,
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
                 f"(each in {summary['split']}/{SKIPPED_FILE}):")
    for top in summary["top_skips"]:
      lines.append(f"    {top['reason']}: {top['count']}, e.g. "
                   + "; ".join(top["examples"]))
  else:
    lines.append("  skipped nothing")
  if not summary.get("published", True):
    lines.append(f"  not published: {summary['dataset']}/{summary['split']} keeps its "
                 f"earlier output (status ok); this run's is in {summary['output_dir']}")
  return "\n".join(lines)
