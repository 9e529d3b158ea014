"""The standard answer vocabulary of a QA data set: its most frequent training answers.

Prior video-QA work reports MSRVTT-QA and MSVD-QA accuracy over a fixed answer
vocabulary (the top-1000 training answers since Xu et al. 2017; some later work
uses 4000). The paper generates open-ended answers and, "to compare directly with
all prior work, we mask out the answers which are outside the standard
vocabulary": test questions whose ground truth is not in the vocabulary are left
out of the average. This module builds that vocabulary from a split on disk;
`dynpt.metrics.exact_match_metric_fn(answer_vocab=...)` applies it.
"""

from __future__ import annotations

import functools

from absl import logging
from google.protobuf import message

from dynpt import metrics
from dynpt.data import schema


def read_answers(data_dir: str, dataset: str, split: str = "train") -> list[str]:
  """Every ground-truth answer of a split (only the `answers` feature is parsed).

  A corrupt record is skipped, a truncated file is read up to the damage, and both
  are counted in the log.

  Raises:
    FileNotFoundError: naming the split's directory when it has no record files.
  """
  import tensorflow as tf

  files = sorted(tf.io.gfile.glob(schema.file_pattern(data_dir, dataset, split)))
  if not files:
    raise FileNotFoundError(f"answer vocabulary: no records for dataset {dataset!r} split "
                            f"{split!r} under {schema.split_dir(data_dir, dataset, split)}")
  answers, skipped = [], 0
  for path in files:
    it = iter(tf.data.TFRecordDataset(path).as_numpy_iterator())
    while True:
      try:
        raw = next(it)
      except StopIteration:
        break
      except tf.errors.DataLossError as e:  # A truncated file: keep what came before.
        skipped += 1
        logging.warning("answer vocabulary: %s is corrupt after %d answers (%s); "
                        "going on with the next file", path, len(answers),
                        str(e).splitlines()[0])
        break
      try:
        example = tf.train.Example.FromString(raw)
      except message.DecodeError:  # A corrupt record.
        skipped += 1
        continue
      values = example.features.feature["answers"].bytes_list.value
      answers.extend(a.decode("utf-8", "replace") for a in values if a)
  if skipped:
    logging.warning("answer vocabulary %s/%s: %d unreadable records skipped", dataset,
                    split, skipped)
  return answers


@functools.lru_cache(maxsize=32)
def load_answer_vocab(data_dir: str, dataset: str, size: int,
                      split: str = "train") -> frozenset[str]:
  """The `size` most frequent normalised answers of `dataset`'s `split` (cached per run)."""
  answers = read_answers(data_dir, dataset, split)
  if not answers:
    raise ValueError(f"answer vocabulary: {dataset}/{split} under {data_dir} has no answers")
  vocab = metrics.build_answer_vocab(answers, size)
  covered = sum(metrics.normalize_answer(a) in vocab for a in answers) / len(answers)
  logging.info("answer vocabulary of %s/%s: %d answers, covering %.1f%% of %d training "
               "answers", dataset, split, len(vocab), 100 * covered, len(answers))
  return vocab
