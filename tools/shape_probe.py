r"""Can the tiny ResNet tell the toy world's shapes apart? (docs/study/transfer.md, section 10)

Trains the model's image tower alone (the named size's ResNet, mean-pooled, one
linear layer) as a multi-label classifier of which shapes (or colours) a toy
image holds, and prints per-label accuracy and the rate of exactly right label
sets on the validation split against the base rates. The probe is
`dynpt.study.shape_probe`.

  python tools/shape_probe.py --data_dir=/tmp/tr/data --image_size=48 --steps=300
  python tools/shape_probe.py --synthetic=6000 --image_size=64 --textures=plain \
    --sizes=medium,large --shapes=circle,square,triangle,cross
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dynpt import console  # noqa: E402

console.setup(__name__)  # Before TensorFlow and JAX load: their start-up chatter goes.

from dynpt.study import shape_probe  # noqa: E402

_DEFAULT = shape_probe.ProbeConfig()
_DATA_DIR = flags.DEFINE_string("data_dir", _DEFAULT.data_dir, "Toy world directory.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", _DEFAULT.image_size,
                                   "Input size (records are 64 px).")
_MODEL = flags.DEFINE_string("model", _DEFAULT.model, "Named model size whose ResNet is probed.")
_WIDTH = flags.DEFINE_float("resnet_width", None, "Overrides the size's ResNet width.")
_STEPS = flags.DEFINE_integer("steps", _DEFAULT.steps, "Training steps.")
_BATCH = flags.DEFINE_integer("batch_size", _DEFAULT.batch_size, "Batch size.")
_LR = flags.DEFINE_float("learning_rate", _DEFAULT.learning_rate, "Adam learning rate.")
_SOURCES = flags.DEFINE_list("sources", list(_DEFAULT.sources),
                             "Label sources whose objects/label end in the shape name "
                             "(oi, vg, in21k); their images are pooled.")
_SYNTHETIC = flags.DEFINE_integer(
    "synthetic", 0, "If > 0: instead of the data dir, this many train scenes (a tenth as "
    "many validation) drawn by the toy world's own scene sampler and renderer, with the "
    "options below, to test what would make shapes learnable.")
_TEXTURES = flags.DEFINE_list("textures", [], "Synthetic: textures to draw from (default all).")
_SIZES = flags.DEFINE_list("sizes", [], "Synthetic: sizes to draw from (default all).")
_SHAPES = flags.DEFINE_list("shapes", [], "Synthetic: shapes to draw from (default all).")
_MAX_OBJECTS = flags.DEFINE_integer("max_objects", _DEFAULT.max_objects,
                                    "Synthetic: objects per scene, 1..this.")
_ATTRIBUTE = flags.DEFINE_enum("attribute", _DEFAULT.attribute, list(shape_probe.ATTRIBUTES),
                               "What to classify: the label's last word (shape) or, for vg "
                               "labels 'colour shape', its first (colour).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from dynpt import hostalloc

  hostalloc.configure_process()
  shape_probe.run(shape_probe.ProbeConfig(
      data_dir=_DATA_DIR.value, image_size=_IMAGE_SIZE.value, model=_MODEL.value,
      resnet_width=_WIDTH.value, steps=_STEPS.value, batch_size=_BATCH.value,
      learning_rate=_LR.value, sources=_SOURCES.value, synthetic=_SYNTHETIC.value,
      textures=_TEXTURES.value, sizes=_SIZES.value, shapes=_SHAPES.value,
      max_objects=_MAX_OBJECTS.value, attribute=_ATTRIBUTE.value),
      log=lambda line: print(line, flush=True))


if __name__ == "__main__":
  console.run_app(main)
