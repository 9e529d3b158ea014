"""Writes the whole toy world (every stand-in dataset and split) into a data dir.

Each split is written with `schema.ShardedWriter` and then marked complete
by a small `toyworld.json` beside its shards, recording what was built. A
later build skips a split whose marker matches the request (same seed, scale,
image size, frame count, palette, generator version), so re-running is cheap; any
mismatch, or `overwrite=True`, rewrites that split from scratch.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Mapping

from absl import logging
import tensorflow as tf

from dynpt import console
from dynpt.data import schema
from dynpt.toyworld import datasets as ds_lib
from dynpt.toyworld import scene as scene_lib

# Bump when the generator's output changes, so old builds are rebuilt.
GENERATOR_VERSION = 1
META_FILE = "toyworld.json"
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 512
RECORDS_PER_SHARD = 1000


def _meta_path(data_dir: str, dataset: str, split: str) -> str:
  return os.path.join(schema.split_dir(data_dir, dataset, split), META_FILE)


def _is_complete(data_dir: str, dataset: str, split: str, meta: dict) -> bool:
  path = _meta_path(data_dir, dataset, split)
  if not tf.io.gfile.exists(path):
    return False
  with tf.io.gfile.GFile(path) as f:
    try:
      old = json.load(f)
    except json.JSONDecodeError:
      return False
  if old != meta:
    logging.info("toy world %s/%s: existing build %s differs from %s; rebuilding",
                 dataset, split, old, meta)
    return False
  return all(tf.io.gfile.exists(schema.shard_path(data_dir, dataset, split, i,
                                                  meta["num_shards"]))
             for i in range(meta["num_shards"]))


def _clear_split(data_dir: str, dataset: str, split: str) -> None:
  """Removes shards of an earlier build (possibly with another shard count)."""
  for pattern in (schema.file_pattern(data_dir, dataset, split),
                  _meta_path(data_dir, dataset, split)):
    for path in tf.io.gfile.glob(pattern):
      tf.io.gfile.remove(path)


def _write_split(data_dir: str, dataset: str, split: str, meta: dict,
                 bar) -> None:
  _clear_split(data_dir, dataset, split)
  with schema.ShardedWriter(data_dir, dataset, split, meta["num_shards"]) as writer:
    for index in range(meta["num_records"]):
      record, _ = ds_lib.make_example(dataset, split, index, seed=meta["seed"],
                                      image_size=meta["image_size"],
                                      num_frames=meta["num_frames"],
                                      palette=meta["palette"])
      writer.write(record)
      bar.update(1)
  tmp = _meta_path(data_dir, dataset, split) + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(meta, f, sort_keys=True)
  tf.io.gfile.rename(tmp, _meta_path(data_dir, dataset, split), overwrite=True)


def build_toy_world(data_dir: str, seed: int = 0, scale: str = "tiny",
                    image_size: int | None = None, *, num_frames: int | None = None,
                    datasets: Iterable[str] | None = None,
                    records: Mapping[str, int] | None = None, overwrite: bool = False,
                    progress: bool = True, palette: str = "full") -> dict[str, dict[str, int]]:
  """Builds the toy world under `data_dir` in the shared schema.

  Args:
    data_dir: root data dir; datasets go to `<data_dir>/<dataset>/<split>/`.
    seed: global seed; every record depends only on (seed, dataset, split, index).
    scale: 'tiny' (tests: 48 train and 16 eval records per split, 32 px, 4
      frames) or 'default' (CPU demo: 2000 + 200 per pretraining source, 500
      + 200 per downstream split, 64 px, 8 frames).
    image_size: side of the square images in pixels; defaults to the scale's.
    num_frames: frames per video; defaults to the scale's.
    datasets: names to build (default: all of `datasets.DATASETS`).
    records: records per split, overriding the scale's: a split name for every built
      dataset that has that split (`{'train': 8000}`), or 'dataset/split' for one
      dataset (`{'cc3m/train': 4000}`), which wins over the split name.
    overwrite: rebuild splits that are already complete.
    progress: show progress (a bar on a terminal, else a line every 30 s).
    palette: the visual vocabulary of random objects (`scene.PALETTES`): 'full' (every
      shape, colour, size, texture) or 'simple' (four plain shapes, medium or large:
      what a miniature image tower can read, docs/study/transfer.md).

  Returns:
    Records per dataset and split, e.g. `{'cc3m': {'train': 48, 'validation': 16}}`,
    counting splits that were skipped because they were already built.
  """
  sc = ds_lib.get_scale(scale)
  scene_lib.get_palette(palette)  # An unknown name fails before anything is written.
  image_size = int(image_size or sc.image_size)
  if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
    raise ValueError(f"toy world image_size={image_size} is outside "
                     f"[{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] (64-224 is typical)")
  num_frames = int(num_frames or sc.num_frames)
  if num_frames < 2:
    raise ValueError(f"toy world num_frames={num_frames}: videos need at least 2 frames")
  names = list(datasets) if datasets is not None else list(ds_lib.DATASETS)
  records = dict(records or {})
  for key, n in records.items():
    if int(n) < 1:
      raise ValueError(f"toy world records[{key!r}]={n}: must be at least 1")
  known_splits = {s for name in names for s in ds_lib.get_spec(name).splits}
  known_pairs = {f"{name}/{s}" for name in names for s in ds_lib.get_spec(name).splits}
  unknown = {k for k in records if k not in known_splits and k not in known_pairs}
  if unknown:
    raise ValueError(f"toy world records for unknown split(s) {sorted(unknown)} of datasets "
                     f"{names}; their splits: {sorted(known_splits)} (or 'dataset/split')")
  jobs = []
  for name in names:
    for split in ds_lib.get_spec(name).splits:
      n = int(records.get(f"{name}/{split}",
                          records.get(split, ds_lib.num_records(name, split, scale))))
      meta = {"version": GENERATOR_VERSION, "seed": int(seed), "scale": scale,
              "image_size": image_size, "num_frames": num_frames, "num_records": n,
              "palette": palette,
              "num_shards": max(1, n // RECORDS_PER_SHARD)}
      jobs.append((name, split, meta))
  todo = [j for j in jobs if overwrite or not _is_complete(data_dir, *j)]
  total = sum(meta["num_records"] for _, _, meta in todo)
  with console.progress(total=total, desc="toy world", unit="rec", enabled=progress) as bar:
    for name, split, meta in todo:
      bar.set_postfix_str(f"{name}/{split}")
      _write_split(data_dir, name, split, meta, bar)
  logging.info("toy world in %s: wrote %d splits (%d records), %d already complete",
               data_dir, len(todo), total, len(jobs) - len(todo))
  counts: dict[str, dict[str, int]] = {}
  for name, split, meta in jobs:
    counts.setdefault(name, {})[split] = meta["num_records"]
  return counts
