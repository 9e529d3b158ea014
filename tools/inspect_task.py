r"""Prints (and optionally draws) a few examples of a task or mixture as the model sees them.

  python tools/inspect_task.py oi_which_exist -n 3 --data_dir=data/toy
  python tools/inspect_task.py dynpt_4 -n 2 --split=validation --png=/tmp/dynpt_4.png
  python tools/inspect_task.py refcoco -n 4 --split=val --png=/tmp/refcoco.png

Examples come from the same `dynpt.data.pipeline.TaskIterator` the trainer
uses (so after tokenisation, masking and resizing); the token ids are decoded
back to text. For a mixture, `-n` examples of each of its tasks are shown.
Targets that parse as a box (RefCOCO) are decoded to pixels and drawn.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np

if __package__ in (None, ""):  # Run as a script: make `dynpt` and `tasks` importable.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dynpt import console, hostalloc  # noqa: E402

console.setup(__name__)  # Before TensorFlow loads: its start-up chatter goes.


def _decode(vocab, ids: np.ndarray) -> str:
  ids = [int(i) for i in ids]
  if 1 in ids:
    ids = ids[:ids.index(1)]
  return vocab.decode([i for i in ids if i > 0])


def collect(name: str, num: int, *, data_dir: str | None, split: str, image_size: int,
            target_length: int, seed: int, vocab_path: str | None) -> list[dict]:
  """Decoded examples: task, inputs, targets, image, image_wh and box (or None)."""
  import tasks  # Registers every task and mixture.
  from dynpt.data import boxes, pipeline  # TensorFlow: here, so that --help is fast.
  from dynpt.data import vocab as vocab_lib

  vocab = vocab_lib.get_vocabulary(vocab_path)
  out = []
  for task_id, task in enumerate(tasks.mixture_task_names(name)):
    it = pipeline.TaskIterator(
        task, task_id=task_id, sequence_length={"inputs": 32, "targets": target_length},
        image_size=image_size, seed=seed, split=split, data_dir=data_dir, shuffle=False,
        vocabulary=vocab, passthrough=("image_wh",))
    batch = it.take(num)
    for row in range(len(batch["task_id"])):
      target = _decode(vocab, batch["decoder_target_tokens"][row])
      wh = batch["image_wh"][row]
      out.append({"task": task, "inputs": _decode(vocab, batch["encoder_input_tokens"][row]),
                  "targets": target, "image": batch["image"][row], "image_wh": wh,
                  "box": boxes.text_to_box(target, wh)})
  return out


def print_examples(examples: Sequence[dict]) -> None:
  for ex in examples:
    print(f"[{ex['task']}] image {tuple(ex['image'].shape)} (stored {int(ex['image_wh'][0])}x"
          f"{int(ex['image_wh'][1])} px)")
    print(f"  inputs : {ex['inputs']}")
    print(f"  targets: {ex['targets']}")
    if ex["box"] is not None:
      print(f"  box    : {np.round(ex['box'], 1).tolist()} (pixels x0 y0 x1 y1)")


def save_png(examples: Sequence[dict], path: str, columns: int = 4) -> None:
  """A grid of the images (first frame of videos) with their text and boxes."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import textwrap

  rows = -(-len(examples) // columns)
  cols = min(columns, len(examples))
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 4.2 * rows), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, ex in zip(axes.ravel(), examples):
    image = ex["image"][0] if ex["image"].ndim == 4 else ex["image"]
    ax.imshow(image)
    if ex["box"] is not None:
      size = image.shape[0]
      sx, sy = size / float(ex["image_wh"][0]), size / float(ex["image_wh"][1])
      x0, y0, x1, y1 = ex["box"]
      ax.add_patch(plt.Rectangle((x0 * sx, y0 * sy), (x1 - x0) * sx, (y1 - y0) * sy,
                                 fill=False, color="lime", linewidth=2))
    text = f"{ex['task']}\nin: {ex['inputs']}\nout: {ex['targets']}"
    ax.set_title("\n".join(textwrap.wrap(text, 40, replace_whitespace=False)[:6]), fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("name", help="task or mixture name (e.g. cc3m_mlm, dynpt_4, refcoco)")
  parser.add_argument("-n", "--num", type=int, default=3, help="examples per task")
  parser.add_argument("--data_dir", default=None, help="data root (default $DYNPT_DATA_DIR "
                      "or data/toy)")
  parser.add_argument("--split", default="train")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--target_length", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--vocab", default=None, help="sentencepiece model (default: toy vocab)")
  parser.add_argument("--png", default=None, help="also save an image grid here")
  args = parser.parse_args(argv)
  examples = collect(args.name, args.num, data_dir=args.data_dir, split=args.split,
                     image_size=args.image_size, target_length=args.target_length,
                     seed=args.seed, vocab_path=args.vocab)
  print_examples(examples)
  if args.png:
    save_png(examples, args.png)
    print(f"wrote {args.png}")
  return 0


if __name__ == "__main__":
  hostalloc.default_platforms()  # A CPU-only host: JAX's CPU backend, libtpu left alone.
  sys.exit(main())
