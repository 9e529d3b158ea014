"""Tests for the seqio registration in tasks/ (names, mixtures, every task's output)."""

import re

import numpy as np
import pytest
import seqio

import tasks
from dynpt.data import boxes
from dynpt.data import pipeline
from dynpt.data import preprocessors as pp

SEQ = {"inputs": 32, "targets": 32}

# The appendix's lists, verbatim (in its names).
_PAPER = {
    4: "CC12M MLM, CC12M ITM, OI List Objs, OI Which Objs",
    8: "LN MLM, LN ITM, IN21k Which Objs, IN21k List Objs",
    12: "VG Which Objs, VG List Objs, CC3M MLM, CC3M ITM",
    16: "OI Exists, VG Exists, IN21k Exists, LN CMP",
    24: "LN Cap, CC3M Cap, CC12M Cap, CC3M CMP, CC12M CMP, VG Multi-Exists, "
        "IN21k Multi-Exists, OI Multi-Exists",
}
_KIND = {"MLM": "mlm", "ITM": "itm", "Cap": "cap", "CMP": "cmp", "List Objs": "list_objects",
         "Which Objs": "which_exist", "Exists": "exists", "Multi-Exists": "multi_exists"}


def _paper_names(text):
  out = []
  for item in text.split(", "):
    source, kind = item.split(" ", 1)
    out.append(f"{source.lower()}_{_KIND[kind]}")
  return out


def test_the_24_names_in_canonical_order():
  want = [f"{s}_{k}" for s in ("cc3m", "cc12m", "ln") for k in ("cap", "cmp", "itm", "mlm")]
  want += [f"{s}_{k}" for s in ("oi", "in21k", "vg")
           for k in ("list_objects", "exists", "multi_exists", "which_exist")]
  assert list(tasks.PRETRAINING_TASKS) == want
  assert set(want) <= set(seqio.TaskRegistry.names())


def test_mixtures_match_the_paper():
  members = set()
  for size, text in sorted(_PAPER.items()):
    members |= set(_paper_names(text))
    names = tasks.mixture_task_names(f"dynpt_{size}")
    assert len(names) == size and set(names) == members
    assert names == [t for t in tasks.PRETRAINING_TASKS if t in members]  # task_id order.
    mixture = seqio.MixtureRegistry.get(f"dynpt_{size}")
    assert {t.name for t in mixture.tasks} == members
  assert tasks.mixture_task_names("dynpt_24") == list(tasks.PRETRAINING_TASKS)
  assert tasks.mixture_task_names("dynpt_cross_modal") == list(tasks.PRETRAINING_TASKS[:12])
  assert tasks.mixture_task_names("dynpt_object_aware") == list(tasks.PRETRAINING_TASKS[12:])
  assert tasks.mixture_task_names("vqav2") == ["vqav2"]


def test_unknown_names_raise_listing_known():
  with pytest.raises(ValueError, match=r"'dynpt_5'.*dynpt_4.*cc3m_cap"):
    tasks.mixture_task_names("dynpt_5")
  with pytest.raises(ValueError, match=r"'nope'.*cc3m_cap"):
    pipeline.get_task("nope")


@pytest.mark.parametrize("name", tasks.PRETRAINING_TASKS)
def test_every_pretraining_task_yields_model_features(name, toy_data_dir, toy_vocab):
  it = pipeline.TaskIterator(name, task_id=7, sequence_length=SEQ, image_size=32, seed=0,
                             data_dir=toy_data_dir, vocabulary=toy_vocab)
  batch = it.take(2)
  want = {"image": ((2, 32, 32, 3), np.uint8), "task_id": ((2,), np.int32),
          **{k: ((2, 32), np.int32) for k in ("encoder_input_tokens", "decoder_input_tokens",
                                               "decoder_target_tokens", "decoder_loss_weights")}}
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == want
  assert np.all(batch["task_id"] == 7)
  for row in range(2):
    targets = batch["decoder_target_tokens"][row]
    n = int(batch["decoder_loss_weights"][row].sum())
    assert n >= 2 and targets[n - 1] == 1 and np.all(targets[n:] == 0)  # Text, EOS, pad.
    assert batch["encoder_input_tokens"][row][0] > 1
    assert batch["image"][row].std() > 0  # A real picture, not padding.
  assert it.skipped == 0 and it.position == 2


