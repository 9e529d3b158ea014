"""Object-aware pretraining preprocessors on label sources (OI, IN21k, VG).

The paper's four prompts over a record's class names (``objects/label``; boxes
are ignored, as in the paper). Prompts are written in lower case and "and/or"
as "or" (see `preprocessors.PROMPT_TEXTS`):

1. "List all objects" -> "a, b, ..." (the record's labels, deduplicated, in
   record order; "none" for a record without labels).
2. "Does X exist?" -> yes/no; X is a present label or, with probability 0.5,
   an absent one.
3. "Does X, Y and/or Z exist?" -> yes/no; with probability 0.5 at least one
   of the three is present (how many is uniform), else none is.
4. "Which of X, Y and Z exist?" -> the present ones in question order, or
   "none"; the number of present ones is uniform in [0, min(3, #present)].

Absent labels come from ``CANDIDATES_KEY``: labels the source drew for this
example from the label vocabulary of its dataset (see
`dynpt.data.sources.label_vocabulary`), minus the record's own labels. Labels
are non-exhaustive, so an "absent" label may in fact be in the image; that
noise is the paper's too. When a record leaves too few absent (or present)
labels for a question, the question uses what there is, so every answer stays
true.
"""

from __future__ import annotations

import tensorflow as tf

from dynpt.data import preprocessors as pp


def present_and_absent(features: dict) -> tuple[tf.Tensor, tf.Tensor]:
  """(unique labels of the record in order, unique candidates not among them)."""
  present, _ = tf.unique(tf.strings.strip(features["objects/label"]))
  present = tf.boolean_mask(present, tf.strings.length(present) > 0)
  candidates, _ = tf.unique(features[pp.CANDIDATES_KEY])
  in_record = tf.reduce_any(tf.equal(candidates[:, None], present[None, :]), axis=1)
  return present, tf.boolean_mask(candidates, tf.logical_not(in_record))


def _uniform_int(seed: tf.Tensor, low: tf.Tensor, high: tf.Tensor) -> tf.Tensor:
  """Uniform int32 in [low, high] (inclusive; `low` when high < low)."""
  high = tf.maximum(high, low)
  return tf.random.stateless_uniform([], seed, minval=low, maxval=high + 1, dtype=tf.int32)


def _fill_to(values: tf.Tensor, k: int) -> tf.Tensor:
  """Cycles `values` (non-empty) to exactly k entries."""
  return tf.gather(values, tf.range(k) % tf.maximum(tf.size(values), 1))


def _choose(features: dict, num_present: tf.Tensor, k: int, salt: int
            ) -> tuple[tf.Tensor, tf.Tensor]:
  """k labels with `num_present` present ones (adjusted to what exists), shuffled.

  Returns (labels [k] string, is_present [k] bool).
  """
  seed = features[pp.SEED_KEY]
  present, absent = present_and_absent(features)
  present = pp.shuffle(present, pp.fold_seed(seed, salt))
  absent = pp.shuffle(absent, pp.fold_seed(seed, salt + 1))
  n_present, n_absent = tf.size(present), tf.size(absent)
  num_present = tf.minimum(tf.maximum(num_present, k - n_absent), n_present)
  chosen = tf.concat([present[:num_present], absent[:k - num_present]], 0)
  flags = tf.concat([tf.ones([num_present], tf.bool),
                     tf.zeros([tf.size(chosen) - num_present], tf.bool)], 0)
  order = pp.shuffle(tf.range(tf.size(chosen)), pp.fold_seed(seed, salt + 2))
  chosen, flags = tf.gather(chosen, order), tf.gather(flags, order)
  return _fill_to(chosen, k), _fill_to(flags, k)


@pp.map_example
def list_objects(features: dict, prompt: str = pp.LIST_OBJECTS_PROMPT) -> dict:
  """"List all objects" -> "a, b, ..." (or "none")."""
  present, _ = present_and_absent(features)
  listed = tf.strings.reduce_join(present, separator=", ")
  features["inputs"] = tf.constant(prompt)
  features["targets"] = tf.where(tf.size(present) > 0, listed, pp.NONE)
  return features


@pp.map_example
def exists(features: dict, template: str = pp.EXISTS_TEMPLATE,
           positive_rate: float = 0.5) -> dict:
  """"Does X exist?" -> yes/no."""
  seed = features[pp.SEED_KEY]
  want = tf.random.stateless_uniform([], pp.fold_seed(seed, 10)) < positive_rate
  label, flag = _choose(features, tf.cast(want, tf.int32), 1, salt=11)
  features["inputs"] = pp.fill_template(template, [label[0]])
  features["targets"] = tf.where(flag[0], pp.YES, pp.NO)
  return features


@pp.map_example
def multi_exists(features: dict, template: str = pp.MULTI_EXISTS_TEMPLATE,
                 positive_rate: float = 0.5) -> dict:
  """"Does X, Y or Z exist?" -> yes if any of them is present."""
  seed = features[pp.SEED_KEY]
  k = template.count("{}")
  want = tf.random.stateless_uniform([], pp.fold_seed(seed, 20)) < positive_rate
  n_present = tf.size(present_and_absent(features)[0])
  how_many = _uniform_int(pp.fold_seed(seed, 21), 1, tf.minimum(k, n_present))
  labels, flags = _choose(features, tf.where(want, how_many, 0), k, salt=22)
  features["inputs"] = pp.fill_template(template, labels)
  features["targets"] = tf.where(tf.reduce_any(flags), pp.YES, pp.NO)
  return features


@pp.map_example
def which_exist(features: dict, template: str = pp.WHICH_EXIST_TEMPLATE) -> dict:
  """"Which of X, Y and Z exist?" -> the present ones in order, or "none"."""
  seed = features[pp.SEED_KEY]
  k = template.count("{}")
  n_present = tf.size(present_and_absent(features)[0])
  how_many = _uniform_int(pp.fold_seed(seed, 30), 0, tf.minimum(k, n_present))
  labels, flags = _choose(features, how_many, k, salt=31)
  present, _ = tf.unique(tf.boolean_mask(labels, flags))
  listed = tf.strings.reduce_join(present, separator=", ")
  features["inputs"] = pp.fill_template(template, labels)
  features["targets"] = tf.where(tf.size(present) > 0, listed, pp.NONE)
  return features
