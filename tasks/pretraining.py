"""The 24 pretraining tasks: 3 caption sources x 4 cross-modal tasks and
3 label sources x 4 object-aware tasks, generated from one table.

Beside them, outside the paper's 24 and its mixtures: the generated-caption
source ``gen`` ("Are we pretraining it right?", 3.4; written by
`tools/generate_captions.py`) with the same 4 cross-modal tasks."""

from __future__ import annotations

from dynpt.data import preprocessors as pp
from dynpt.data import preprocessors_objects as po
from dynpt.data import preprocessors_text as pt
from dynpt.data import sources
from tasks import common

CAPTION_SOURCES = ("cc3m", "cc12m", "ln")
GENERATED_SOURCES = ("gen",)
LABEL_SOURCES = ("oi", "in21k", "vg")
CAPTION_TASKS = ("cap", "cmp", "itm", "mlm")
LABEL_TASKS = ("list_objects", "exists", "multi_exists", "which_exist")

# Task kind -> its preprocessors, before the image decode that `add_task` appends.
# The MLM noise density is the appendix's 25% (`pt.mlm`'s default).
KIND_PREPROCESSORS = {
    "cap": (pp.select_caption, pt.captioning) + common.TOKENIZE + common.APPEND_EOS,
    "cmp": (pp.select_caption, pt.caption_completion) + common.APPEND_EOS,
    "itm": (pp.select_caption, pt.image_text_matching) + common.TOKENIZE + common.APPEND_EOS,
    "mlm": (pp.select_caption, pt.mlm) + common.APPEND_EOS,
    "list_objects": (po.list_objects,) + common.TOKENIZE + common.APPEND_EOS,
    "exists": (po.exists,) + common.TOKENIZE + common.APPEND_EOS,
    "multi_exists": (po.multi_exists,) + common.TOKENIZE + common.APPEND_EOS,
    "which_exist": (po.which_exist,) + common.TOKENIZE + common.APPEND_EOS,
}

# Canonical order: caption sources x caption tasks, then label sources x label tasks.
TABLE = tuple((f"{s}_{k}", s, k) for s in CAPTION_SOURCES for k in CAPTION_TASKS) + tuple(
    (f"{s}_{k}", s, k) for s in LABEL_SOURCES for k in LABEL_TASKS)
PRETRAINING_TASKS = tuple(name for name, _, _ in TABLE)
# Generated caption sources x caption tasks (not in PRETRAINING_TASKS).
GENERATED_TABLE = tuple((f"{s}_{k}", s, k) for s in GENERATED_SOURCES for k in CAPTION_TASKS)
GENERATED_TASKS = tuple(name for name, _, _ in GENERATED_TABLE)


def register() -> None:
  """Registers the 24 tasks and the generated-caption ones (idempotent); no data needed."""
  for name, source, kind in TABLE + GENERATED_TABLE:
    common.add_task(
        name,
        sources.SchemaDataSource(source, task_name=name, negatives=kind == "itm",
                                 label_candidates=source in LABEL_SOURCES),
        KIND_PREPROCESSORS[kind])
