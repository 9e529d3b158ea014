r"""Converts a published data set's raw files into dynpt's on-disk schema.

  python tools/convert.py vqav2 --raw_dir=raw/vqav2 --out_dir=data/real [--split=val]

Datasets: cc3m cc12m ln oi in21k vg vqav2 gqa snli_ve refcoco refcocoplus refcocog
msrvtt_qa msvd_qa ivqa. The expected raw layout of each, where to get it and how long
it takes are in docs/data_real.md. Re-running resumes: completed shards are kept.
Each split's summary is printed and written to
`<out_dir>/<dataset>/<split>/conversion_summary.json`.
"""

from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags

from dynpt.data import converters

_RAW_DIR = flags.DEFINE_string("raw_dir", None, "Folder of the data set's raw files.",
                               required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Data dir to write into.", required=True)
_SPLIT = flags.DEFINE_list("split", None, "Splits to convert (default: all).")
_IMAGE_DIR = flags.DEFINE_string(
    "image_dir", None, "Images / frame folders, if not at the default under raw_dir.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", None, "Shards per split (default: "
                                   "one per --records_per_shard items).")
_RECORDS_PER_SHARD = flags.DEFINE_integer("records_per_shard", 2000,
                                          "Items per shard when --num_shards is unset.")
_RUNNER = flags.DEFINE_enum("runner", "threads", list(converters.RUNNERS),
                            "Parallel engine over shards.")
_WORKERS = flags.DEFINE_integer("workers", None, "Pool size (default: CPU count).")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 8, "Frames sampled per video.")
_HOLDOUT_EVERY = flags.DEFINE_integer(
    "holdout_every", 1000, "Sources without a validation split hold out 1 in N items.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False,
                                  "Replace existing shards instead of resuming.")


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError(
        f"give exactly one dataset, one of {sorted(converters.CONVERTERS)}")
  options = converters.ConvertOptions(
      raw_dir=_RAW_DIR.value, image_dir=_IMAGE_DIR.value, num_frames=_NUM_FRAMES.value,
      holdout_every=_HOLDOUT_EVERY.value)
  converter = converters.get_converter(argv[1], options)
  for split in _SPLIT.value or converter.splits:
    summary = converters.convert(
        converter, split, _OUT_DIR.value, num_shards=_NUM_SHARDS.value,
        records_per_shard=_RECORDS_PER_SHARD.value, runner=_RUNNER.value,
        workers=_WORKERS.value, overwrite=_OVERWRITE.value)
    print(converters.format_summary(summary), flush=True)


if __name__ == "__main__":
  app.run(main)
