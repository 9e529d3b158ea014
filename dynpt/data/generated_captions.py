"""Generated captions as a caption source ("Are we pretraining it right?", 3.4).

The paper trains a captioner on in-domain data (COCO), captions an
out-of-domain image set (Conceptual Captions) with it and pretrains on the
result ("CC-Generated"): the images stay, the text moves towards the
downstream domain. Here:

- `Captioner` runs a model trained on a `*_cap` task (built from an export by
  `dynpt.downstream.captioner.load_captioner`) and captions uint8 images, prompted with exactly the inputs the
  `cap` preprocessor feeds (`preprocessors.CAPTION_PROMPT`, tokenised, trimmed
  and EOS-terminated as the task does). Batches have one fixed size (the last
  one is padded), so decoding compiles once.
- `generate_captions` streams one split of any schema dataset with
  ``image/encoded``, decodes and squashes its images with PIL to the model's
  size on worker threads while the accelerator decodes the previous batch, and
  writes ``OUT_DIR/<out_dataset>/<split>/`` in the schema: ``image/id``,
  ``image/encoded`` (the source bytes, unchanged), width, height and
  ``text/captions`` = [the generated caption]. Tasks ``gen_cap``, ``gen_cmp``,
  ``gen_itm`` and ``gen_mlm`` (`tasks.pretraining`) read dataset ``gen``.

Records are skipped, and counted by reason in the summary, when they have no
image (``no_image``), their image does not decode (``corrupt_image``) or the
captioner emits EOS first (``empty_caption``, common for a barely trained
model): an empty caption would teach ``gen_cap`` to say nothing and give the
MLM and completion tasks no text to work on.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import io
import itertools
import json
import os
import time
from typing import Any, Iterable, Iterator, Protocol

import jax
import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from dynpt import console, fs
from dynpt.data import preprocessors as pp
from dynpt.data import schema
from dynpt.data import sources
from dynpt.models import decoding, vl_model

SUMMARY_FILE = "generation_summary.json"
DECODE_MODES = decoding.DECODE_MODES
EOS_ID = decoding.EOS_ID
PAD_ID = decoding.PAD_ID
_PREFETCH_BATCHES = 2  # Image batches prepared ahead of the one being decoded.


class CaptionFn(Protocol):
  """What `generate_captions` needs of a captioner (a `Captioner`, or a fake in tests)."""
  image_size: int
  batch_size: int

  def __call__(self, images: np.ndarray) -> list[str]: ...


def prompt_tokens(vocab, prompt: str, input_length: int) -> np.ndarray:
  """int32 [input_length]: `prompt` as the cap task's ``encoder_input_tokens``.

  seqio's `tokenize` then `append_eos_after_trim` cut the tokens to
  ``input_length - 1`` and append EOS; the feature converter pads with 0.
  """
  ids = list(vocab.encode(prompt))[:input_length - 1] + [EOS_ID]
  return np.asarray(ids + [PAD_ID] * (input_length - len(ids)), np.int32)


def tokens_to_text(vocab, tokens: np.ndarray) -> str:
  """Decoded text of one output row: the tokens before the first EOS.

  Padding, sentinels and ids past the sentencepiece model (the padded logits)
  are dropped: no caption target contains them, and a literal ``<extra_id_N>``
  in a caption would collide with the MLM task's sentinels.
  """
  ids = decoding.output_ids(tokens, max_id=vocab.vocab_size - vocab.extra_ids)
  return vocab.decode(ids).strip() if ids else ""


class Captioner:
  """A trained dynpt captioner: uint8 images [n, S, S, 3] -> captions.

  Args:
    model: the `VLModel` the params belong to.
    params: its param tree (numpy or jax leaves).
    vocab: the vocabulary it was trained with.
    image_size: side S of the square images it takes.
    input_length, target_length: the encoder input and decode lengths.
    batch_size: rows per decode call; smaller inputs are zero-padded to it.
    decode: `greedy` or `beam` (`dynpt.models.decoding`).
    beam_size, beam_alpha: beam search width and length-normalisation exponent.
    prompt: encoder text; default the `cap` task's prompt, which the model was
      trained with.
    info: provenance recorded in summaries (export dir, step, ...).
  """

  def __init__(self, model: vl_model.VLModel, params: Any, vocab, *, image_size: int,
               input_length: int, target_length: int, batch_size: int = 32,
               decode: str = "greedy", beam_size: int = 4, beam_alpha: float = 0.6,
               prompt: str = pp.CAPTION_PROMPT, info: dict[str, Any] | None = None):
    if decode not in DECODE_MODES:
      raise ValueError(f"decode={decode!r}; choose from {DECODE_MODES}")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.vocab = vocab
    self.image_size = int(image_size)
    self.batch_size = int(batch_size)
    self.prompt = prompt
    self.info = dict(info or {}, decode=decode, prompt=prompt, batch_size=batch_size)
    self._tokens = np.tile(prompt_tokens(vocab, prompt, input_length),
                           (self.batch_size, 1))  # [batch, input_length]
    self._decode = decoding.make_batch_decoder(
        model, mode=decode, max_decode_length=target_length, beam_size=beam_size,
        alpha=beam_alpha)
    self._params = jax.device_put(params)

  def __call__(self, images: np.ndarray) -> list[str]:
    """uint8 [n, S, S, 3] with n <= batch_size -> n captions ("" when EOS comes first)."""
    n = len(images)
    if not 0 < n <= self.batch_size or images.shape[1:] != (self.image_size,) * 2 + (3,):
      raise ValueError(f"images must be [1..{self.batch_size}, {self.image_size}, "
                       f"{self.image_size}, 3], got {images.shape}")
    padded = decoding.pad_batch({"image": images.astype(np.uint8)}, self.batch_size)["image"]
    tokens = np.asarray(jax.device_get(self._decode(self._params, padded, self._tokens)))
    return [tokens_to_text(self.vocab, row) for row in tokens[:n]]


def load_image(encoded: bytes, size: int) -> tuple[np.ndarray, tuple[int, int]]:
  """Image bytes -> (uint8 [size, size, 3] squashed as the input pipeline does, (w, h)).

  (w, h) is the stored image's size. JPEGs are decoded at the smallest scale
  still >= `size` (PIL draft mode), which makes large web images cheap; PIL's
  bilinear resize is antialiased, like the pipeline's `tf.image.resize`.
  """
  with Image.open(io.BytesIO(encoded)) as img:
    width, height = img.size
    img.draft("RGB", (size, size))
    rgb = img.convert("RGB").resize((size, size), Image.BILINEAR)
  return np.asarray(rgb, np.uint8), (width, height)


def iter_source(data_dir: str, dataset: str, split: str,
                max_examples: int | None = None) -> Iterator[dict[str, Any]]:
  """Records (id, image bytes, width, height) of a split, in file order.

  Raises:
    FileNotFoundError: naming the dataset, split and expected files.
  """
  files = sources.list_files(data_dir, dataset, split)
  if not files:
    raise FileNotFoundError(f"no records of dataset {dataset!r} split {split!r}: nothing "
                            f"matches {schema.file_pattern(data_dir, dataset, split)}")
  spec = {"image/id": tf.io.FixedLenFeature([], tf.string, default_value=""),
          "image/encoded": tf.io.FixedLenFeature([], tf.string, default_value=""),
          "image/width": tf.io.FixedLenFeature([], tf.int64, default_value=0),
          "image/height": tf.io.FixedLenFeature([], tf.int64, default_value=0)}
  ds = tf.data.TFRecordDataset(files)
  if max_examples is not None:
    ds = ds.take(max_examples)
  ds = ds.map(lambda r: tf.io.parse_single_example(r, spec)).prefetch(64)
  yield from ds.as_numpy_iterator()


def _prepare(records: list[dict], size: int) -> tuple[list[dict], np.ndarray,
                                                      collections.Counter]:
  """Decodes a chunk's images; returns kept output records, images [n, S, S, 3], skips."""
  kept, images, skipped = [], [], collections.Counter()
  for r in records:
    if not r["image/encoded"]:
      skipped["no_image"] += 1
      continue
    try:
      image, (width, height) = load_image(r["image/encoded"], size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
      logging.warning("skipping %s: image does not decode (%s)", r["image/id"], e)
      skipped["corrupt_image"] += 1
      continue
    kept.append({"image/id": r["image/id"], "image/encoded": r["image/encoded"],
                 "image/width": int(r["image/width"]) or width,
                 "image/height": int(r["image/height"]) or height})
    images.append(image)
  stacked = (np.stack(images) if images
             else np.zeros((0, size, size, 3), np.uint8))  # [n, S, S, 3]
  return kept, stacked, skipped


def _chunks(records: Iterable[dict], size: int) -> Iterator[list[dict]]:
  it = iter(records)
  while chunk := list(itertools.islice(it, size)):
    yield chunk


def _prepared_batches(records: Iterable[dict], batch_size: int, image_size: int,
                      workers: int) -> Iterator[tuple[list[dict], np.ndarray,
                                                      collections.Counter]]:
  """`_prepare`d chunks in order, decoded on threads a few batches ahead."""
  with futures.ThreadPoolExecutor(max_workers=workers) as pool:
    pending: collections.deque = collections.deque()
    for chunk in _chunks(records, batch_size):
      pending.append(pool.submit(_prepare, chunk, image_size))
      if len(pending) > _PREFETCH_BATCHES:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def _prepare_output(out_dir: str, dataset: str, split: str, overwrite: bool) -> None:
  """Refuses to mix with an existing output (stale shards would be read too)."""
  existing = sources.list_files(out_dir, dataset, split) + tf.io.gfile.glob(
      schema.file_pattern(out_dir, dataset, split) + ".tmp")
  if existing and not overwrite:
    raise FileExistsError(f"{schema.split_dir(out_dir, dataset, split)} already holds "
                          f"{len(existing)} shard(s); pass overwrite=True (--overwrite) "
                          "to replace them")
  for path in existing:
    tf.io.gfile.remove(path)


def generate_captions(captioner: CaptionFn, *, data_dir: str, dataset: str, split: str,
                      out_dir: str, out_dataset: str = "gen", max_examples: int | None = None,
                      num_shards: int = 1, overwrite: bool = False, progress: bool = True,
                      workers: int = 2) -> dict[str, Any]:
  """Captions `dataset/split` of `data_dir` and writes it as `out_dataset/split` of `out_dir`.

  Args:
    captioner: images -> captions, e.g. `dynpt.downstream.captioner.load_captioner(...)`.
    data_dir, dataset, split: the image set (any schema dataset with
      ``image/encoded``; video datasets are refused).
    out_dir: data dir to write into (may be `data_dir` itself, to train on the
      generated source next to the others).
    out_dataset: output dataset name; the ``gen_*`` tasks read ``gen``.
    max_examples: caption only the first N records (file order).
    num_shards: output TFRecord shards.
    overwrite: replace an existing output split.
    progress: show progress (a bar on a terminal, else a line every 30 s).
    workers: threads decoding images.

  Returns:
    The summary also written to ``<out_dir>/<out_dataset>/<split>/`` + `SUMMARY_FILE`:
    records read and written, skips by reason, the captioner's provenance.

  Raises:
    FileNotFoundError: when the source split has no records.
    ValueError: when the source is the output, or has no still images.
    FileExistsError: when the output exists and `overwrite` is False.
  """
  if (fs.absolute(data_dir), dataset) == (fs.absolute(out_dir), out_dataset):
    raise ValueError(f"output {out_dir}/{out_dataset} is the source dataset itself")
  if max_examples is not None and max_examples < 1:
    raise ValueError(f"max_examples must be >= 1, got {max_examples}")
  start = time.time()
  records = iter_source(data_dir, dataset, split, max_examples)
  first = next(records, None)
  if first is None:
    raise ValueError(f"dataset {dataset!r} split {split!r} under {data_dir} is empty")
  if not first["image/encoded"]:
    raise ValueError(f"dataset {dataset!r} split {split!r}: record {first['image/id']!r} "
                     "has no 'image/encoded' (video datasets cannot be captioned)")
  _prepare_output(out_dir, out_dataset, split, overwrite)

  skipped, read = collections.Counter(), 0
  bar = console.progress(total=max_examples, desc=f"caption {dataset}/{split}", unit="ex",
                         enabled=progress)
  with schema.ShardedWriter(out_dir, out_dataset, split, num_shards) as writer:
    for chunk_records, images, chunk_skipped in _prepared_batches(
        itertools.chain([first], records), captioner.batch_size, captioner.image_size,
        workers):
      skipped.update(chunk_skipped)
      read += len(chunk_records) + sum(chunk_skipped.values())
      captions = captioner(images) if len(images) else []
      for record, caption in zip(chunk_records, captions):
        caption = caption.strip()
        if caption:
          writer.write({**record, "text/captions": [caption]})
        else:
          skipped["empty_caption"] += 1
      bar.update(len(chunk_records) + sum(chunk_skipped.values()))
      bar.set_postfix(written=writer.count)
  bar.close()
  seconds = time.time() - start
  summary = {
      "source": {"data_dir": fs.absolute(data_dir), "dataset": dataset, "split": split},
      "out_dir": fs.absolute(out_dir), "dataset": out_dataset, "split": split,
      "captioner": getattr(captioner, "info", {}), "read": read, "written": writer.count,
      "skipped": dict(sorted(skipped.items())), "skipped_total": sum(skipped.values()),
      "num_shards": num_shards, "seconds": round(seconds, 2),
      "examples_per_second": round(read / max(seconds, 1e-9), 2),
  }
  with tf.io.gfile.GFile(os.path.join(schema.split_dir(out_dir, out_dataset, split),
                                      SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=2)
  if not writer.count:
    logging.warning("%s/%s: no caption was written (skipped: %s)", out_dataset, split,
                    summary["skipped"])
  return summary
