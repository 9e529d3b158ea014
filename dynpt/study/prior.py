"""The blind answer prior of a downstream task: what answering without the image scores.

A model that never looks at the image can still learn which answers are
frequent. Two such answerers, both fitted on the task's `train` split and
scored on its `val` split with the task's official metric:

- *overall*: always the most frequent training answer;
- *by question type*: the most frequent training answer among training
  questions of the same type, the type being the question's first two words
  ("what color", "how many", "is there"; for SNLI-VE the hypothesis's), and
  the overall answer for a type never seen in training.

The blind prior is the better of the two. A downstream accuracy at or near
it says the finetuned model learned the answer distribution, not the image.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Sequence

from dynpt.metrics.normalize import normalize_answer
from dynpt.metrics.qa import vqa_accuracy

# task -> (question field, answers field): the toy world's downstream records.
FIELDS = {"vqav2": ("question", "answers"), "gqa": ("question", "answers"),
          "snli_ve": ("hypothesis", "label")}
TYPE_WORDS = 2


@dataclasses.dataclass(frozen=True)
class Prior:
  """Accuracies (percent) of the two blind answerers, and the overall answer."""
  overall: float
  by_type: float
  answer: str
  types: int

  @property
  def best(self) -> float:
    return max(self.overall, self.by_type)


def question_type(question: str) -> str:
  return " ".join(question.lower().split()[:TYPE_WORDS])


def most_common(values: Sequence[str]) -> str:
  """The most frequent value (the first seen among ties), as the task's target is."""
  return collections.Counter(values).most_common(1)[0][0]


def blind_prior(train: Sequence[tuple[str, Sequence[str]]],
                val: Sequence[tuple[str, Sequence[str]]],
                score: Callable[[str, Sequence[str]], float]) -> Prior:
  """The blind answerers of `train` scored on `val`.

  Args:
    train: (question, ground-truth answers) of each training example; its
      target is the most common of its answers.
    val: (question, ground-truth answers) of each scored example.
    score: the official metric of one prediction against the answers, in [0, 1].
  """
  if not train or not val:
    raise ValueError(f"blind_prior: {len(train)} train and {len(val)} val examples; "
                     "need at least one of each")
  targets = [(question_type(q), normalize_answer(most_common(list(a)))) for q, a in train]
  overall = most_common([t for _, t in targets])
  by_type: dict[str, list[str]] = collections.defaultdict(list)
  for kind, target in targets:
    by_type[kind].append(target)
  typed = {kind: most_common(answers) for kind, answers in by_type.items()}
  acc_overall = sum(score(overall, a) for _, a in val) / len(val)
  acc_typed = sum(score(typed.get(question_type(q), overall), a) for q, a in val) / len(val)
  return Prior(100.0 * acc_overall, 100.0 * acc_typed, overall, len(typed))


def score_fn(task: str) -> Callable[[str, Sequence[str]], float]:
  """The task's official metric of one answer: VQA accuracy for vqav2, else exact match."""
  if task == "vqav2":
    return vqa_accuracy
  return lambda prediction, answers: vqa_accuracy(prediction, [most_common(list(answers))])


def _examples(data_dir: str, task: str, split: str, limit: int | None = None):
  from dynpt.data import schema

  q_key, a_key = FIELDS[task]
  text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
  out = []
  for r in schema.read_records(data_dir, task, split)[:limit]:
    answers = r[a_key]
    answers = [text(answers)] if isinstance(answers, (str, bytes)) else [text(a) for a in answers]
    out.append((text(r[q_key]), answers))
  return out


def task_prior(data_dir: str, task: str, eval_examples: int | None = None) -> Prior:
  """The blind prior of a toy downstream task from its records under `data_dir`."""
  if task not in FIELDS:
    raise ValueError(f"blind prior: no toy fields for task {task!r}; known: {sorted(FIELDS)}")
  return blind_prior(_examples(data_dir, task, "train"),
                     _examples(data_dir, task, "val", eval_examples), score_fn(task))
