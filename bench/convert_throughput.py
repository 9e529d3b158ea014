"""Records/s of `tools/convert.py`'s Beam pipeline against the thread pool it replaced.

Both engines convert the same SNLI-VE-layout fixture (one record per image, photo-like
500x375 JPEGs, local disk, warm page cache) in one process, alternating, so the ratio
is measured under the same conditions. The old engine is kept here, for this
comparison only: list every item on the driver, cut them into contiguous shards and
write each shard on a `concurrent.futures` thread (what dynpt/converters/engine.py
did before Beam). The Beam numbers include the pipeline's start-up, as a user's run
does; that fixed cost is also timed alone, on an 8-record conversion.

  python bench/convert_throughput.py [--items=3000] [--workers=2] [--repeats=2]
"""

from __future__ import annotations

import concurrent.futures as futures
import io
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dynpt import converters, schema  # noqa: E402
from dynpt.converters import base  # noqa: E402
from dynpt.converters import skips  # noqa: E402

_ITEMS = flags.DEFINE_integer("items", 3000, "Records per conversion.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Threads (old) / direct_num_workers (Beam).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed runs per engine (median).")
_MODES = flags.DEFINE_list("modes", ["multi_threading"],
                           "DirectRunner running modes to time.")
_WORK_DIR = flags.DEFINE_string("work_dir", None, "Fixture folder (default: a tmp dir).")


def write_fixture(raw: str, num_items: int, distinct: int = 64) -> float:
  """Writes SNLI-VE's official layout with `num_items` rows; returns the mean JPEG KB.

  `distinct` photo-like images (smooth noise plus texture, ~100-200 KB at 500x375 as
  photos are) are written once each and then copied, one file per row.
  """
  folder = os.path.join(raw, "flickr30k-images")
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  images = []
  for _ in range(min(distinct, num_items)):
    coarse = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((500, 375), Image.BICUBIC)
    pixels = np.asarray(img, np.int16) + rng.integers(-40, 40, (375, 500, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    images.append(out.getvalue())
  with open(os.path.join(raw, "snli_ve_train.jsonl"), "w") as f:
    for i in range(num_items):
      with open(os.path.join(folder, f"{i}.jpg"), "wb") as img_file:
        img_file.write(images[i % len(images)])
      f.write(json.dumps({"Flickr30K_ID": str(i), "sentence2": f"hypothesis {i}",
                          "gold_label": "neutral"}) + "\n")
  return float(np.mean([len(b) for b in images])) / 1024


def thread_pool_convert(conv: base.Converter, split: str, out_dir: str,
                        records_per_shard: int, workers: int) -> int:
  """The replaced engine's path: driver listing, contiguous shards, one thread each."""
  import tensorflow as tf

  items = [out for unit in conv.list_units(split) for out in conv.expand_unit(split, unit)
           if not isinstance(out, skips.Skipped)]
  num_shards = max(1, -(-len(items) // records_per_shard))
  os.makedirs(schema.split_dir(out_dir, conv.name, split), exist_ok=True)

  def write(s: int) -> int:
    written = 0
    path = schema.shard_path(out_dir, conv.name, split, s, num_shards)
    with tf.io.TFRecordWriter(path) as writer:
      for item in items[s * len(items) // num_shards:(s + 1) * len(items) // num_shards]:
        try:
          writer.write(schema.encode_example(conv.make_record(item)))
          written += 1
        except skips.Skip:
          pass
    return written

  with futures.ThreadPoolExecutor(max_workers=workers) as pool:
    return sum(pool.map(write, range(num_shards)))


def main(argv):
  del argv
  import platform
  import subprocess

  work = _WORK_DIR.value or tempfile.mkdtemp(prefix="dynpt_convert_bench_")
  raw, out = os.path.join(work, "raw"), os.path.join(work, "out")
  start = time.time()
  kb = write_fixture(raw, _ITEMS.value)
  print(f"fixture: {_ITEMS.value} JPEGs of {kb:.0f} KB in {time.time() - start:.1f} s")
  conv = converters.get_converter("snli_ve", converters.ConvertOptions(raw_dir=raw))
  per_shard = max(1, _ITEMS.value // 8)  # 8 shards: work for every worker.

  def old() -> int:
    shutil.rmtree(out, ignore_errors=True)
    return thread_pool_convert(conv, "train", out, per_shard, _WORKERS.value)

  def beam(mode: str):
    def run() -> int:
      shutil.rmtree(out, ignore_errors=True)
      args = [f"--direct_running_mode={mode}", f"--direct_num_workers={_WORKERS.value}"]
      return converters.convert(conv, "train", out, records_per_shard=per_shard,
                                pipeline_args=args)["written"]
    return run

  tiny_raw, tiny_out = os.path.join(work, "tiny_raw"), os.path.join(work, "tiny_out")
  write_fixture(tiny_raw, 8)
  tiny = converters.get_converter("snli_ve", converters.ConvertOptions(raw_dir=tiny_raw))
  startup = {}
  for mode in _MODES.value:
    args = [f"--direct_running_mode={mode}", f"--direct_num_workers={_WORKERS.value}"]
    for _ in range(2):  # The first run also imports TensorFlow and Beam's modules.
      shutil.rmtree(tiny_out, ignore_errors=True)
      t = time.perf_counter()
      converters.convert(tiny, "train", tiny_out, pipeline_args=args)
      startup[f"beam {mode}"] = round(time.perf_counter() - t, 3)

  engines = {"thread_pool (old)": old}
  engines.update({f"beam {m}": beam(m) for m in _MODES.value})
  for fn in engines.values():  # Warm-up: imports, page cache.
    assert fn() == _ITEMS.value
  times = {name: [] for name in engines}
  for _ in range(_REPEATS.value):
    for name, fn in engines.items():
      t = time.perf_counter()
      written = fn()
      times[name].append(time.perf_counter() - t)
      assert written == _ITEMS.value, (name, written)
  rates = {n: _ITEMS.value / float(np.median(ts)) for n, ts in times.items()}
  base_rate = rates["thread_pool (old)"]
  cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
  cpu = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines()
              if ln.startswith("Model name")), platform.processor())
  records = []
  print(f"\n{cpu}, {os.cpu_count()} CPUs, {_WORKERS.value} workers, {_ITEMS.value} records")
  for name, rate in rates.items():
    records.append({"engine": name, "records_per_s": round(rate, 1),
                    "ratio_to_old": round(rate / base_rate, 3),
                    "seconds": [round(t, 3) for t in times[name]],
                    "startup_s_8_records": startup.get(name)})
    print(f"  {name:24s} {rate:8.1f} records/s  {rate / base_rate:6.2f}x old"
          + (f"  (start-up {startup[name]:.2f} s)" if name in startup else ""))
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                      "convert_throughput.json")
  with open(path, "w") as f:
    json.dump({"cpu": cpu, "cpus": os.cpu_count(), "workers": _WORKERS.value,
               "items": _ITEMS.value, "jpeg_kb": round(kb, 1),
               "load_average_at_end": list(os.getloadavg()),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "records": records}, f, indent=1)
  print(f"wrote {path}")
  if not _WORK_DIR.value:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
