"""Shared preprocessors: example keys, prompts, seeds, images and downstream text.

Every preprocessor is a pure function from `tf.data.Dataset` to
`tf.data.Dataset` over records parsed by `dynpt.data.schema.parse_example`.
Cross-modal tasks live in `preprocessors_text`, object-aware tasks in
`preprocessors_objects`.

Randomness (deviation from STYLE.md, on purpose): preprocessors do NOT take
seqio's `num_seeds` seeds. Those are drawn from the position in the stream, and
a resumed `TaskIterator` does not replay the stream from its start, so a
resumed run would see different MLM masks or ITM negatives. Instead the source
(`dynpt.data.sources`) gives each example a stateless seed ``SEED_KEY`` [2]
derived from (seed, epoch, record key), and preprocessors derive independent
sub-seeds from it with `fold_seed`. The example at a position is then a pure
function of (task, seed, shard, position).
"""

from __future__ import annotations

from typing import Sequence

import seqio
import tensorflow as tf

from dynpt.data import image_ops

# Keys the source adds to each parsed record.
SEED_KEY = "example/seed"  # int64 [2] stateless seed of this example
POS_KEY = "example/position"  # int64 [] position of the example in the iterator's stream
NEG_CAPTIONS_KEY = "neg/captions"  # string [n] captions of another record (ITM)
CANDIDATES_KEY = "objects/candidates"  # string [k] labels drawn from the source's vocabulary

# Prompts. The paper gives the object-aware ones; the cross-modal and downstream
# ones are ours (the paper does not state them) and only need to tell tasks apart.
# All lower case without colons, so that the toy vocabulary (trained on the toy
# world's lower-case text) covers them without unknown pieces.
CAPTION_PROMPT = "describe the image"
COMPLETION_PROMPT = "complete the caption"
ITM_PROMPT = "does the caption match"
LIST_OBJECTS_PROMPT = "list all objects"
EXISTS_TEMPLATE = "does {} exist?"
# The paper writes "and/or"; the toy vocabulary has no "/" piece, and "or" asks
# the same (inclusive) question.
MULTI_EXISTS_TEMPLATE = "does {}, {} or {} exist?"
WHICH_EXIST_TEMPLATE = "which of {}, {} and {} exist?"
SNLI_VE_TEMPLATE = "does the image entail {}"
REFEXP_TEMPLATE = "locate {}"
YES, NO, NONE = "yes", "no", "none"

# Every fixed word the tasks write, for tools/train_vocab.py to cover.
PROMPT_TEXTS = (CAPTION_PROMPT, COMPLETION_PROMPT, ITM_PROMPT, LIST_OBJECTS_PROMPT,
                EXISTS_TEMPLATE.format("x"), MULTI_EXISTS_TEMPLATE.format("x", "y", "z"),
                WHICH_EXIST_TEMPLATE.format("x", "y", "z"), SNLI_VE_TEMPLATE.format("x"),
                REFEXP_TEMPLATE.format("x"), YES, NO, NONE, "a, b")


def map_example(fn):
  """`seqio.map_over_dataset` for a per-example function, with AutoGraph off.

  These functions have no Python control flow over tensors, and AutoGraph's
  source conversion costs about a second per pipeline build.
  """
  return seqio.map_over_dataset(tf.autograph.experimental.do_not_convert(fn))


def fold_seed(seed: tf.Tensor, salt: int) -> tf.Tensor:
  """An independent stateless seed [2] for one random choice of an example."""
  return tf.random.experimental.stateless_fold_in(seed, salt)


def random_index(seed: tf.Tensor, n: tf.Tensor) -> tf.Tensor:
  """Uniform int32 in [0, n) (0 when n == 0)."""
  return tf.random.stateless_uniform([], seed, minval=0, maxval=tf.maximum(n, 1),
                                     dtype=tf.int32)


