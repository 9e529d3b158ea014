"""Helpers shared by the task modules: output features and idempotent registration."""

from __future__ import annotations

from typing import Callable, Sequence

import seqio
import tensorflow as tf

from dynpt.data import preprocessors as pp
from dynpt.data import sources
from dynpt.data import vocab as vocab_lib

# Registration must not touch the disk: seqio loads the model on first use.
VOCABULARY = vocab_lib.seqio_vocabulary()

# Appended to every task: tokenise string features, then cut to length and add EOS.
TOKENIZE = (seqio.preprocessors.tokenize,)
APPEND_EOS = (seqio.preprocessors.append_eos_after_trim,)


def output_features(video: bool = False) -> dict[str, seqio.Feature]:
  """``inputs``/``targets`` tokens plus the uint8 ``image`` (rank 4 for video).

  The image feature's pass-through vocabulary is never used to tokenise:
  images are decoded after tokenisation.
  """
  return {
      "inputs": seqio.Feature(VOCABULARY, add_eos=True),
      "targets": seqio.Feature(VOCABULARY, add_eos=True),
      "image": seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False,
                             dtype=tf.uint8, rank=4 if video else 3),
  }


def add_task(name: str, source: sources.SchemaDataSource,
             preprocessors: Sequence[Callable[..., tf.data.Dataset]], *, video: bool = False,
             postprocess_fn: Callable | None = None, metric_fns: Sequence[Callable] = ()
             ) -> seqio.Task:
  """Registers (or re-registers) one task whose last step decodes its image."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  decode = pp.decode_video if video else pp.decode_image
  return seqio.TaskRegistry.add(
      name, source=source, preprocessors=list(preprocessors) + [decode],
      output_features=output_features(video), postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns))
