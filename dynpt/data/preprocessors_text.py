"""Cross-modal pretraining preprocessors on caption sources (CC3M, CC12M, LN).

Each runs after `preprocessors.select_caption` (which puts one caption of the
record in ``caption``) and writes ``inputs``/``targets``:

- `captioning`: all text masked out; prompt -> caption.
- `caption_completion`: the last 20-60% of the caption's tokens (fraction drawn
  per example, the paper's appendix) are the target; prompt + prefix -> rest.
- `image_text_matching`: with probability 0.5 the caption is replaced by one of
  another record (``NEG_CAPTIONS_KEY``, supplied by the source); -> yes/no.
- `mlm`: T5 span corruption at the token level: ``noise_density`` of the tokens
  (the appendix's 25% by default; the main text says 20%) are masked, each run
  of masked tokens becomes one sentinel in the inputs, and the target lists
  the sentinels each followed by its tokens (no closing sentinel).

`captioning` and `image_text_matching` write strings (tokenised later by
`seqio.preprocessors.tokenize`); `caption_completion` and `mlm` work on tokens
and write int32 ids, since their fractions are defined over tokens. Token
tasks first cut the caption to what fits the input length.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

from dynpt.data import preprocessors as pp


@pp.map_example
def captioning(features: dict, prompt: str = pp.CAPTION_PROMPT) -> dict:
  """Prompt -> the whole caption."""
  features["inputs"] = tf.constant(prompt)
  features["targets"] = features["caption"]
  return features


@pp.map_example
def image_text_matching(features: dict, prompt: str = pp.ITM_PROMPT,
                        negative_rate: float = 0.5) -> dict:
  """Caption or another record's caption -> "yes" / "no".

  A drawn negative that equals one of this record's own captions is a true
  match and is labelled "yes", so labels are never wrong.
  """
  seed = features[pp.SEED_KEY]
  negatives = features[pp.NEG_CAPTIONS_KEY]
  own = features["text/captions"]
  coin = tf.random.stateless_uniform([], pp.fold_seed(seed, 2)) < negative_rate
  j = pp.random_index(pp.fold_seed(seed, 3), tf.size(negatives))
  negative = tf.strings.strip(pp.pick(negatives, j))
  is_true = tf.reduce_any(tf.equal(negative, tf.concat([tf.strings.strip(own),
                                                          [features["caption"]]], 0)))
  use_negative = coin & (tf.size(negatives) > 0) & tf.logical_not(is_true)
  text = tf.where(use_negative, negative, features["caption"])
  features["inputs"] = tf.strings.join([prompt, text], separator=" ")
  features["targets"] = tf.where(use_negative, pp.NO, pp.YES)
  return features


def _vocabulary(output_features: Mapping[str, seqio.Feature], name: str) -> seqio.Vocabulary:
  if not output_features or "inputs" not in output_features:
    raise ValueError(f"{name} needs output_features with an 'inputs' vocabulary")
  return output_features["inputs"].vocabulary


def _input_budget(sequence_length: Mapping[str, int] | None, reserved: int) -> int | None:
  """Tokens of caption that fit in the inputs next to `reserved` tokens and EOS."""
  if not sequence_length or sequence_length.get("inputs") is None:
    return None
  return max(sequence_length["inputs"] - 1 - reserved, 1)


@pp.map_example
def caption_completion(features: dict, output_features: Mapping[str, seqio.Feature],
                       sequence_length: Mapping[str, int] | None = None,
                       prompt: str = pp.COMPLETION_PROMPT, min_fraction: float = 0.2,
                       max_fraction: float = 0.6) -> dict:
  """Prompt + first tokens of the caption -> its last 20-60% of tokens.

  With n caption tokens and fraction f ~ U[min, max), round(f * n) tokens go
  to the target, at least 1 and (for n >= 2) leaving a prefix of at least 1.
  """
  vocab = _vocabulary(output_features, "caption_completion")
  prompt_ids = tf.constant(vocab.encode(prompt), tf.int32)
  tokens = tf.cast(vocab.encode_tf(features["caption"]), tf.int32)
  budget = _input_budget(sequence_length, len(vocab.encode(prompt)))
  if budget is not None:
    tokens = tokens[:budget]
  n = tf.size(tokens)
  fraction = tf.random.stateless_uniform([], pp.fold_seed(features[pp.SEED_KEY], 4),
                                         minval=min_fraction, maxval=max_fraction)
  m = tf.cast(tf.round(fraction * tf.cast(n, tf.float32)), tf.int32)
  m = tf.minimum(tf.clip_by_value(m, 1, tf.maximum(n - 1, 1)), n)
  features["inputs"] = tf.concat([prompt_ids, tokens[:n - m]], 0)
  features["targets"] = tokens[n - m:]
  return features


def noise_spans(tokens: tf.Tensor, noise_density: float, seed: tf.Tensor,
                sentinel_base: int, max_sentinels: int) -> tuple[tf.Tensor, tf.Tensor]:
  """T5-style sentinel corruption of 1-D `tokens`; returns (inputs, targets).

  Exactly round(noise_density * n) tokens (at least 1 if n > 0) are masked at
  positions drawn uniformly; adjacent masked tokens share one sentinel.
  Sentinel i has id ``sentinel_base - i`` (T5: ``<extra_id_0>`` is the last id).
  """
  n = tf.size(tokens)
  num_noise = tf.cast(tf.round(noise_density * tf.cast(n, tf.float32)), tf.int32)
  num_noise = tf.minimum(tf.maximum(num_noise, 1), n)
  ranks = tf.argsort(tf.argsort(tf.random.stateless_uniform([n], seed)))
  mask = ranks < num_noise  # [n]
  prev = tf.concat([[False], mask[:-1]], 0)
  starts = mask & tf.logical_not(prev)
  span = tf.minimum(tf.cumsum(tf.cast(starts, tf.int32)) - 1, max_sentinels - 1)
  sentinels = tf.cast(sentinel_base - span, tokens.dtype)
  inputs = tf.boolean_mask(tf.where(starts, sentinels, tokens),
                           tf.logical_not(mask) | starts)
  pairs = tf.stack([sentinels, tokens], axis=1)  # [n, 2]: (sentinel, token)
  targets = tf.boolean_mask(pairs, tf.stack([starts, mask], axis=1))
  return inputs, targets


@pp.map_example
def mlm(features: dict, output_features: Mapping[str, seqio.Feature],
        sequence_length: Mapping[str, int] | None = None,
        noise_density: float = 0.25) -> dict:
  """Masked language modelling with T5 sentinel spans over the caption tokens."""
  vocab = _vocabulary(output_features, "mlm")
  if not vocab.extra_ids:
    raise ValueError("mlm needs a vocabulary with extra_ids (T5 sentinels)")
  tokens = tf.cast(vocab.encode_tf(features["caption"]), tf.int32)
  budget = _input_budget(sequence_length, 0)
  if budget is not None:
    tokens = tokens[:budget]
  inputs, targets = noise_spans(tokens, noise_density,
                                pp.fold_seed(features[pp.SEED_KEY], 5),
                                sentinel_base=vocab.vocab_size - 1,
                                max_sentinels=vocab.extra_ids)
  features["inputs"] = inputs
  features["targets"] = targets
  return features