def shuffle(values: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Stateless shuffle of a 1-D tensor."""
  return seqio.utils.stateless_shuffle(values, seed)


def fill_template(template: str, values: Sequence[tf.Tensor] | tf.Tensor) -> tf.Tensor:
  """Python template with ``{}`` slots, filled with scalar string tensors."""
  parts = template.split("{}")
  if not isinstance(values, (list, tuple)):
    values = [values[i] for i in range(len(parts) - 1)]
  if len(values) != len(parts) - 1:
    raise ValueError(f"template {template!r} needs {len(parts) - 1} values, got {len(values)}")
  pieces = [tf.constant(parts[0])]
  for value, part in zip(values, parts[1:]):
    pieces += [value, tf.constant(part)]
  return tf.strings.join(pieces)


def pick(values: tf.Tensor, index: tf.Tensor, default: str = "") -> tf.Tensor:
  """values[index], or `default` when `values` is empty."""
  padded = tf.concat([values, [default]], axis=0)
  return padded[tf.where(tf.size(values) > 0, index, tf.size(values))]


@map_example
def select_caption(features: dict) -> dict:
  """Adds ``caption``: one of ``text/captions`` drawn per example ("" if none)."""
  caps = features["text/captions"]
  i = random_index(fold_seed(features[SEED_KEY], 1), tf.size(caps))
  features["caption"] = tf.strings.strip(pick(caps, i))
  return features


@map_example
def decode_image(features: dict) -> dict:
  """``image/encoded`` -> ``image`` uint8 [h, w, 3] and ``image_wh`` int32 [2].

  The raw bytes are dropped so they do not travel down the pipeline.
  """
  image = image_ops.decode_image(features.pop("image/encoded"))
  features.pop("video/frames", None)
  features["image"] = image
  if "image_wh" not in features:
    features["image_wh"] = tf.stack([tf.shape(image)[1], tf.shape(image)[0]])
  return features


@map_example
def decode_video(features: dict) -> dict:
  """``video/frames`` -> ``image`` uint8 [frames, h, w, 3] and ``image_wh`` [2]."""
  video = image_ops.decode_frames(features.pop("video/frames"))
  features.pop("image/encoded", None)
  features["image"] = video
  if "image_wh" not in features:
    features["image_wh"] = tf.stack([tf.shape(video)[2], tf.shape(video)[1]])
  return features


def most_common(values: tf.Tensor) -> tf.Tensor:
  """The most frequent string of a 1-D tensor (first seen wins ties; "" if empty)."""
  uniq, _, counts = tf.unique_with_counts(values)
  return pick(uniq, tf.cast(tf.argmax(counts), tf.int32))


@map_example
def vqa(features: dict) -> dict:
  """Question answering (VQAv2, GQA, video QA): question -> most common answer.

  ``answers`` (all ground-truth answers) stays in the example for the metrics.
  """
  features["inputs"] = features["question"]
  features["targets"] = most_common(features["answers"])
  return features


@map_example
def snli_ve(features: dict, template: str = SNLI_VE_TEMPLATE) -> dict:
  """Visual entailment: hypothesis -> entailment | neutral | contradiction."""
  features["inputs"] = fill_template(template, [features["hypothesis"]])
  features["targets"] = features["label"]
  features["answers"] = tf.reshape(features["label"], [1])
  return features


def image_wh_from_record(features: dict) -> tf.Tensor:
  """int32 [2] (width, height) from the record, else from the image header."""
  width = tf.cast(features["image/width"], tf.int32)
  height = tf.cast(features["image/height"], tf.int32)

  def from_header():
    encoded = features["image/encoded"]
    if "video/frames" in features:
      encoded = tf.concat([features["video/frames"][:1], [encoded]], 0)[0]
    shape = tf.shape(image_ops.decode_image(encoded))
    return tf.stack([shape[1], shape[0]])

  return tf.cond((width > 0) & (height > 0), lambda: tf.stack([width, height]), from_header)


def box_to_text_tf(box_xyxy: tf.Tensor, image_wh: tf.Tensor, num_bins: int = 100,
                   loc_tokens: bool = False) -> tf.Tensor:
  """TensorFlow twin of `dynpt.data.boxes.box_to_text` (same float64 arithmetic).

  With `loc_tokens`, writes the tokenizer form ``<extra_id_k>`` separated by
  spaces (see `boxes.loc_to_extra_ids`); `boxes.text_to_box` reads both.
  """
  box = tf.cast(tf.reshape(box_xyxy, [4]), tf.float64)
  wh = tf.cast(tf.reshape(image_wh, [2]), tf.float64)
  x0, y0, x1, y1 = box[0], box[1], box[2], box[3]
  norm = tf.stack([tf.maximum(y0, y1) / wh[1], tf.maximum(x0, x1) / wh[0],
                   tf.minimum(y0, y1) / wh[1], tf.minimum(x0, x1) / wh[0]])
  bins = tf.clip_by_value(tf.floor(norm * num_bins), 0, num_bins - 1)
  words = tf.strings.as_string(tf.cast(bins, tf.int64))
  if loc_tokens:
    words = tf.strings.join(["<extra_id_", words, ">"])
  return tf.strings.reduce_join(words, separator=" ")


@map_example
def refexp_box(features: dict, num_bins: int = 100, loc_tokens: bool = False,
               template: str = REFEXP_TEMPLATE) -> dict:
  """Referring expression -> its box as text (RefCOCO, RefCOCO+, RefCOCOg).

  Keeps ``gt_box`` (pixel xyxy) and ``image_wh`` for the metrics.
  """
  wh = image_wh_from_record(features)
  box = tf.reshape(features["refexp/bbox"], [4])
  features["inputs"] = fill_template(template, [features["refexp"]])
  features["targets"] = box_to_text_tf(box, wh, num_bins, loc_tokens)
  features["gt_box"] = box
  features["image_wh"] = wh
  return features
