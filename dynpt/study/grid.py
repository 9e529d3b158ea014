"""The study's grid as declared: `StudyConfig` (bound in `gin_configs/study/*.gin`).

What a study runs: the Table-4 rows (every sampler on one mixture), the
Table-5 sweep (a few samplers on more mixtures), the seeds, the downstream
tasks, the regime (steps, bindings, toy world) and the contrasts declared
before it runs. `plan` expands it into cells, `world` builds the toy world
they read.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from dynpt.toyworld import scene as scene_lib

SCRATCH = "none"  # The `sampler` and `mixture` of a from-scratch cell.


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """What a study runs; bound in `gin_configs/study/*.gin`.

  Attributes:
    samplers: Table 4's rows, `dynpt.mixing.make_sampler` names, all run on
      `mixture`.
    mixture: Table 4's pretraining mixture.
    sweep_samplers: Table 5's samplers, run on each of `sweep_mixtures`.
    sweep_mixtures: Table 5's further mixtures (`mixture` is its last row).
    seeds: seeds of every cell (pretraining data order, init, finetuning).
    sweep_seeds: Table 5's further mixtures run on the first this many seeds
      only (None: all); its last row, `mixture`, has every seed from Table 4.
    downstream: registered downstream task names; each pretrained cell is
      finetuned on all of them, and each has a scratch cell per seed.
    pretrain_gin: the pretraining gin file every pretrained cell starts from.
    finetune_gin: the finetuning gin file, `{task}` replaced by the task.
    pretrain_steps: pretraining steps of every pretrained cell.
    finetune_steps: finetuning steps of every finetuning.
    warmup_fraction: warm-up steps as a fraction of each run's steps.
    sampler_options: per sampler, its options (SAMPLER_OPTIONS); a sampler
      not listed gets `{}`. For `doremi` the runner adds `reference_run_dir`
      and `num_steps`.
    common_bindings: gin bindings (name -> Python value) of pretraining and
      finetuning alike: image size, model size, ...
    pretrain_bindings: further gin bindings of pretraining only.
    finetune_bindings: further gin bindings of finetuning only.
    pretrain_loss_fraction: the pretraining loss (Figure 1) is each task's
      training loss over this last fraction of the pretraining steps
      (mixture_history.jsonl), averaged over the mixture's tasks.
    toy_scale: toy-world scale built into `<out_dir>/data` ('tiny' or
      'default'); None: use `data_dir` as it is.
    toy_records: records per split ('train') or per dataset and split
      ('cc3m/train') overriding the scale's (`build.build_toy_world`).
    toy_palette: the toy world's visual vocabulary (`toyworld.scene.PALETTES`:
      'full' or 'simple'); another palette than 'full' is built into
      `<out_dir>/data_<palette>`, so its cells never count as done under another.
    data_dir: an existing data dir (used when `toy_scale` is None).
    world_seed: the seed of the toy world the cells read (every image, caption,
      question and answer, `toyworld.build.build_toy_world`); a world seed other
      than 0 is built into `<out_dir>/data[_<palette>]_w<seed>`.
    eval_examples: the size of each downstream task's `val` split (the toy
      world's `<task>/val` records) and the examples each finetuning scores
      (`EVAL_EXAMPLES`); None: the scale's split and the finetuning gin's.
    contrasts: the comparisons declared before the study runs, each
      '<a> - <b>: <task>' with `a`, `b` samplers of the study (`scratch`: no
      pretraining) and `task` a downstream task or `mean` (the mean over tasks);
      the report gives each a paired interval and a Holm-corrected p-value.
    exploratory_results: a results.jsonl of an earlier (tuned) study on which
      this one's choices were made; the report shows it apart from this one's.
    figure2_sampler: the sampler whose first-seed run on `mixture` Figure 2
      shows.
    share_groups: named groups of `mixture`'s tasks, {name: (task, ...)}, whose
      summed share of the batch the report gives per sampler and seed
      (`dynpt.study.shares`); a prediction about where a sampler moves the
      batch is checked there.
    share_from_step: the first pretraining step those shares average over.
    quick_seeds: `--quick` keeps the first this many seeds.
    quick_step_scale: `--quick` multiplies pretraining and finetuning steps by
      this (at least 1 step each).
    quick_downstream: `--quick` keeps the first this many downstream tasks.
    quick_sweep_mixtures: `--quick` keeps the first this many sweep mixtures.
    quick_toy_records: `--quick` builds the toy world with these records per
      split instead of `toy_records` (a smaller world builds faster).
    seconds_per_run: the planned-time estimate's fixed cost of one run (a
      pretraining or a finetuning: model set-up, compilation or its cache,
      checkpoints, the evaluation), until cells of this study have been timed.
    seconds_per_pretrain_step: the estimate's cost of one pretraining step.
    seconds_per_finetune_step: the estimate's cost of one finetuning step.
    cell_timeout_s: a cell's worker is stopped after this long (a hang is a
      failure, recorded like a crash).
  """
  samplers: Sequence[str] = ("uniform", "dynamic")
  mixture: str = "dynpt_24"
  sweep_samplers: Sequence[str] = ()
  sweep_mixtures: Sequence[str] = ()
  seeds: Sequence[int] = (0,)
  sweep_seeds: int | None = None
  downstream: Sequence[str] = ("vqav2",)
  pretrain_gin: str = "pretrain/toy_cpu.gin"
  finetune_gin: str = "finetune/toy_{task}.gin"
  pretrain_steps: int = 100
  finetune_steps: int = 50
  warmup_fraction: float = 0.1
  sampler_options: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  common_bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  pretrain_bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  finetune_bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  pretrain_loss_fraction: float = 0.1
  toy_scale: str | None = "tiny"
  toy_records: Mapping[str, int] = dataclasses.field(default_factory=dict)
  toy_palette: str = "full"
  data_dir: str | None = None
  world_seed: int = 0
  eval_examples: int | None = None
  contrasts: Sequence[str] = ()
  exploratory_results: str | None = None
  figure2_sampler: str = "dynamic"
  share_groups: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
  share_from_step: int = 0
  quick_seeds: int = 1
  quick_step_scale: float = 0.25
  quick_downstream: int | None = None
  quick_sweep_mixtures: int | None = None
  quick_toy_records: Mapping[str, int] | None = None
  seconds_per_run: float = 20.0
  seconds_per_pretrain_step: float = 0.4
  seconds_per_finetune_step: float = 0.4
  cell_timeout_s: float = 3600.0

  def __post_init__(self):
    _check(bool(self.samplers), "StudyConfig.samplers is empty")
    _check(bool(self.seeds), "StudyConfig.seeds is empty")
    _check(len(set(self.seeds)) == len(self.seeds),
           f"StudyConfig.seeds {tuple(self.seeds)} has a repeated seed")
    _check(bool(self.downstream), "StudyConfig.downstream is empty")
    _check(self.pretrain_steps >= 1, f"StudyConfig.pretrain_steps={self.pretrain_steps}: must be >= 1")
    _check(self.finetune_steps >= 1, f"StudyConfig.finetune_steps={self.finetune_steps}: must be >= 1")
    _check(0.0 <= self.warmup_fraction < 1.0,
           f"StudyConfig.warmup_fraction={self.warmup_fraction}: must be in [0, 1)")
    _check(0.0 < self.quick_step_scale <= 1.0,
           f"StudyConfig.quick_step_scale={self.quick_step_scale}: must be in (0, 1]")
    _check(self.sweep_seeds is None or self.sweep_seeds >= 1,
           f"StudyConfig.sweep_seeds={self.sweep_seeds}: must be >= 1 (or None: every seed)")
    _check(self.quick_seeds >= 1, f"StudyConfig.quick_seeds={self.quick_seeds}: must be >= 1")
    _check(0.0 < self.pretrain_loss_fraction <= 1.0,
           f"StudyConfig.pretrain_loss_fraction={self.pretrain_loss_fraction}: "
           "must be in (0, 1]")
    _check("{task}" in self.finetune_gin,
           f"StudyConfig.finetune_gin={self.finetune_gin!r} lacks the '{{task}}' placeholder")
    unknown = set(self.sampler_options) - set(self.samplers) - set(self.sweep_samplers)
    _check(not unknown, f"StudyConfig.sampler_options names sampler(s) {sorted(unknown)} "
           "that no cell runs")
    _check(self.toy_palette in scene_lib.PALETTES,
           f"StudyConfig.toy_palette={self.toy_palette!r}: expected one of "
           f"{', '.join(sorted(scene_lib.PALETTES))}")
    _check(self.toy_scale is not None or bool(self.data_dir),
           "StudyConfig: set toy_scale (build a toy world) or data_dir (use existing data)")
    _check(self.world_seed >= 0, f"StudyConfig.world_seed={self.world_seed}: must be >= 0")
    _check(self.eval_examples is None or self.eval_examples >= 1,
           f"StudyConfig.eval_examples={self.eval_examples}: must be >= 1 (or None)")
    bound = self.finetune_bindings.get("EVAL_EXAMPLES")
    _check(self.eval_examples is None or bound is None or bound == self.eval_examples,
           f"StudyConfig.eval_examples={self.eval_examples} contradicts "
           f"finetune_bindings EVAL_EXAMPLES={bound}; set one of them")
    for text in self.contrasts:
      parse_contrast(text, self)
    for group, tasks in self.share_groups.items():
      _check(bool(tasks) and not isinstance(tasks, str),
             f"StudyConfig.share_groups[{group!r}]: expected a tuple of task names, "
             f"got {tasks!r}")
    _check(self.share_from_step >= 0,
           f"StudyConfig.share_from_step={self.share_from_step}: must be >= 0")

  def quick(self) -> "StudyConfig":
    """The `--quick` study: fewer seeds, steps, tasks and mixtures (`quick_*`)."""
    scale = self.quick_step_scale
    keep = lambda seq, n: tuple(seq) if n is None else tuple(seq)[:max(n, 0)]  # noqa: E731
    return dataclasses.replace(
        self, seeds=tuple(self.seeds)[:self.quick_seeds],
        pretrain_steps=max(1, round(self.pretrain_steps * scale)),
        finetune_steps=max(1, round(self.finetune_steps * scale)),
        downstream=keep(self.downstream, self.quick_downstream) or tuple(self.downstream)[:1],
        sweep_mixtures=keep(self.sweep_mixtures, self.quick_sweep_mixtures),
        toy_records=(self.toy_records if self.quick_toy_records is None
                     else self.quick_toy_records))


@dataclasses.dataclass(frozen=True)
class Contrast:
  """A declared comparison: `a` - `b` on `task`, paired by seed."""
  a: str
  b: str
  task: str

  @property
  def text(self) -> str:
    return f"{self.a} - {self.b}: {self.task}"


MEAN_TASK = "mean"


def parse_contrast(text: str, cfg: StudyConfig | None = None) -> Contrast:
  """'<a> - <b>: <task>' -> Contrast (`scratch` is stored as SCRATCH); ValueError.

  With `cfg`, the samplers must be cells of the study and the task one of its
  downstream tasks (or `mean`).
  """
  where = f"StudyConfig.contrasts: {text!r}"
  pair, sep, task = text.partition(":")
  names = [n.strip() for n in pair.split(" - ")]
  if not sep or len(names) != 2 or not all(names) or not task.strip():
    raise ValueError(f"{where}: expected '<a> - <b>: <task>', e.g. 'dynamic - uniform: mean'")
  a, b = (SCRATCH if n == "scratch" else n for n in names)
  task = task.strip()
  if a == b:
    raise ValueError(f"{where}: compares {a!r} with itself")
  if cfg is not None:
    known = set(cfg.samplers) | {SCRATCH}
    for name in (a, b):
      if name not in known:
        raise ValueError(f"{where}: {name!r} is not a sampler of the study "
                         f"({', '.join(cfg.samplers)}, or scratch)")
    if task not in set(cfg.downstream) | {MEAN_TASK}:
      raise ValueError(f"{where}: task {task!r} is not downstream "
                       f"({', '.join(cfg.downstream)}, or {MEAN_TASK})")
  return Contrast(a, b, task)


def _check(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


def warmup_steps(cfg: StudyConfig, steps: int) -> int:
  return int(round(cfg.warmup_fraction * steps))


def finetune_gin_file(cfg: StudyConfig, task: str) -> str:
  return cfg.finetune_gin.format(task=task)
