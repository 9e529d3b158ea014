r"""Builds the procedural toy world: every stand-in dataset, in the dynpt schema.

  python tools/make_toy_data.py --data_dir=data/toy [--seed=0] [--scale=tiny|default] \
      [--image_size=64] [--num_frames=8] [--datasets=cc3m,vqav2] [--records=train=8000] \
      [--palette=full|simple] [--overwrite]

Deterministic in --seed. Splits that are already complete are skipped unless
--overwrite. See docs/data.md for what each dataset contains.
"""

import sys

from absl import app
from absl import flags

from dynpt import console

console.setup(__name__)  # Before TensorFlow and JAX load: their start-up chatter goes.

from dynpt.toyworld import datasets  # noqa: E402
from dynpt.toyworld import scene  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Output data dir.", required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Global seed of the toy world.")
_SCALE = flags.DEFINE_enum("scale", "tiny", sorted(datasets.SCALES),
                           "tiny: tests (seconds); default: the CPU demo.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Image side in pixels "
                                   "(default: 32 for tiny, 64 for default).")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", None, "Frames per video "
                                   "(default: 4 for tiny, 8 for default).")
_DATASETS = flags.DEFINE_list("datasets", None, "Datasets to build (default: all).")
_RECORDS = flags.DEFINE_list("records", None, "Records per split overriding the scale's, "
                             "as split=count pairs (every dataset with that split) or dataset/split=count "
                             "(one dataset), e.g. train=8000,val=500,vg/train=500.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Rebuild splits that already exist.")
_PALETTE = flags.DEFINE_enum("palette", "full", sorted(scene.PALETTES),
                             "Visual vocabulary: every shape/colour/size/texture, or four "
                             "plain shapes at medium/large size (docs/data.md).")


def _parse_records(pairs):
  records = {}
  for pair in pairs or ():
    split, sep, count = pair.partition("=")
    if not sep or not count.strip().isdigit():
      raise app.UsageError(f"--records: expected split=count, got {pair!r}")
    records[split.strip()] = int(count)
  return records


def main(argv):
  del argv
  from dynpt.toyworld import build  # TensorFlow: after the flags (a fast --help).

  records = _parse_records(_RECORDS.value)
  try:
    counts = build.build_toy_world(
        _DATA_DIR.value, seed=_SEED.value, scale=_SCALE.value, image_size=_IMAGE_SIZE.value,
        num_frames=_NUM_FRAMES.value, datasets=_DATASETS.value, records=records,
        overwrite=_OVERWRITE.value, palette=_PALETTE.value)
  except ValueError as e:  # A flag the world cannot honour (unknown dataset or split).
    print(f"error: {_DATA_DIR.value}: {e}", file=sys.stderr)
    sys.exit(1)
  width = max(len(name) for name in counts)
  print(f"toy world ({_SCALE.value}, {_PALETTE.value} palette, seed {_SEED.value}) in "
        f"{_DATA_DIR.value}:")
  for name, splits in counts.items():
    print(f"  {name:<{width}}  " + "  ".join(f"{s}={n}" for s, n in splits.items()))
  print(f"  total records: {sum(sum(s.values()) for s in counts.values())}")


if __name__ == "__main__":
  console.run_app(main)
