"""The video-QA answer vocabulary: built from a train split, applied at evaluation."""
import collections

import pytest
import tensorflow as tf

from dynpt import metrics
from dynpt.data import pipeline, schema
from dynpt.downstream import answer_vocab, decode_score
from dynpt.train.config import DataConfig


def _write(data_dir, answers_per_record, corrupt_at=()):
  """A msrvtt_qa train split with the given answers; `corrupt_at` records are garbage."""
  path = schema.shard_path(data_dir, "msrvtt_qa", "train", 0, 1)
  tf.io.gfile.makedirs(schema.split_dir(data_dir, "msrvtt_qa", "train"))
  with tf.io.TFRecordWriter(path) as w:
    for i, answers in enumerate(answers_per_record):
      if i in corrupt_at:
        w.write(b"\x08\x96not a tf.train.Example")
      else:
        w.write(schema.encode_example({"image/id": f"v{i}", "question": "what is it",
                                       "answers": answers}))


def test_vocabulary_is_the_most_frequent_answers_and_skips_corrupt_records(tmp_path):
  data_dir = str(tmp_path)
  rows = [["dog"]] * 5 + [["Cat."]] * 3 + [["bird"]] * 2 + [["fish"]] + [["x"]]
  _write(data_dir, rows, corrupt_at={11})
  assert collections.Counter(answer_vocab.read_answers(data_dir, "msrvtt_qa")) == {
      "dog": 5, "Cat.": 3, "bird": 2, "fish": 1}
  vocab = answer_vocab.load_answer_vocab(data_dir, "msrvtt_qa", 2)
  assert vocab == {"dog", "cat"}  # normalised, as the metric compares them


def test_missing_split_names_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="msvd_qa.*train"):
    answer_vocab.read_answers(str(tmp_path), "msvd_qa")


def test_eval_masks_questions_outside_the_vocabulary(tmp_path):
  data_dir = str(tmp_path)
  _write(data_dir, [["dog"]] * 3 + [["cat"]] * 2 + [["bird"]])
  pipeline.get_task("msrvtt_qa")  # registers the tasks
  task = pipeline.get_task("msrvtt_qa")
  data_cfg = DataConfig(data_dir=data_dir)
  fns = decode_score._metric_fns("msrvtt_qa", task, data_cfg,
                             decode_score.EvalConfig(answer_vocab_size=2))
  targets = [{"answer": a} for a in ("dog", "cat", "bird", "dog")]
  predictions = ["dog", "dog", "bird", "dog"]
  out = fns[0](targets, predictions)
  # "bird" is outside the top-2 vocabulary: 2 of the 3 remaining are right.
  assert out == pytest.approx({"accuracy": 200 / 3, "num_excluded": 1.0})
  # Without a size, and for a task that is not video QA, the task's own metric is used.
  plain = decode_score._metric_fns("msrvtt_qa", task, data_cfg, decode_score.EvalConfig())
  assert plain[0](targets, predictions) == {"accuracy": 75.0}
  vqa = pipeline.get_task("vqav2")
  assert decode_score._metric_fns("vqav2", vqa, data_cfg,
                              decode_score.EvalConfig(answer_vocab_size=2)) == list(vqa.metric_fns)
  with pytest.raises(ValueError, match="answer_vocab_size"):
    decode_score._metric_fns("msrvtt_qa", task, data_cfg, decode_score.EvalConfig(answer_vocab_size=0))
  assert metrics.build_answer_vocab(["a", "b", "b"], 1) == {"b"}
