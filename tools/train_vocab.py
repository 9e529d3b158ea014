r"""Trains a T5-style sentencepiece vocabulary on the text of schema data sets.

  python tools/train_vocab.py --data_dir=DIR --out=PREFIX [--vocab_size=512] \
      [--datasets=cc3m,ln,vqav2] [--splits=train]

Writes PREFIX.model and PREFIX.vocab (pad 0, eos 1, unk 2, no bos, numbers
0..99 as single pieces). Use it through
`seqio.SentencePieceVocabulary(PREFIX + '.model', extra_ids=100)`: seqio adds
the 100 sentinel ids at use time. The shipped toy vocabulary was made with

  python tools/make_toy_data.py --data_dir=/tmp/toy --scale=default
  python tools/train_vocab.py --data_dir=/tmp/toy --out=dynpt/assets/vocab/toy_spm
"""

from absl import flags
from absl import logging

from dynpt import console

console.setup(__name__)  # Before TensorFlow and JAX load: their start-up chatter goes.

from dynpt.data import vocab  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data dir in the dynpt schema.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output prefix: writes OUT.model and OUT.vocab.",
                           required=True)
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", vocab.DEFAULT_VOCAB_SIZE,
                                   "Target number of pieces (soft limit).")
_DATASETS = flags.DEFINE_list("datasets", None,
                              "Datasets to read (default: every folder in --data_dir).")
_SPLITS = flags.DEFINE_list("splits", ["train"], "Splits to read; empty reads all.")
_MAX_PER_DATASET = flags.DEFINE_integer("max_per_dataset", None,
                                        "Read at most this many records per dataset.")


def main(argv):
  del argv
  texts = list(vocab.iter_text(_DATA_DIR.value, _DATASETS.value, _SPLITS.value or None,
                               _MAX_PER_DATASET.value))
  logging.info("train_vocab: %d strings from %s", len(texts), _DATA_DIR.value)
  vocab.train_sentencepiece(texts, _OUT.value, vocab_size=_VOCAB_SIZE.value)
  print(f"wrote {_OUT.value}.model and {_OUT.value}.vocab from {len(texts)} strings")


if __name__ == "__main__":
  console.run_app(main)
