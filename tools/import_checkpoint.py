r"""Imports a public T5 v1.1 checkpoint (and a BiT ResNet) as a dynpt export.

  python tools/import_checkpoint.py --format=hf --path=t5-v1_1-base/ \
      --out_dir=exports/t5_base [--model=base] [--visual=bit:BiT-M-R50x1.npz]
  python tools/import_checkpoint.py --format=t5x \
      --path=t5_1_1_base/checkpoint_1000000 --out_dir=exports/t5x_base \
      --vocabulary=sentencepiece.model

The export (params/, t5x_text_tower/, export_info.json, spiece.model) is what
finetuning's and pretraining's INIT_FROM take; see docs/model.md for the flags the
run then needs (model size, VOCABULARY). Nothing is written when the checkpoint does
not fit. An existing export in --out_dir is refused unless --overwrite; the new one
is written beside it and renamed into place once complete, so a failure half-way
leaves the old export as it was.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dynpt import console, hostalloc  # noqa: E402

console.setup(__name__)  # Before TensorFlow and JAX load: their start-up chatter goes.

_FORMAT = flags.DEFINE_enum("format", None, ["hf", "t5x"], "Checkpoint format.",
                            required=True)
_PATH = flags.DEFINE_string("path", None, "Checkpoint folder.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Export folder to write.", required=True)
_MODEL = flags.DEFINE_enum("model", None, ["tiny", "small", "base", "large"],
                           "Named size for the ResNet and defaults; default: the "
                           "size whose T5 matches the checkpoint, else base.")
_VISUAL = flags.DEFINE_string("visual", None, "bit:PATH of a BiT .npz ResNet (the BiT "
                              "release builds the pre-activation trunk); default: a "
                              "fresh ResNet.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Default: the size's (224).")
_VOCABULARY = flags.DEFINE_string("vocabulary", None, "The checkpoint's sentencepiece "
                                  "model; default: spiece.model in an HF folder.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the fresh init of what is not imported.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an export already in "
                               "--out_dir (written beside it, swapped in once complete).")


def main(argv) -> None:
  del argv
  from dynpt.interop import importer

  try:
    info = importer.import_checkpoint(
        _FORMAT.value, _PATH.value, _OUT_DIR.value, model=_MODEL.value,
        visual=_VISUAL.value, image_size=_IMAGE_SIZE.value,
        vocabulary=_VOCABULARY.value, seed=_SEED.value, overwrite=_OVERWRITE.value)
  except (ValueError, OSError) as e:  # Mismatches, missing or existing files.
    sys.exit(f"error: {e}")
  print(json.dumps(info, indent=1))


if __name__ == "__main__":
  hostalloc.default_platforms()  # A CPU-only host: JAX's CPU backend, libtpu left alone.
  console.run_app(main)
