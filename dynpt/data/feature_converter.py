"""Task features -> model features for the image encoder-decoder.

Contract (seqio's standard names plus the image and the task id):

  task feature   dtype   shape                 model feature(s)
  inputs         int32   [<= L_in]             encoder_input_tokens [L_in]
  targets        int32   [<= L_tgt]            decoder_target_tokens, decoder_input_tokens,
                                               decoder_loss_weights [L_tgt]
  image          uint8   [h, w, 3]             image [S, S, 3]
                         or [F, h, w, 3]       or [num_frames, S, S, 3] (video)
  task_id        int32   []                    task_id [] (or the converter's `task_id`)

Tokens are padded with 0 (packing is not supported: an example carries an
image). Images are squashed to `image_size` and stay uint8; videos are
resampled to `num_frames` evenly spaced frames. Optional pass-through features
(`PASSTHROUGH_SPECS`: ground truth for metrics, the stream position) keep
fixed shapes so that they batch.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import seqio
import tensorflow as tf

from dynpt.data import image_ops
from dynpt.data import preprocessors as pp

FeatureSpec = seqio.FeatureConverter.FeatureSpec
DEFAULT_NUM_FRAMES = 4
MAX_ANSWERS = 10  # VQAv2 has 10 answers; fewer are padded with "".

# name -> (spec, fixed length of the first axis or None for scalars)
PASSTHROUGH_SPECS = {
    "answers": (FeatureSpec(tf.string, rank=1), MAX_ANSWERS),
    "gt_box": (FeatureSpec(tf.float32, rank=1), 4),
    "image_wh": (FeatureSpec(tf.int32, rank=1), 2),
    pp.POS_KEY: (FeatureSpec(tf.int64, rank=0), None),
}


def _fixed_length(value: tf.Tensor, length: int, pad) -> tf.Tensor:
  value = value[:length]
  value = tf.pad(value, [[0, length - tf.shape(value)[0]]], constant_values=pad)
  value.set_shape([length])
  return value


class ImageEncDecFeatureConverter(seqio.EncDecFeatureConverter):
  """`seqio.EncDecFeatureConverter` plus ``image`` and ``task_id``.

  Args:
    image_size: side of the square model image.
    num_frames: frames per video; None for still-image tasks.
    task_id: the task id written when an example has no ``task_id`` feature.
    passthrough: names from `PASSTHROUGH_SPECS` copied into the output.
    augment: mild colour jitter seeded by the example (see `image_ops`).
    bos_id: first decoder input id (T5: 0).
  """

  def __init__(self, image_size: int, *, num_frames: int | None = None,
               task_id: int | None = None, passthrough: Sequence[str] = (),
               augment: bool = False, pack: bool = False, bos_id: int = 0,
               apply_length_check: bool = True):
    if pack:
      raise ValueError("ImageEncDecFeatureConverter does not pack: examples carry images")
    unknown = sorted(set(passthrough) - set(PASSTHROUGH_SPECS))
    if unknown:
      raise ValueError(f"unknown pass-through features {unknown}; known: {sorted(PASSTHROUGH_SPECS)}")
    super().__init__(pack=False, apply_length_check=apply_length_check, bos_id=bos_id)
    self.image_size = int(image_size)
    self.num_frames = num_frames
    self.task_id = task_id
    self.passthrough = tuple(passthrough)
    self.augment = augment
    image_rank = 3 if num_frames is None else 4
    self.MODEL_FEATURES = {  # pylint: disable=invalid-name
        **seqio.EncDecFeatureConverter.MODEL_FEATURES,
        "image": FeatureSpec(tf.uint8, rank=image_rank),
        "task_id": FeatureSpec(tf.int32, rank=0),
        **{k: PASSTHROUGH_SPECS[k][0] for k in self.passthrough},
    }

  def _check_input(self, spec: Mapping[str, tf.TensorSpec]) -> None:
    if "image" not in spec:
      raise ValueError(f"examples have no 'image' feature; got {sorted(spec)}")
    rank = spec["image"].shape.rank
    want = 3 if self.num_frames is None else 4
    if rank != want:
      kind = "a video [F, h, w, 3]" if want == 4 else "an image [h, w, 3]"
      raise ValueError(f"converter expects {kind} (num_frames={self.num_frames}) but "
                       f"'image' has rank {rank}")
    if "task_id" not in spec and self.task_id is None:
      raise ValueError("examples have no 'task_id' and the converter was given no task_id")
    missing = [k for k in self.passthrough if k not in spec]
    if missing:
      raise ValueError(f"pass-through features {missing} are not in the examples: {sorted(spec)}")

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict:
    out = dict(super()._convert_example(features))
    image = features["image"]
    if self.num_frames is not None:
      image = image_ops.sample_frames(image, self.num_frames)
    image = image_ops.resize(image, self.image_size)
    if self.augment:
      image = image_ops.color_jitter(image, pp.fold_seed(features[pp.SEED_KEY], 40))
    out["image"] = image
    task_id = features.get("task_id", self.task_id)
    out["task_id"] = tf.cast(tf.reshape(task_id, []), tf.int32)
    for name in self.passthrough:
      value, length = features[name], PASSTHROUGH_SPECS[name][1]
      if length is not None:
        value = _fixed_length(value, length, "" if value.dtype == tf.string else 0)
      out[name] = tf.cast(value, PASSTHROUGH_SPECS[name][0].dtype)
    return out

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    self._check_input(ds.element_spec)
    ds = seqio.utils.trim_and_pad_dataset(ds, task_feature_lengths)
    return ds.map(tf.autograph.experimental.do_not_convert(self._convert_example),
                  num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                ) -> Mapping[str, int]:
    lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
    lengths["image"] = self.image_size if self.num_frames is None else self.num_frames
    lengths["task_id"] = 1  # Rank 0: seqio skips its length check.
    for name in self.passthrough:
      lengths[name] = PASSTHROUGH_SPECS[name][1] or 1
    return lengths
