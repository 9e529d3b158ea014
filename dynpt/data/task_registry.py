"""What the trainer needs to know about registered tasks beyond seqio's Task.

The top-level `tasks` package registers every seqio task and mixture and fills
this registry: the ordered task list of each mixture (seqio's `Mixture.tasks`
is sorted by name, but a dynpt mixture's order defines ``task_id``) and the
eval-time needs of a downstream task (the ground-truth features its metric
reads, how it is scored over an answer vocabulary). `dynpt.train` reads only
this module, so it never names a task and never imports `tasks`.

Registration is the job of the entry points (`import tasks` in a gin file, a
tool or a test); library code never triggers it, so an unknown name is
answered with an error that says how to register.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

# Appended to every unknown-name error: the usual cause is a missing import.
REGISTRATION_HINT = ("dynpt's tasks and mixtures are registered by `import tasks` (in a "
                     "gin file, as gin_configs/runs/*.gin do, or in Python before "
                     "training)")


@dataclasses.dataclass(frozen=True)
class EvalNeeds:
  """Eval-time needs of a downstream task, declared where it is registered.

  Attributes:
    passthrough: ground-truth features the feature converter keeps next to the
      model features, handed to the task's `postprocess_fn` as the example.
    answer_vocab_metric: given the set of the N most frequent training
      answers, the metric that scores only the questions answered within it
      (`EvalConfig.answer_vocab_size`); None when the task has no such score.
  """
  passthrough: tuple[str, ...] = ("answers",)
  answer_vocab_metric: Callable[[frozenset[str]], Callable] | None = None


_MIXTURES: dict[str, tuple[str, ...]] = {}
_EVAL_NEEDS: dict[str, EvalNeeds] = {}


def add_mixture(name: str, task_names: Sequence[str]) -> None:
  """Records the ordered tasks of mixture `name` (replacing an earlier entry)."""
  if not task_names:
    raise ValueError(f"mixture {name!r} lists no task")
  if len(set(task_names)) != len(task_names):
    raise ValueError(f"mixture {name!r} lists a task twice: {list(task_names)}")
  _MIXTURES[name] = tuple(task_names)


def mixtures() -> dict[str, tuple[str, ...]]:
  """Every recorded mixture and its ordered task names."""
  return dict(_MIXTURES)


def mixture_task_names(name: str) -> list[str]:
  """Ordered task names of a mixture (`task_id` order), or [name] for a task.

  Raises:
    ValueError: naming `name`, the known mixtures and tasks, and how to
      register them.
  """
  import seqio  # Loads TensorFlow: only when a name is looked up.

  if name in _MIXTURES:
    return list(_MIXTURES[name])
  if name in seqio.TaskRegistry.names():
    return [name]
  raise ValueError(f"unknown task or mixture {name!r}; known mixtures: {sorted(_MIXTURES)}; "
                   f"known tasks: {sorted(seqio.TaskRegistry.names())}; "
                   f"{REGISTRATION_HINT}")


def set_eval_needs(task_name: str, needs: EvalNeeds) -> None:
  """Declares the eval-time needs of `task_name` (replacing an earlier entry)."""
  _EVAL_NEEDS[task_name] = needs


def eval_needs(task_name: str) -> EvalNeeds:
  """The declared needs of `task_name`; tasks that declared none keep ``answers``."""
  return _EVAL_NEEDS.get(task_name, EvalNeeds())
