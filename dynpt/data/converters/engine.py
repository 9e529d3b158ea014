"""Runs a converter: deterministic sharding, atomic resumable shards, a summary.

Items (see `base.Converter`) are assigned to shards by index: shard `s` of `S` holds
items `[s * n // S, (s + 1) * n // S)`. The assignment depends only on the raw
annotations, so a re-run recomputes the same plan and skips every shard whose file
already exists. A shard is written to a hidden temporary file, its statistics are
saved next to it (`conversion_state/`), and only then is it renamed into place: a
shard that looks complete is complete, and its counts are known without re-reading.

Engine. Apache Beam was the first choice, but no Beam release installs beside this
project's pins (Beam 2.77 needs protobuf < 7, pillow < 13 and pyarrow < 26; pip
backtracks to a Beam sdist that does not build). Shards are therefore run with the
standard library's `concurrent.futures`: threads by default (image reads and PIL
decoding release the GIL, and one TensorFlow import serves all shards), or spawned
processes for CPU-heavy sets. One task is one whole shard; nothing else is scheduled.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import dataclasses
import json
import multiprocessing
import os
import threading
import time
from typing import Any, Callable

from absl import logging
import tqdm

from dynpt.data import schema
from dynpt.data.converters import base

RUNNERS = ("threads", "processes")
STATE_DIR = "conversion_state"
SUMMARY_FILE = "conversion_summary.json"
LABELS_FILE = "labels.txt"  # As read by `dynpt.data.sources.label_vocabulary`.
DEFAULT_RECORDS_PER_SHARD = 2000


@dataclasses.dataclass
class ShardResult:
  """What writing one shard produced (also stored as its state json)."""
  index: int
  written: int
  skipped: dict[str, int]
  resumed: bool = False


def plan_shards(num_items: int, num_shards: int) -> list[tuple[int, int]]:
  """Returns the [start, stop) item range of each shard (contiguous, by index)."""
  return [(s * num_items // num_shards, (s + 1) * num_items // num_shards)
          for s in range(num_shards)]


def default_num_shards(num_items: int, records_per_shard: int) -> int:
  return max(1, -(-num_items // records_per_shard))


def _state_path(shard_file: str) -> str:
  folder, name = os.path.split(shard_file)
  return os.path.join(folder, STATE_DIR, name + ".json")


def _existing_shards(out_dir: str, dataset: str, split: str) -> list[str]:
  import tensorflow as tf

  return sorted(tf.io.gfile.glob(schema.file_pattern(out_dir, dataset, split)))


def _load_state(shard_file: str) -> ShardResult | None:
  """Returns the saved result of a completed shard, or None if it must be (re)written."""
  import tensorflow as tf

  state = _state_path(shard_file)
  if not (tf.io.gfile.exists(shard_file) and tf.io.gfile.exists(state)):
    return None
  with tf.io.gfile.GFile(state) as f:
    d = json.load(f)
  return ShardResult(index=d["index"], written=d["written"], skipped=d["skipped"],
                     resumed=True)


def write_shard(converter: base.Converter, items: list[Any], shard_file: str,
                index: int, on_item: Callable[[], None] | None = None) -> ShardResult:
  """Converts `items` into one TFRecord shard, atomically (tmp file, then rename)."""
  import tensorflow as tf

  folder, name = os.path.split(shard_file)
  tmp = os.path.join(folder, f".tmp-{name}")
  skipped = collections.Counter()
  written = 0
  with tf.io.TFRecordWriter(tmp) as writer:
    for item in items:
      try:
        record = converter.make_record(item)
      except base.Skip as e:
        skipped[e.reason] += 1
        logging.log_every_n(logging.INFO, "skipped: %s", 1000, e)
      else:
        writer.write(schema.encode_example(record))
        written += 1
      if on_item is not None:
        on_item()
  result = ShardResult(index=index, written=written, skipped=dict(skipped))
  state = _state_path(shard_file)
  tf.io.gfile.makedirs(os.path.dirname(state))
  with tf.io.gfile.GFile(state + ".tmp", "w") as f:
    json.dump(dataclasses.asdict(result), f)
  tf.io.gfile.rename(state + ".tmp", state, overwrite=True)
  tf.io.gfile.rename(tmp, shard_file, overwrite=True)
  return result


def _write_shard_task(args: tuple) -> ShardResult:
  """Process-pool entry point: rebuilds nothing, everything arrives pickled."""
  converter, items, shard_file, index = args
  return write_shard(converter, items, shard_file, index)


def _remove_stale(out_dir: str, dataset: str, split: str, num_shards: int,
                  overwrite: bool) -> None:
  """Refuses to mix shards of an earlier plan with this one, unless `overwrite`."""
  import tensorflow as tf

  suffix = f"-of-{num_shards:05d}"
  stale = [p for p in _existing_shards(out_dir, dataset, split)
           if overwrite or not p.endswith(suffix)]
  if stale and not overwrite:
    raise ValueError(
        f"{schema.split_dir(out_dir, dataset, split)} holds shards of a different plan "
        f"(e.g. {os.path.basename(stale[0])}, this run writes *{suffix}); re-run with "
        "--overwrite to replace them")
  for path in stale:
    tf.io.gfile.remove(path)
    if tf.io.gfile.exists(_state_path(path)):
      tf.io.gfile.remove(_state_path(path))


def convert(converter: base.Converter, split: str, out_dir: str, *,
            num_shards: int | None = None,
            records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
            runner: str = "threads", workers: int | None = None,
            overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
  """Converts one split of a data set into `out_dir` and returns its summary.

  Args:
    converter: the data set's converter, holding its options (raw_dir, ...).
    split: output split name (one of `converter.splits`).
    out_dir: data dir to write `<dataset>/<split>/` into.
    num_shards: shards to write; default one per `records_per_shard` items.
    records_per_shard: used when `num_shards` is not given.
    runner: `threads` or `processes` (see module doc).
    workers: pool size; default the number of CPUs.
    overwrite: replace existing shards instead of resuming.
    progress: show a tqdm progress bar over items.

  Returns:
    The summary also written to `<out_dir>/<dataset>/<split>/conversion_summary.json`:
    items planned, records written, skipped counts by reason, shards written/resumed.
  """
  import tensorflow as tf

  if runner not in RUNNERS:
    raise ValueError(f"unknown runner {runner!r}; choose from {RUNNERS}")
  converter.check_split(split)
  start = time.time()
  list_counts = collections.Counter()
  items = converter.list_items(split, list_counts)
  num_shards = num_shards or default_num_shards(len(items), records_per_shard)
  dataset = converter.name
  split_dir = schema.split_dir(out_dir, dataset, split)
  tf.io.gfile.makedirs(split_dir)
  _remove_stale(out_dir, dataset, split, num_shards, overwrite)

  ranges = plan_shards(len(items), num_shards)
  files = [schema.shard_path(out_dir, dataset, split, s, num_shards)
           for s in range(num_shards)]
  results = [None if overwrite else _load_state(f) for f in files]
  todo = [s for s, r in enumerate(results) if r is None]
  logging.info("%s/%s: %d items, %d shards (%d to write, %d done)", dataset, split,
               len(items), num_shards, len(todo), num_shards - len(todo))

  bar = tqdm.tqdm(total=sum(ranges[s][1] - ranges[s][0] for s in todo),
                  desc=f"{dataset}/{split}", unit="ex", disable=not progress)
  workers = workers or os.cpu_count() or 1
  if runner == "threads":
    lock = threading.Lock()

    def tick() -> None:
      with lock:
        bar.update(1)

    with futures.ThreadPoolExecutor(max_workers=workers) as pool:
      jobs = {pool.submit(write_shard, converter, items[slice(*ranges[s])], files[s], s,
                          tick): s for s in todo}
      for job in futures.as_completed(jobs):
        results[jobs[job]] = job.result()
  else:
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
      jobs = {pool.submit(_write_shard_task,
                          (converter, items[slice(*ranges[s])], files[s], s)): s
              for s in todo}
      for job in futures.as_completed(jobs):
        s = jobs[job]
        results[s] = job.result()
        bar.update(ranges[s][1] - ranges[s][0])
  bar.close()

  skipped = collections.Counter(list_counts)
  for r in results:
    skipped.update(r.skipped)
  summary = {
      "dataset": dataset, "split": split, "raw_dir": converter.raw_dir,
      "items": len(items), "written": sum(r.written for r in results),
      "skipped": dict(sorted(skipped.items())),
      "skipped_total": sum(skipped.values()),
      "num_shards": num_shards, "shards_written": len(todo),
      "shards_resumed": num_shards - len(todo), "runner": runner,
      "seconds": round(time.time() - start, 2),
  }
  with tf.io.gfile.GFile(os.path.join(split_dir, SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=2)
  names = converter.label_names(items) if split == "train" else None
  if names:
    with tf.io.gfile.GFile(os.path.join(out_dir, dataset, LABELS_FILE), "w") as f:
      f.write("".join(f"{n}\n" for n in sorted(names)))
  return summary


def format_summary(summary: dict[str, Any]) -> str:
  """One human-readable block: what was written and why anything was skipped."""
  lines = [f"{summary['dataset']}/{summary['split']}: wrote {summary['written']} records "
           f"from {summary['items']} items into {summary['num_shards']} shards "
           f"({summary['shards_resumed']} resumed) in {summary['seconds']} s"]
  if summary["skipped"]:
    lines.append(f"  skipped {summary['skipped_total']}:")
    lines += [f"    {reason}: {n}" for reason, n in summary["skipped"].items()]
  else:
    lines.append("  skipped nothing")
  return "\n".join(lines)
