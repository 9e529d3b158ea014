"""One shard of a split: item keys, the shard plan, and writing or resuming a shard.

A shard holds the items whose key hash falls in it, sorted by key, so its content
depends only on the raw data, not on listing order or worker count. Its state file
(`conversion_state/<shard>.json`) keeps a fingerprint of its item keys, its size, its
counts, its skips and the class names it wrote; the shard is written under a hidden
name and renamed into place, and its state is written after that (the old state
removed first), so a state file never describes another shard. A re-run keeps a
shard, from the staging folder or the published split (hard-linked into staging),
only if its file exists, its fingerprint and size match and none of the images or
videos it skipped as missing has appeared since: images added since the first run
change the fingerprint of the shards they fall in (items listed from image files or
tars) or turn up in that re-check (items listed from annotations), and those shards
are redone. An unreadable state file is a warning and its shard is redone.

One bad item is one skip: `Skip` from `make_record` is recorded under its reason, and
any other exception of one item (a decoder's IndexError, a value that does not
convert) as `unexpected_error` naming the item and the exception.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Iterable, Sequence

from absl import logging

from dynpt.converters import base
from dynpt.converters import fs
from dynpt.converters import skips
from dynpt.converters import staging
from dynpt.data import schema

STATE_DIR = "conversion_state"
# A resumed shard is redone if an item it skipped for these reasons can now be read.
RECHECK_REASONS = frozenset({"missing_image", "missing_video"})
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


def remove_shard(path: str) -> None:
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


def _resume(plan: staging.SplitPlan, staged: str, published: str, fp: str,
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


def write_shard(plan: staging.SplitPlan, index: int, num_shards: int,
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
  labels, skipped, written = set(), [], 0
  try:
    with tf.io.TFRecordWriter(tmp) as writer:
      for key, item in keyed_items:
        try:
          record = conv.make_record(item)
          example = schema.encode_example(record)
        except skips.Skip as e:
          skipped.append([e.reason, e.detail or _describe(item), key])
          continue
        except MemoryError:
          raise
        except Exception as e:  # pylint: disable=broad-except  # One item, one skip.
          skipped.append([UNEXPECTED, f"{_describe(item)}: {type(e).__name__}: {e}", key])
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
                       labels=sorted(labels), skips=skipped)
  _commit(tmp, path, result)
  return result