@pytest.mark.parametrize("name", tasks.DOWNSTREAM_TASKS)
def test_every_downstream_task(name, toy_data_dir, toy_vocab):
  video = name in ("msrvtt_qa", "msvd_qa", "ivqa")
  passthrough = ("image_wh", "gt_box") if name.startswith("refcoco") else ("answers",)
  it = pipeline.TaskIterator(name, task_id=0, sequence_length=SEQ, image_size=32, seed=0,
                             data_dir=toy_data_dir, vocabulary=toy_vocab, num_frames=3,
                             passthrough=passthrough)
  batch = it.take(3)
  image_shape = (3, 3, 32, 32, 3) if video else (3, 32, 32, 3)
  assert batch["image"].shape == image_shape and batch["image"].dtype == np.uint8
  assert batch["decoder_target_tokens"].shape == (3, 32)
  for row in range(3):
    target = toy_vocab.decode([int(t) for t in batch["decoder_target_tokens"][row] if t > 1])
    if name.startswith("refcoco"):
      wh = batch["image_wh"][row]
      box = boxes.text_to_box(target, wh)
      assert box is not None, target
      assert np.all(np.abs(box - batch["gt_box"][row]) <= np.tile(wh, 2) / 200 + 1e-4)
    else:
      answers = [a.decode() for a in batch["answers"][row] if a]
      assert target in answers


def test_metric_fns_and_postprocess():
  vqa = seqio.TaskRegistry.get("vqav2")
  example = {"answers": np.array([b"red"] * 4 + [b""]), "image_wh": [4, 4]}
  target = vqa.postprocess_fn(b"red", example=example, is_target=True)
  assert target["answers"] == ["red"] * 4 and target["answer"] == "red"  # Padding dropped.
  assert vqa.postprocess_fn(b"blue") == "blue"
  (metric,) = vqa.metric_fns
  assert metric([target], ["red"])["vqa_accuracy"] == pytest.approx(100.0)
  ref = seqio.TaskRegistry.get("refcoco")
  target = ref.postprocess_fn(b"50 50 0 0", example={"gt_box": [0, 0, 50, 50],
                                                     "image_wh": [100, 100]}, is_target=True)
  (metric,) = ref.metric_fns
  assert metric([target], ["50 50 0 0"])["acc@0.5"] == pytest.approx(100.0)
  gqa = seqio.TaskRegistry.get("gqa")
  (metric,) = gqa.metric_fns
  assert metric([{"answer": "yes", "answers": ["yes"]}], ["no"])["accuracy"] == 0.0


def test_seqio_path_and_size_rates(toy_data_dir, monkeypatch, tmp_path):
  monkeypatch.setenv("DYNPT_DATA_DIR", toy_data_dir)
  task = seqio.TaskRegistry.get("oi_exists")
  ex = next(task.get_dataset(SEQ, split="validation", shuffle=False).as_numpy_iterator())
  assert ex["image"].dtype == np.uint8 and ex["inputs"][-1] == 1
  assert ex["inputs_pretokenized"].startswith(b"does ")
  mixture = seqio.MixtureRegistry.get("dynpt_4")
  assert mixture.get_rate(task) == 0.0  # Not a member.
  assert mixture.get_rate(seqio.TaskRegistry.get("oi_which_exist")) == 48.0
  monkeypatch.setenv("DYNPT_DATA_DIR", str(tmp_path))  # No data: documented default.
  assert mixture.get_rate(seqio.TaskRegistry.get("cc12m_mlm")) == 1.0


def _slots(text, template):
  pattern = re.escape(template).replace(r"\{\}", "(.+?)")
  return list(re.fullmatch(pattern, text).groups())


@pytest.mark.parametrize("name", ["oi_list_objects", "in21k_exists", "vg_multi_exists",
                                  "oi_which_exist"])
def test_object_answers_are_true_for_toy_records(name, toy_data_dir, monkeypatch):
  monkeypatch.setenv("DYNPT_DATA_DIR", toy_data_dir)
  ds = seqio.TaskRegistry.get(name).get_dataset(SEQ, split="validation", shuffle=False)
  answers = []
  for ex in ds.as_numpy_iterator():
    labels = {label.decode() for label in ex["objects/label"]}
    question = ex["inputs_pretokenized"].decode()
    target = ex["targets_pretokenized"].decode()
    if name.endswith("list_objects"):
      assert set(target.split(", ")) == labels
    elif name.endswith("which_exist"):
      asked = _slots(question, pp.WHICH_EXIST_TEMPLATE)
      assert target == (", ".join(a for a in asked if a in labels) or "none")
    else:
      multi = "multi" in name
      asked = _slots(question, pp.MULTI_EXISTS_TEMPLATE if multi else pp.EXISTS_TEMPLATE)
      assert target == ("yes" if any(a in labels for a in asked) else "no")
    answers.append(target)
  assert len(answers) == 16 and len(set(answers)) > 1
