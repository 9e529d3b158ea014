"""Tests for `dynpt.data.task_registry`: what `tasks/` declares for the trainer."""

import pytest
import seqio

import tasks
from dynpt.data import pipeline
from dynpt.data import task_registry
from dynpt.data import vocab as vocab_lib
from dynpt.train import model_setup


def test_every_mixture_is_recorded_in_task_id_order():
  assert task_registry.mixtures() == {k: tuple(v) for k, v in tasks.MIXTURES.items()}
  for name, members in tasks.MIXTURES.items():
    assert model_setup.resolve_task_names(name) == list(members)
    # seqio sorts a mixture's tasks by name: the order must not come from there.
    assert {t.name for t in seqio.MixtureRegistry.get(name).tasks} == set(members)
  assert model_setup.resolve_task_names("vqav2, gqa") == ["vqav2", "gqa"]


def test_unknown_names_say_how_tasks_are_registered():
  with pytest.raises(ValueError, match=r"'dynpt_5'.*`import tasks`"):
    model_setup.resolve_task_names("dynpt_5")
  with pytest.raises(ValueError, match=r"'nope'.*`import tasks`"):
    pipeline.get_task("nope")


def test_downstream_tasks_declare_their_eval_needs():
  for name in ("refcoco", "refcocoplus", "refcocog"):
    assert task_registry.eval_needs(name).passthrough == ("gt_box", "image_wh")
  for name in tasks.DOWNSTREAM_TASKS:
    needs = task_registry.eval_needs(name)
    assert needs.passthrough, name
    assert (needs.answer_vocab_metric is not None) == (name in ("msrvtt_qa", "msvd_qa")), name
    assert seqio.TaskRegistry.get(name).postprocess_fn is not None, name
  metric = task_registry.eval_needs("msvd_qa").answer_vocab_metric(frozenset({"cat"}))
  targets = [{"answer": "cat", "answers": ["cat"]}, {"answer": "dog", "answers": ["dog"]}]
  result = metric(targets, ["cat", "cat"])
  assert result["num_excluded"] == 1 and result["accuracy"] == pytest.approx(100.0)


def test_tasks_that_declare_nothing_keep_answers():
  assert task_registry.eval_needs("not_a_task") == task_registry.EvalNeeds(("answers",), None)


def test_a_mixture_lists_each_task_once():
  with pytest.raises(ValueError, match="'m'.*twice"):
    task_registry.add_mixture("m", ["a", "a"])
  with pytest.raises(ValueError, match="'m'.*no task"):
    task_registry.add_mixture("m", [])
  assert "m" not in task_registry.mixtures()


def test_vocabulary_is_defined_once():
  assert tasks.common.VOCABULARY.extra_ids == vocab_lib.EXTRA_IDS
  vocab = vocab_lib.get_vocabulary()
  assert vocab.vocab_size == tasks.common.VOCABULARY.vocab_size
  assert model_setup.padded_vocab_size(vocab) % vocab_lib.EMBED_MULTIPLE == 0
  assert vocab_lib.padded_vocab_size(vocab.vocab_size) >= vocab.vocab_size
