"""Clean splits: remove every downstream evaluation image from every training set.

This is 12-in-1's "Clean V&L" setup (Lu et al. 2020, supplement Table 7) and the
paper's "we removed any images in the downstream validation/test sets from these
training sets". An image is the same image when its namespaced `image/id` matches
(the converters write shared ids: `coco:<int>`, `oi:<hex>`, `flickr:<int>`, `vg:<int>`)
or when the sha256 of its bytes matches (catches copies across namespaces). Evaluation
sets themselves are never modified. Video sets take no part: their frames are not
images of any other set, and their own splits are disjoint by construction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Iterator

from absl import logging

from dynpt.data import schema

# Downstream evaluation splits whose images must not be trained on.
EVAL_SPLITS = {
    "vqav2": ("val", "test"), "gqa": ("val", "test"), "snli_ve": ("val", "test"),
    "refcoco": ("val", "testA", "testB"), "refcocoplus": ("val", "testA", "testB"),
    "refcocog": ("val", "test"),
}
# Sets that are cleaned: every pretraining split and every downstream train split.
CLEANED_SPLITS = {
    **{d: ("train", "validation") for d in ("cc3m", "cc12m", "ln", "oi", "in21k", "vg")},
    **{d: ("train",) for d in EVAL_SPLITS},
}
REPORT_NAME = "clean_splits_report"


@dataclasses.dataclass
class SetStats:
  """Image and record counts of one `<dataset>/<split>` before and after cleaning."""
  dataset: str
  split: str
  images_before: int = 0
  images_after: int = 0
  records_before: int = 0
  records_after: int = 0

  @property
  def percent_removed(self) -> float:
    removed = self.images_before - self.images_after
    return 100.0 * removed / self.images_before if self.images_before else 0.0


def _files(data_dir: str, dataset: str, split: str) -> list[str]:
  import tensorflow as tf

  return sorted(tf.io.gfile.glob(schema.file_pattern(data_dir, dataset, split)))


def _iter_file(path: str) -> Iterator[tuple[bytes, str, bytes]]:
  """Yields (serialized record, image id, image bytes) of one shard."""
  import tensorflow as tf

  spec = {"image/id": tf.io.FixedLenFeature([], tf.string),
          "image/encoded": tf.io.FixedLenFeature([], tf.string, default_value="")}

  def parse(raw):
    p = tf.io.parse_single_example(raw, spec)
    return raw, p["image/id"], p["image/encoded"]

  for raw, key, data in tf.data.TFRecordDataset(path).map(parse).as_numpy_iterator():
    yield raw, key.decode("utf-8"), data


def _digest(data: bytes) -> str | None:
  return hashlib.sha256(data).hexdigest() if data else None


def collect_eval_images(data_dir: str) -> tuple[set[str], set[str], list[SetStats]]:
  """Returns (ids, sha256 digests, per-set stats) of all evaluation images present."""
  ids, digests, stats = set(), set(), []
  for dataset, splits in EVAL_SPLITS.items():
    for split in splits:
      files = _files(data_dir, dataset, split)
      if not files:
        continue
      s = SetStats(dataset, split)
      seen = set()
      for path in files:
        for _, key, data in _iter_file(path):
          s.records_before += 1
          seen.add(key)
          digest = _digest(data)
          if digest:
            digests.add(digest)
      ids |= seen
      s.images_before = s.images_after = len(seen)
      s.records_after = s.records_before
      stats.append(s)
  return ids, digests, stats


def _real(path: str) -> str:
  """The path with every symlink resolved (URLs as written: they have none)."""
  return path.rstrip("/") if "://" in path else os.path.realpath(path)


def _check_outputs(data_dir: str, out_dir: str) -> None:
  """Refuses an `out_dir` whose datasets or splits resolve to those of `data_dir`.

  Writing such a split would read and write the same files (a copy onto itself
  truncates it). `out_dir` resolving to `data_dir` as a whole is in-place cleaning.
  """
  import tensorflow as tf

  for dataset in tf.io.gfile.listdir(data_dir):
    dataset = dataset.rstrip("/")
    src = os.path.join(data_dir, dataset)
    if not tf.io.gfile.isdir(src):
      continue
    for split in [None] + [s.rstrip("/") for s in tf.io.gfile.listdir(src)]:
      out = os.path.join(out_dir, dataset, *[split] if split else [])
      inp = os.path.join(src, split) if split else src
      if tf.io.gfile.exists(out) and _real(out) == _real(inp):
        raise ValueError(
            f"--out_dir: {out} resolves to the input {_real(inp)} (a symlink into "
            f"--data_dir); writing it would overwrite the input. Give an --out_dir "
            "outside --data_dir, or --out_dir equal to --data_dir to clean in place")


def _write_shard(path: str, records: list[bytes]) -> None:
  """Writes a shard atomically (hidden temporary name, then rename)."""
  import tensorflow as tf

  folder, name = os.path.split(path)
  tf.io.gfile.makedirs(folder)
  tmp = os.path.join(folder, f".tmp-{name}")
  with tf.io.TFRecordWriter(tmp) as w:
    for r in records:
      w.write(r)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def _remove_other_shards(out_dir: str, dataset: str, split: str, keep: set[str]) -> None:
  """Removes shards of `out_dir`'s split that are not in `keep` (an older plan)."""
  import tensorflow as tf

  for path in _files(out_dir, dataset, split):
    if os.path.basename(path) not in keep:
      tf.io.gfile.remove(path)


