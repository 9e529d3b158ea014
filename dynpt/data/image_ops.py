"""Image and video tensor ops for the input pipeline (TensorFlow, CPU only).

Images stay uint8 end to end: the train step normalises them on the
accelerator, so the host ships 4x fewer bytes. Resizing squashes to a square
without cropping or padding; normalised box coordinates are unchanged by a
squash, so box-as-text targets stay exact.

The only augmentation offered is a mild colour jitter. Random resized crops
and horizontal flips are NOT offered on purpose: they move objects, which
silently breaks position words ("left of"), box targets and referring
expressions that the tasks read from the untouched record.
"""

from __future__ import annotations

import tensorflow as tf


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """JPEG/PNG/GIF/BMP bytes -> uint8 [height, width, 3] (first frame of a GIF)."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def decode_frames(frames: tf.Tensor) -> tf.Tensor:
  """[frames] encoded bytes -> uint8 [frames, height, width, 3].

  All frames of a video must have the same size (the schema's contract).
  """
  tf.debugging.assert_positive(tf.size(frames), message="video has no frames")
  return tf.map_fn(decode_image, frames,
                   fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Squashes uint8 [..., h, w, 3] to uint8 [..., size, size, 3] (antialiased)."""
  out = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def sample_frames(video: tf.Tensor, num_frames: int) -> tf.Tensor:
  """Picks `num_frames` evenly spaced frames of [F, h, w, 3] (repeats if F is smaller).

  Frame i of the output is the centre of the i-th of `num_frames` equal time
  bins, so the choice is deterministic and covers the whole clip.
  """
  count = tf.shape(video)[0]
  centres = (tf.range(num_frames, dtype=tf.float32) + 0.5) * tf.cast(count, tf.float32)
  idx = tf.minimum(tf.cast(tf.floor(centres / num_frames), tf.int32), count - 1)
  out = tf.gather(video, idx)
  out.set_shape([num_frames] + video.shape.as_list()[1:])
  return out


def color_jitter(image: tf.Tensor, seed: tf.Tensor, strength: float = 0.1) -> tf.Tensor:
  """Mild, geometry-preserving colour jitter on uint8 [..., h, w, 3].

  Brightness, contrast and saturation each change by at most `strength`;
  stateless ops keyed by `seed` [2] make the result a function of the example,
  so a resumed iterator reproduces it.
  """
  seeds = tf.random.experimental.stateless_split(seed, 3)
  x = tf.image.convert_image_dtype(image, tf.float32)
  x = tf.image.stateless_random_brightness(x, strength, seed=seeds[0])
  x = tf.image.stateless_random_contrast(x, 1.0 - strength, 1.0 + strength, seed=seeds[1])
  x = tf.image.stateless_random_saturation(x, 1.0 - strength, 1.0 + strength, seed=seeds[2])
  return tf.image.convert_image_dtype(tf.clip_by_value(x, 0.0, 1.0), tf.uint8, saturate=True)
