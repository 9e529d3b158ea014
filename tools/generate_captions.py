r"""Captions an image set with a trained dynpt captioner and writes it as a caption source.

  python tools/generate_captions.py --export_dir=runs/coco_cap/export \
      --data_dir=data/real --dataset=cc3m --split=train --out_dir=data/real \
      [--out_dataset=gen] [--max_examples=N] [--batch_size=32] [--decode=greedy|beam] \
      [--prompt=...] [--num_shards=1] [--overwrite]

The export (`tools/export_checkpoint.py`) must come from a model trained on a
`*_cap` task; its `export_info.json` gives the model, image size, lengths and
vocabulary. The output `<out_dir>/<out_dataset>/<split>/` is read by the tasks
`gen_cap`, `gen_cmp`, `gen_itm`, `gen_mlm` (mixture `dynpt_cross_modal_gen`).
Records whose caption comes out empty are skipped; the summary, with counts by
reason, is printed and written to `<out_dir>/<out_dataset>/<split>/generation_summary.json`.
See docs/data_real.md ("Generated captions").
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dynpt import console  # noqa: E402

console.setup(__name__)  # Before TensorFlow and JAX load: their start-up chatter goes.

from dynpt import hostalloc  # noqa: E402
from dynpt.data import generated_captions as gc  # noqa: E402
from dynpt.downstream import captioner as captioner_lib  # noqa: E402
from dynpt.data import preprocessors as pp  # noqa: E402

_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Export of a trained captioner.",
                                  required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data dir of the image set.", required=True)
_DATASET = flags.DEFINE_string("dataset", None, "Image dataset to caption.", required=True)
_SPLIT = flags.DEFINE_string("split", "train", "Split to caption (also the output split).")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Data dir to write into.", required=True)
_OUT_DATASET = flags.DEFINE_string("out_dataset", "gen", "Output dataset name (the gen_* "
                                   "tasks read 'gen').")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", None, "Caption only the first N records.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per decode call (fixed).")
_DECODE = flags.DEFINE_enum("decode", "greedy", list(gc.DECODE_MODES), "Decoding.")
_BEAM_SIZE = flags.DEFINE_integer("beam_size", 4, "Beam width for --decode=beam.")
_BEAM_ALPHA = flags.DEFINE_float("beam_alpha", 0.6, "Length normalisation for beam search.")
_PROMPT = flags.DEFINE_string("prompt", pp.CAPTION_PROMPT,
                              "Encoder prompt; default the cap task's, as the model was trained.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Output TFRecord shards.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace an existing output split.")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if _PROMPT.value != pp.CAPTION_PROMPT:
    logging.warning("prompt %r differs from the cap task's %r the model was trained with",
                    _PROMPT.value, pp.CAPTION_PROMPT)
  captioner = captioner_lib.load_captioner(
      _EXPORT_DIR.value, batch_size=_BATCH_SIZE.value, decode=_DECODE.value,
      beam_size=_BEAM_SIZE.value, beam_alpha=_BEAM_ALPHA.value, prompt=_PROMPT.value)
  summary = gc.generate_captions(
      captioner, data_dir=_DATA_DIR.value, dataset=_DATASET.value, split=_SPLIT.value,
      out_dir=_OUT_DIR.value, out_dataset=_OUT_DATASET.value,
      max_examples=_MAX_EXAMPLES.value, num_shards=_NUM_SHARDS.value,
      overwrite=_OVERWRITE.value, progress=_PROGRESS.value)
  print(json.dumps(summary, indent=1), flush=True)


if __name__ == "__main__":
  hostalloc.configure_process()
  console.run_app(main)
