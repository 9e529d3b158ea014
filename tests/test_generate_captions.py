"""Tests for generated captions (dynpt.data.generated_captions, tools/generate_captions.py).

The captioner is an untrained tiny model saved in the export layout (no
training: the tool's contract is the data flow, not caption quality).
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tasks
from dynpt.data import generated_captions as gc
from dynpt.data import pipeline
from dynpt.data import preprocessors as pp
from dynpt.data import schema
from dynpt.data import sources
from dynpt.data import vocab as vocab_lib
from dynpt.downstream import captioner as captioner_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TOOL = os.path.join(_ROOT, "tools", "generate_captions.py")
_SEQ = {"inputs": 32, "targets": 16}


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> str:
  """An export of a freshly initialised tiny model (32 px, 16 target tokens)."""
  import flax.linen as nn
  import jax

  from dynpt.train import export, model_setup
  from dynpt.train.config import DataConfig, ModelConfig

  vocab = vocab_lib.get_vocabulary(None)
  model = model_setup.build_model(ModelConfig("tiny"), vocab, 32)
  cfg = DataConfig(image_size=32, input_length=_SEQ["inputs"],
                   target_length=_SEQ["targets"])
  params = jax.jit(model_setup.init_params_fn(model, cfg))(jax.random.PRNGKey(0))
  out = str(tmp_path_factory.mktemp("export"))
  export.write_export(out, jax.device_get(nn.meta.unbox(params)), {
      "model": "tiny", "image_size": 32, "input_length": _SEQ["inputs"],
      "target_length": _SEQ["targets"], "vocabulary_path": None, "step": 0})
  return out


def _png(color, size=(24, 20)) -> bytes:
  out = io.BytesIO()
  Image.new("RGB", size, color).save(out, format="PNG")
  return out.getvalue()


class _FakeCaptioner:
  """Images whose red value is 0 or 30 get an empty caption; records its input shapes."""
  image_size, batch_size = 16, 2

  def __init__(self):
    self.calls = []

  def __call__(self, images):
    self.calls.append(images.shape)
    reds = [int(im[0, 0, 0]) for im in images]
    return ["" if red in (0, 30) else f"a red square {red}" for red in reds]


def test_prompt_is_what_the_cap_task_feeds(toy_data_dir, toy_vocab):
  it = pipeline.TaskIterator("cc3m_cap", task_id=0, sequence_length=_SEQ, image_size=32,
                             seed=0, data_dir=toy_data_dir, shuffle=False,
                             vocabulary=toy_vocab)
  batch = it.take(2)
  want = gc.prompt_tokens(toy_vocab, pp.CAPTION_PROMPT, _SEQ["inputs"])
  np.testing.assert_array_equal(batch["encoder_input_tokens"], np.stack([want, want]))


def test_tokens_to_text_stops_at_eos_and_drops_sentinels(toy_vocab):
  ids = toy_vocab.encode("a red square")
  sentinel = toy_vocab.vocab_size - 1
  row = np.array([sentinel] + ids + [1] + ids + [0, 0])
  assert gc.tokens_to_text(toy_vocab, row) == "a red square"
  assert gc.tokens_to_text(toy_vocab, np.array([1] + ids)) == ""


def test_skips_are_counted_and_images_pass_through(tmp_path):
  src = str(tmp_path / "src")
  records = [{"image/id": f"img{i}", "image/encoded": _png((10 * i, 0, 0)),
              "text/captions": ["old"]} for i in range(5)]
  records.insert(2, {"image/id": "broken", "image/encoded": b"not an image"})
  records.insert(4, {"image/id": "video", "video/frames": [_png((1, 2, 3))]})
  with schema.ShardedWriter(src, "imgs", "train", num_shards=2) as w:
    w.write_all(records)
  fake = _FakeCaptioner()
  summary = gc.generate_captions(fake, data_dir=src, dataset="imgs", split="train",
                                 out_dir=str(tmp_path / "out"), progress=False)
  assert summary["read"] == 7
  assert summary["skipped"] == {"corrupt_image": 1, "empty_caption": 2, "no_image": 1}
  assert all(shape[1:] == (16, 16, 3) for shape in fake.calls)
  out = schema.read_records(str(tmp_path / "out"), "gen", "train")
  assert summary["written"] == len(out) == 3
  source = {r["image/id"]: r for r in records}
  for r in out:
    image_id = r["image/id"].decode()
    assert r["image/encoded"] == source[image_id]["image/encoded"]
    assert (r["image/width"], r["image/height"]) == (24, 20)
    assert r["text/captions"].tolist()[0].startswith(b"a red square")
  with open(tmp_path / "out" / "gen" / "train" / gc.SUMMARY_FILE) as f:
    assert json.load(f)["written"] == 3
  with pytest.raises(FileExistsError, match="overwrite"):
    gc.generate_captions(fake, data_dir=src, dataset="imgs", split="train",
                         out_dir=str(tmp_path / "out"), progress=False)
  again = gc.generate_captions(fake, data_dir=src, dataset="imgs", split="train",
                               out_dir=str(tmp_path / "out"), max_examples=2,
                               num_shards=2, overwrite=True, progress=False)
  assert again["read"] == 2 and len(sources.list_files(
      str(tmp_path / "out"), "gen", "train")) == 2


def test_bad_sources_raise_naming_them(toy_data_dir, tmp_path):
  fake = _FakeCaptioner()
  with pytest.raises(ValueError, match="msrvtt_qa.*image/encoded"):
    gc.generate_captions(fake, data_dir=toy_data_dir, dataset="msrvtt_qa", split="train",
                         out_dir=str(tmp_path), progress=False)
  with pytest.raises(FileNotFoundError, match="'nope'"):
    gc.generate_captions(fake, data_dir=toy_data_dir, dataset="nope", split="train",
                         out_dir=str(tmp_path), progress=False)
  with pytest.raises(ValueError, match="source dataset itself"):
    gc.generate_captions(fake, data_dir=toy_data_dir, dataset="gen", split="train",
                         out_dir=toy_data_dir, progress=False)


def test_export_captions_a_toy_split_read_by_gen_cap(tiny_export, toy_data_dir, toy_vocab,
                                                     tmp_path):
  captioner = captioner_lib.load_captioner(tiny_export, batch_size=4)
  out = str(tmp_path)
  summary = gc.generate_captions(captioner, data_dir=toy_data_dir, dataset="cc3m",
                                 split="train", out_dir=out, max_examples=10,
                                 progress=False)  # 3 batches, the last padded.
  assert summary["read"] == 10
  assert summary["written"] + summary["skipped"].get("empty_caption", 0) == 10
  assert summary["captioner"]["model"] == "tiny"
  written = schema.read_records(out, "gen", "train")
  source = schema.read_records(toy_data_dir, "cc3m", "train")[:10]
  by_id = {r["image/id"]: r for r in source}
  assert [r["image/id"] for r in written] == [r["image/id"] for r in source
                                             if r["image/id"] in {w["image/id"]
                                                                  for w in written}]
  for r in written:
    assert r["image/encoded"] == by_id[r["image/id"]]["image/encoded"]
    assert len(r["text/captions"]) == 1 and r["text/captions"][0].strip()
  # The untrained tiny model (seed 0) does say something for these images.
  assert written
  it = pipeline.TaskIterator("gen_cap", task_id=0, sequence_length=_SEQ, image_size=32,
                             seed=0, data_dir=out, shuffle=False, vocabulary=toy_vocab)
  batch = it.take(1)
  assert batch["image"].shape == (1, 32, 32, 3)
  target = toy_vocab.decode([t for t in batch["decoder_target_tokens"][0] if t > 1])
  assert target and written[0]["text/captions"][0].decode().startswith(target)


def test_command_line(tiny_export, toy_data_dir, tmp_path):
  result = subprocess.run(
      [sys.executable, _TOOL, f"--export_dir={tiny_export}", f"--data_dir={toy_data_dir}",
       "--dataset=cc3m", "--split=validation", f"--out_dir={tmp_path}",
       "--out_dataset=gen", "--max_examples=3", "--batch_size=4", "--progress=false"],
      capture_output=True, text=True, cwd=_ROOT, timeout=180,
      env={**os.environ, "PYTHONPATH": _ROOT, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout[result.stdout.index("{"):])
  assert summary["read"] == 3 and summary["dataset"] == "gen"
  assert len(schema.read_records(str(tmp_path), "gen", "validation")) == summary["written"]


def test_gen_tasks_are_registered_outside_the_paper_mixtures():
  assert tasks.GENERATED_TASKS == ("gen_cap", "gen_cmp", "gen_itm", "gen_mlm")
  assert len(tasks.PRETRAINING_TASKS) == 24
  assert not set(tasks.GENERATED_TASKS) & set(tasks.PRETRAINING_TASKS)
  for name in tasks.GENERATED_TASKS:
    assert pipeline.get_task(name).source.dataset == "gen"
  assert tasks.mixture_task_names("dynpt_cross_modal_gen") == (
      tasks.mixture_task_names("dynpt_cross_modal") + list(tasks.GENERATED_TASKS))
  for name, members in tasks.MIXTURES.items():
    if name != "dynpt_cross_modal_gen":
      assert not set(members) & set(tasks.GENERATED_TASKS), name
