"""The paper's pretraining mixtures (appendix) plus the two task families.

`dynpt_cross_modal_gen` is the cross-modal family plus the generated-caption
tasks (`GENERATED_TASKS`, appended after it so the family keeps its task ids).

Membership comes from the paper's appendix; the order of a mixture's tasks is
the canonical `PRETRAINING_TASKS` order filtered to its members, and that
order defines ``task_id``. seqio rates default to the number of records of
each task's train split (counted lazily), or 1.0 when the data is absent; the
dynamic sampler overrides them at training time.
"""

from __future__ import annotations

import seqio

from dynpt.data import task_registry
from tasks.pretraining import (CAPTION_SOURCES, GENERATED_TASKS, LABEL_SOURCES,
                               PRETRAINING_TASKS)

# The appendix lists each mixture as the previous one plus new tasks.
_ADDED = (
    ("dynpt_4", ("cc12m_mlm", "cc12m_itm", "oi_list_objects", "oi_which_exist")),
    ("dynpt_8", ("ln_mlm", "ln_itm", "in21k_which_exist", "in21k_list_objects")),
    ("dynpt_12", ("vg_which_exist", "vg_list_objects", "cc3m_mlm", "cc3m_itm")),
    ("dynpt_16", ("oi_exists", "vg_exists", "in21k_exists", "ln_cmp")),
    ("dynpt_24", ("ln_cap", "cc3m_cap", "cc12m_cap", "cc3m_cmp", "cc12m_cmp",
                  "vg_multi_exists", "in21k_multi_exists", "oi_multi_exists")),
)


def _build() -> dict[str, tuple[str, ...]]:
  out, members = {}, set()
  for name, added in _ADDED:
    members |= set(added)
    out[name] = tuple(t for t in PRETRAINING_TASKS if t in members)
  out["dynpt_cross_modal"] = tuple(t for t in PRETRAINING_TASKS
                                   if t.split("_")[0] in CAPTION_SOURCES)
  out["dynpt_object_aware"] = tuple(t for t in PRETRAINING_TASKS
                                    if t.split("_")[0] in LABEL_SOURCES)
  out["dynpt_cross_modal_gen"] = out["dynpt_cross_modal"] + GENERATED_TASKS
  out["dynpt_lopsided"] = tuple(t for t in PRETRAINING_TASKS
                                if t in LOPSIDED_EASY + LOPSIDED_HARD)
  return out


# The mixture where the paper's mechanism should pay (issue 29,
# gin_configs/study/lopsided.gin): nine yes/no tasks that the toy model learns
# within a few hundred steps (their loss stays near the answer entropy, about
# 0.45, after that) and three generation tasks that are still being learned at
# the end of the budget (loss 1.3-1.4) and teach what a VQA model needs: naming
# the objects in the image and describing it. Uniform sampling spends three
# quarters of every batch on the learned yes/no tasks.
LOPSIDED_EASY = ("cc3m_itm", "cc12m_itm", "ln_itm", "oi_exists", "vg_exists",
                 "in21k_exists", "oi_multi_exists", "vg_multi_exists",
                 "in21k_multi_exists")
LOPSIDED_HARD = ("cc12m_cap", "oi_list_objects", "in21k_list_objects")


MIXTURES = _build()


def size_rate(task: seqio.Task) -> float:
  """Records in the task's train split under the default data dir, else 1.0."""
  try:
    return float(task.source.num_records("train"))
  except FileNotFoundError:
    return 1.0


# Ordered task names of a mixture (`task_id` order), or [name] for a task.
mixture_task_names = task_registry.mixture_task_names


def register() -> None:
  """Registers the mixtures (idempotent); the tasks must be registered first."""
  for name, members in MIXTURES.items():
    if name in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, [(t, size_rate) for t in members])
    task_registry.add_mixture(name, members)