def clean_set(data_dir: str, dataset: str, split: str, eval_ids: set[str],
              eval_digests: set[str], out_dir: str | None) -> SetStats | None:
  """Drops eval images from one set; writes the kept records under `out_dir` if given."""
  files = _files(data_dir, dataset, split)
  if not files:
    return None
  s = SetStats(dataset, split)
  before, after = set(), set()
  for path in files:
    kept = []
    for raw, key, data in _iter_file(path):
      s.records_before += 1
      before.add(key)
      if key in eval_ids or _digest(data) in eval_digests:
        continue
      after.add(key)
      kept.append(raw)
    s.records_after += len(kept)
    if out_dir:
      _write_shard(os.path.join(schema.split_dir(out_dir, dataset, split),
                                os.path.basename(path)), kept)
  if out_dir:
    _remove_other_shards(out_dir, dataset, split, {os.path.basename(p) for p in files})
  s.images_before, s.images_after = len(before), len(after)
  logging.info("%s/%s: %d -> %d images", dataset, split, s.images_before, s.images_after)
  return s


def _copy_split(data_dir: str, out_dir: str, dataset: str, split: str) -> None:
  """Copies a split's shards, each atomically (hidden name, then rename)."""
  import tensorflow as tf

  files = _files(data_dir, dataset, split)
  for path in files:
    folder = schema.split_dir(out_dir, dataset, split)
    name = os.path.basename(path)
    tf.io.gfile.makedirs(folder)
    tmp = os.path.join(folder, f".tmp-{name}")
    tf.io.gfile.copy(path, tmp, overwrite=True)
    tf.io.gfile.rename(tmp, os.path.join(folder, name), overwrite=True)
  if files:
    _remove_other_shards(out_dir, dataset, split, {os.path.basename(p) for p in files})


def clean_splits(data_dir: str, out_dir: str | None = None) -> dict[str, Any]:
  """Cleans every training set under `data_dir` against every evaluation set.

  Args:
    data_dir: a data dir as written by `tools/convert.py` (or the toy world).
    out_dir: if given, receives the cleaned training sets and unchanged copies of all
      other splits, so that it is a complete data dir; if None, only the report is
      computed (a dry run). An `out_dir` that resolves to `data_dir` (the same path,
      or a symlink to it) cleans in place, shard by shard; one whose datasets or
      splits resolve into `data_dir` is refused.

  Returns:
    The report: `cleaned` (per-set stats of training sets), `eval` (evaluation sets),
    also written as `clean_splits_report.{md,json}` to `out_dir or data_dir`.

  Raises:
    ValueError: for an `out_dir` that resolves into `data_dir` other than as a whole,
      before anything is written.
  """
  import tensorflow as tf

  in_place = bool(out_dir) and _real(out_dir) == _real(data_dir)
  if out_dir and not in_place:
    _check_outputs(data_dir, out_dir)
  eval_ids, eval_digests, eval_stats = collect_eval_images(data_dir)
  if not eval_stats:
    logging.warning("no downstream evaluation sets under %s: nothing to remove", data_dir)
  cleaned = []
  for dataset, splits in CLEANED_SPLITS.items():
    for split in splits:
      s = clean_set(data_dir, dataset, split, eval_ids, eval_digests, out_dir)
      if s is not None:
        cleaned.append(s)
  if out_dir and not in_place:
    done = {(s.dataset, s.split) for s in cleaned}
    for dataset in tf.io.gfile.listdir(data_dir):
      dataset = dataset.rstrip("/")
      if not tf.io.gfile.isdir(os.path.join(data_dir, dataset)):
        continue
      for split in tf.io.gfile.listdir(os.path.join(data_dir, dataset)):
        split = split.rstrip("/")
        if (dataset, split) not in done:
          _copy_split(data_dir, out_dir, dataset, split)
  report = {"data_dir": data_dir, "out_dir": out_dir,
            "eval_images": len(eval_ids),
            "cleaned": [_stats_dict(s) for s in cleaned],
            "eval": [_stats_dict(s) for s in eval_stats]}
  target = out_dir or data_dir
  tf.io.gfile.makedirs(target)
  with tf.io.gfile.GFile(os.path.join(target, REPORT_NAME + ".json"), "w") as f:
    json.dump(report, f, indent=2)
  with tf.io.gfile.GFile(os.path.join(target, REPORT_NAME + ".md"), "w") as f:
    f.write(format_report(report))
  return report


def _stats_dict(s: SetStats) -> dict[str, Any]:
  return {**dataclasses.asdict(s), "percent_removed": round(s.percent_removed, 2)}


def format_report(report: dict[str, Any]) -> str:
  """A markdown table like 12-in-1's Table 7 (images before/after, % removed)."""
  lines = ["# Clean splits report", "",
           f"Evaluation images removed from training sets: {report['eval_images']} "
           "distinct ids (matched by id or sha256 of the bytes).", "",
           "| set | images before | images after | % removed | records before | "
           "records after |", "|---|---:|---:|---:|---:|---:|"]
  for s in report["cleaned"]:
    lines.append(f"| {s['dataset']}/{s['split']} | {s['images_before']} | "
                 f"{s['images_after']} | {s['percent_removed']:.2f} | "
                 f"{s['records_before']} | {s['records_after']} |")
  if report["cleaned"]:
    mean = sum(s["percent_removed"] for s in report["cleaned"]) / len(report["cleaned"])
    lines.append(f"| average | | | {mean:.2f} | | |")
  lines += ["", "Evaluation sets (unchanged):", "", "| set | images | records |",
            "|---|---:|---:|"]
  lines += [f"| {s['dataset']}/{s['split']} | {s['images_before']} | "
            f"{s['records_before']} |" for s in report["eval"]]
  return "\n".join(lines) + "\n"
