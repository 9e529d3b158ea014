"""Tests of the sentencepiece training helpers and the shipped toy vocabulary."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import seqio
import sentencepiece as spm

from dynpt.data import vocab
from dynpt.toyworld import build
from dynpt.toyworld import scene as scene_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, "dynpt", "assets", "vocab", "toy_spm.model")
_SMALL = ["cc3m", "oi", "vqav2", "snli_ve", "refcocog", "msvd_qa"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("vocab_toy"))
  build.build_toy_world(d, seed=0, scale="tiny", datasets=_SMALL, progress=False)
  return d


def _toy_words() -> list[str]:
  return (list(scene_lib.SHAPES) + list(scene_lib.COLORS) + list(scene_lib.SIZES)
          + list(scene_lib.TEXTURES) + list(scene_lib.DIRECTIONS)
          + ["yes", "no", "entailment", "neutral", "contradiction"])


def test_trains_on_tiny_build_with_t5_ids(tiny_dir, tmp_path):
  texts = list(vocab.iter_text(tiny_dir, splits=None))
  assert any("?" in t for t in texts) and "entailment" in texts
  prefix = str(tmp_path / "spm")
  vocab.train_sentencepiece(texts, prefix, vocab_size=300)
  sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
  assert [sp.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  assert os.path.exists(prefix + ".vocab")
  for t in texts[:200]:
    ids = sp.encode(t)
    assert sp.unk_id() not in ids and sp.decode(ids) == t
  assert sp.unk_id() in sp.encode("\u4e2d"), "unseen characters must map to unk, not bytes"


def test_numbers_are_single_pieces(tiny_dir):
  proto = vocab.train_sentencepiece(vocab.iter_text(tiny_dir, ["cc3m"]), vocab_size=200)
  sp = spm.SentencePieceProcessor(model_proto=proto)
  for n in range(100):
    assert sp.encode(str(n), out_type=str) == [f"\u2581{n}"], n


def test_shipped_vocab_through_seqio():
  v = seqio.SentencePieceVocabulary(SHIPPED, extra_ids=100)
  sp = spm.SentencePieceProcessor(model_file=SHIPPED)  # Without seqio's extra ids.
  assert (v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2)
  assert v.vocab_size == sp.get_piece_size() + 100 <= 1100
  assert v.decode(v.encode("the large red striped circle")) == "the large red striped circle"
  assert len(v.encode("37 12 80 5")) == 4
  for n in range(100):
    assert v.encode(str(n)) == [sp.piece_to_id(f"\u2581{n}")]
  for w in _toy_words():
    ids = v.encode(w)
    assert 2 not in ids and len(ids) <= 2 and v.decode(ids) == w, (w, ids)
  assert v.encode("<extra_id_0>")[-1] == v.vocab_size - 1


def test_shipped_vocab_covers_toy_text(tiny_dir):
  sp = spm.SentencePieceProcessor(model_file=SHIPPED)
  for t in vocab.iter_text(tiny_dir, splits=None):
    assert sp.unk_id() not in sp.encode(t), t


def test_errors_name_the_dataset(tiny_dir):
  with pytest.raises(FileNotFoundError, match="gqa"):
    list(vocab.iter_text(tiny_dir, ["gqa"]))
  with pytest.raises(ValueError, match="no text"):
    vocab.train_sentencepiece(["", " "])


def test_train_vocab_tool(tiny_dir, tmp_path):
  prefix = str(tmp_path / "tool_spm")
  subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_vocab.py"),
                  f"--data_dir={tiny_dir}", f"--out={prefix}", "--vocab_size=250",
                  "--datasets=cc3m,vqav2", "--splits="],
                 check=True, capture_output=True, cwd=REPO, timeout=120)
  v = seqio.SentencePieceVocabulary(prefix + ".model", extra_ids=100)
  assert v.decode(v.encode("how many shapes are there?")) == "how many shapes are there?"
