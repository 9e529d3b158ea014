"""The vocabulary of every dynpt model, and how to train it on schema data sets.

This is the one place that defines it: the shipped toy model
(`default_vocab_path`), the seqio vocabulary built from a sentencepiece model
(`get_vocabulary`), the extra ids and the padded embedding size. Tasks, the
trainer and the checkpoint converters all import it from here.

The model follows T5's conventions: pad 0, eos 1, unk 2 and no bos, so it
plugs into `seqio.SentencePieceVocabulary(path, extra_ids=100)`; the 100
sentinel ids (`<extra_id_0>`...) are appended by seqio at use time and are
not part of the trained model. Boxes are written as numbers 0..99 (see
`dynpt.data.boxes`), so '▁0'..'▁99' are forced into the vocabulary as
user-defined pieces: each box coordinate is then one token.
"""

from __future__ import annotations

import io
import os
import pathlib
from typing import Iterable, Iterator, Sequence

from absl import logging
import sentencepiece as spm

from dynpt.data import schema

# Schema features that hold text, in the order they are read.
TEXT_FEATURES = ("text/captions", "objects/label", "question", "answers", "hypothesis",
                 "label", "refexp")
NUMBER_PIECES = tuple(f"\u2581{i}" for i in range(100))
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
DEFAULT_VOCAB_SIZE = 512
EXTRA_IDS = 100  # seqio's sentinel ids, appended to every sentencepiece model.
EMBED_MULTIPLE = 128  # Embedding rows are padded to this (MXU/TPU friendly, as T5).


def default_vocab_path() -> str:
  """The shipped toy vocabulary, ``dynpt/assets/vocab/toy_spm.model`` (absolute path)."""
  return str(pathlib.Path(__file__).resolve().parents[1] / "assets" / "vocab" / "toy_spm.model")


def seqio_vocabulary(path: str | None = None):
  """The seqio vocabulary of `path` (default: the toy one) without touching the disk.

  seqio loads the model on first use, so task registration can build its
  output features before any vocabulary file exists.
  """
  import seqio  # Loads TensorFlow; vocabulary training does not need it.

  return seqio.SentencePieceVocabulary(path or default_vocab_path(), extra_ids=EXTRA_IDS)


def get_vocabulary(path: str | None = None):
  """SentencePiece vocabulary (a `seqio.SentencePieceVocabulary`) with T5 conventions
  and 100 extra ids.

  Args:
    path: a sentencepiece model; default: the shipped toy vocabulary.

  Raises:
    FileNotFoundError: naming the path, when it does not exist.
  """
  import tensorflow as tf

  path = path or default_vocab_path()
  if "://" not in path and not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"sentencepiece model {path} does not exist (the toy one is "
                            "built by `python tools/train_vocab.py`)")
  return seqio_vocabulary(path)


def padded_vocab_size(vocab_size: int) -> int:
  """Embedding rows for `vocab_size` ids (pieces plus extra ids), rounded up to 128."""
  return -(-vocab_size // EMBED_MULTIPLE) * EMBED_MULTIPLE


def _text_spec() -> dict:
  spec = schema.feature_spec()
  return {k: spec[k] for k in TEXT_FEATURES}


def _flat_text(parsed: dict) -> dict:
  """Every text feature as a 1-D string tensor (list features keep their values)."""
  import tensorflow as tf

  return {k: v.values if isinstance(v, tf.sparse.SparseTensor) else tf.reshape(v, [1])
          for k, v in parsed.items()}


def iter_text(data_dir: str, datasets: Sequence[str] | None = None,
              splits: Sequence[str] | None = ("train",),
              max_per_dataset: int | None = None) -> Iterator[str]:
  """Yields the text strings of the records of `datasets` under `data_dir`.

  Only the text features are parsed, so images are never decoded.

  Args:
    data_dir: a data dir in the schema layout.
    datasets: dataset names; default: every dataset folder under `data_dir`.
    splits: splits to read; None reads every split folder (e.g. include
      'validation' when only a tiny build is at hand).
    max_per_dataset: stop after this many records of each dataset.

  Raises:
    FileNotFoundError: naming the dataset when it has no records to read.
  """
  import tensorflow as tf

  if datasets is None:
    datasets = sorted(d for d in tf.io.gfile.listdir(data_dir)
                      if tf.io.gfile.isdir(os.path.join(data_dir, d)))
  spec = _text_spec()
  for name in datasets:
    name = name.strip("/")
    split_names = splits or sorted(
        s.strip("/") for s in tf.io.gfile.listdir(os.path.join(data_dir, name)))
    files = []
    for split in split_names:
      files += sorted(tf.io.gfile.glob(schema.file_pattern(data_dir, name, split)))
    if not files:
      raise FileNotFoundError(
          f"vocab: no records for dataset {name!r} (splits {list(split_names)}) under "
          f"{os.path.join(data_dir, name)}")
    ds = tf.data.TFRecordDataset(files).map(lambda x: _flat_text(tf.io.parse_single_example(
        x, spec)))
    if max_per_dataset:
      ds = ds.take(max_per_dataset)
    for ex in ds.as_numpy_iterator():
      for key in TEXT_FEATURES:
        for v in ex[key]:
          if v:
            yield v.decode("utf-8")


def train_sentencepiece(sentences: Iterable[str], out_prefix: str | None = None,
                        vocab_size: int = DEFAULT_VOCAB_SIZE,
                        user_defined_symbols: Sequence[str] = NUMBER_PIECES,
                        model_type: str = "bpe") -> bytes:
  """Trains a T5-style sentencepiece model and returns its serialized proto.

  Args:
    sentences: training text, one string per sentence or document.
    out_prefix: when given, writes `<out_prefix>.model` and `<out_prefix>.vocab`.
    vocab_size: target size; a soft limit, so a small corpus yields a smaller
      model instead of an error.
    user_defined_symbols: pieces that are always whole tokens (numbers 0..99).
    model_type: "bpe" (default) or "unigram" (what T5 used for its 32k vocab). On a
      small, repetitive corpus such as the toy world, unigram pruning splits even
      frequent words ("yes" -> "▁ye s"), while BPE keeps them whole.

  Raises:
    ValueError: if there is no text to train on.
  """
  sentences = [s for s in sentences if s.strip()]
  if not sentences:
    raise ValueError("vocab: no text to train on (are the datasets empty?)")
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size,
      model_type=model_type, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      user_defined_symbols=list(user_defined_symbols), character_coverage=1.0,
      byte_fallback=False, hard_vocab_limit=False, num_threads=1,
      minloglevel=2, input_sentence_size=0, shuffle_input_sentence=False)
  proto = buf.getvalue()
  if out_prefix:
    write_model(proto, out_prefix)
  return proto


def write_model(proto: bytes, out_prefix: str) -> None:
  """Writes `<out_prefix>.model` and a human-readable `<out_prefix>.vocab` (piece, score)."""
  import tensorflow as tf

  parent = os.path.dirname(out_prefix)
  if parent:
    tf.io.gfile.makedirs(parent)
  with tf.io.gfile.GFile(out_prefix + ".model", "wb") as f:
    f.write(proto)
  sp = spm.SentencePieceProcessor(model_proto=proto)
  with tf.io.gfile.GFile(out_prefix + ".vocab", "w") as f:
    for i in range(sp.get_piece_size()):
      f.write(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n")
  logging.info("vocab: wrote %s.model (%d pieces)", out_prefix, sp.get_piece_size())
