r"""Converts a published data set's raw files into dynpt's on-disk schema (Apache Beam).

  python tools/convert.py vqav2 --raw_dir=raw/vqav2 --out_dir=data/real [--split=val]

Datasets: cc3m cc12m ln oi in21k vg vqav2 gqa snli_ve refcoco refcocoplus refcocog
msrvtt_qa msvd_qa ivqa. The official files of each, and the one command that converts
them, are in docs/data_real.md.

Each split is one Beam pipeline: the DirectRunner on every local CPU by default
(`--direct_num_workers`, `--direct_running_mode`), or any runner with Beam's own
options passed through, e.g. `--runner=DataflowRunner --project=P --region=R
--temp_location=gs://B/tmp` (then --raw_dir and --out_dir are `gs://` paths).

A flag that is neither convert.py's nor a Beam option is an error (Beam itself would drop
it). Re-running resumes: shards whose items did not change are kept. Each split is
written into `<out_dir>/<dataset>/.staging-<split>/` and replaces
`<out_dir>/<dataset>/<split>/` only when it is complete, so a failed or killed run
(--overwrite too) leaves the earlier output as it was; a run whose status is failed
does not replace an earlier output whose status was ok. Each split's summary is
printed and written to `conversion_summary.json`, every skipped item (one bad item is
one skip, whatever went wrong) to `skipped.jsonl` beside it. The exit status is 1 if a
split wrote 0 records or skipped more than --max_skip_fraction of its items, 2 for bad
input.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import app
from absl import flags

from dynpt import console

console.setup(__name__)  # Before Beam and TensorFlow load: their start-up chatter goes.

from dynpt import converters  # noqa: E402
from dynpt.converters import beam_pipeline  # noqa: E402

_RAW_DIR = flags.DEFINE_string("raw_dir", None, "Folder of the data set's raw files.",
                               required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Data dir to write into.", required=True)
_SPLIT = flags.DEFINE_list("split", None, "Splits to convert (default: all).")
_IMAGE_DIR = flags.DEFINE_string(
    "image_dir", None, "Images, image tars, videos or frame folders, if not at the "
    "default place under raw_dir.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", None, "Shards per split (default: "
                                   "one per --records_per_shard items).")
_RECORDS_PER_SHARD = flags.DEFINE_integer("records_per_shard", 2000,
                                          "Items per shard when --num_shards is unset.")
_RUNNER = flags.DEFINE_string(
    "runner", "DirectRunner", "Beam runner (DirectRunner, DataflowRunner, FlinkRunner, "
    "SparkRunner, ...); other Beam pipeline options pass through unchanged.")
_DIRECT_NUM_WORKERS = flags.DEFINE_integer(
    "direct_num_workers", None, "DirectRunner workers (default: CPU count).")
_DIRECT_RUNNING_MODE = flags.DEFINE_enum(
    "direct_running_mode", "multi_threading", ["in_memory", "multi_threading",
                                               "multi_processing"],
    "DirectRunner parallelism.")
_MAX_SKIP_FRACTION = flags.DEFINE_float(
    "max_skip_fraction", converters.DEFAULT_MAX_SKIP_FRACTION,
    "Exit non-zero if a split skips more than this fraction of its items.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 8, "Frames sampled per video.")
_HOLDOUT_EVERY = flags.DEFINE_integer(
    "holdout_every", 1000, "Sources without a validation split hold out 1 in N items.")
_OVERWRITE = flags.DEFINE_boolean(
    "overwrite", False, "Write every shard again instead of resuming (the earlier "
    "output stays until the new one is complete).")
_MAX_IMAGE_PIXELS = flags.DEFINE_integer(
    "max_image_pixels", converters.DEFAULT_MAX_IMAGE_PIXELS,
    "Skip images (and video frames) with more pixels (image_too_large); default PIL's "
    "decompression-bomb threshold.")
_MAX_FILE_BYTES = flags.DEFINE_integer(
    "max_file_bytes", converters.DEFAULT_MAX_FILE_BYTES,
    "Skip image and video files larger than this (file_too_large).")


def _parse(argv: list[str]) -> list[str]:
  """Parses our flags; unknown `--flags` are kept for Beam (pipeline options)."""
  return flags.FLAGS(argv, known_only=True)


def _report(failed: list[dict]) -> None:
  """One `error:` line per failed split: what went wrong and an example file."""
  for summary in failed:
    top = summary["top_skips"][0] if summary["top_skips"] else None
    why = (f"; top reason {top['reason']} ({top['count']}), e.g. {top['examples'][0]}"
           if top and top["examples"] else "")
    kept = ("" if summary["published"] else
            f" (not published: {summary['dataset']}/{summary['split']} keeps its earlier "
            "output, whose status was ok)")
    print(f"error: {summary['dataset']}/{summary['split']} "
          f"{' and '.join(summary['problems'])}{why}; see "
          f"{os.path.join(summary['output_dir'], 'skipped.jsonl')}{kept}",
          file=sys.stderr, flush=True)


def main(argv: Sequence[str]) -> None:
  positional = [a for a in argv[1:] if not a.startswith("-")]
  beam_args = [a for a in argv[1:] if a.startswith("-")]
  if len(positional) != 1:
    raise app.UsageError(
        f"give exactly one dataset, one of {sorted(converters.CONVERTERS)}")
  unknown = beam_pipeline.unknown_pipeline_args(beam_args)
  if unknown:
    print(f"error: unknown flags {unknown}: neither convert.py flags (--helpshort) nor "
          "Beam pipeline options", file=sys.stderr, flush=True)
    sys.exit(2)
  beam_args += [f"--runner={_RUNNER.value}",
                f"--direct_running_mode={_DIRECT_RUNNING_MODE.value}",
                f"--direct_num_workers={_DIRECT_NUM_WORKERS.value or os.cpu_count() or 1}"]
  failed = []
  try:
    options = converters.ConvertOptions(
        raw_dir=_RAW_DIR.value, image_dir=_IMAGE_DIR.value, num_frames=_NUM_FRAMES.value,
        holdout_every=_HOLDOUT_EVERY.value, max_image_pixels=_MAX_IMAGE_PIXELS.value,
        max_file_bytes=_MAX_FILE_BYTES.value)
    converter = converters.get_converter(positional[0], options)
    for split in _SPLIT.value or converter.splits:
      summary = converters.convert(
          converter, split, _OUT_DIR.value, num_shards=_NUM_SHARDS.value,
          records_per_shard=_RECORDS_PER_SHARD.value, overwrite=_OVERWRITE.value,
          max_skip_fraction=_MAX_SKIP_FRACTION.value, pipeline_args=beam_args)
      print(converters.format_summary(summary), flush=True)
      if summary["status"] != "ok":
        failed.append(summary)
  except (OSError, ValueError) as e:  # Missing or unreadable files, bad flag values.
    _report(failed)
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
  _report(failed)
  if failed:
    sys.exit(1)


if __name__ == "__main__":
  console.run_app(main, flags_parser=_parse)
