"""The study's grid: which cells exist, what each runs, and in which order.

A *cell* is one unit of work whose results never change once written: a
pretrained cell (sampler x mixture x seed) pretrains, measures its
pretraining loss, exports and finetunes on every downstream task; a scratch
cell finetunes one downstream task from random init with one seed (the
paper's "no pretraining" baseline). The grid is the Table-4 rows (every
sampler on one mixture) plus the Table-5 sweep (a few samplers on more
mixtures), times the seeds.

DoReMi's reference model is trained on the baseline mixture, so a `doremi`
cell reads the losses of a uniform cell of the same mixture. That cell has
another seed (the next seed of the study): a same-seed uniform run replays
the doremi run's first batch exactly, the excess loss stays 0 and the weights
never leave uniform (dynpt/mixing/doremi.py). With a single seed a
reference-only uniform cell (no finetuning) is added. Cells are ordered so
that a reference runs before the cells that read it, and sharding keeps a
cell and its reference on the same shard.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

from dynpt.toyworld import datasets as toy_datasets
from dynpt.toyworld import scene as scene_lib

SCRATCH = "none"  # The `sampler` and `mixture` of a from-scratch cell.
REFERENCE_SAMPLERS = {"doremi": "uniform"}  # Sampler -> the sampler of its reference.


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


@dataclasses.dataclass(frozen=True)
class Cell:
  """One unit of the study.

  Attributes:
    sampler: the make_sampler name, or `none` for a scratch cell.
    mixture: the pretraining mixture, or `none` for a scratch cell.
    seed: the cell's seed.
    tasks: downstream tasks it finetunes (empty: a reference-only cell).
    reference: the name of the cell whose run it reads (doremi), or None.
  """
  sampler: str
  mixture: str
  seed: int
  tasks: tuple[str, ...]
  reference: str | None = None

  @property
  def init(self) -> str:
    return "scratch" if self.sampler == SCRATCH else "pretrained"

  @property
  def name(self) -> str:
    if self.init == "scratch":
      return f"scratch-{self.tasks[0]}-s{self.seed}"
    return f"{self.sampler}-{self.mixture}-s{self.seed}"


def pretrained_name(sampler: str, mixture: str, seed: int) -> str:
  return Cell(sampler, mixture, seed, ()).name


def expand(cfg: StudyConfig) -> list[Cell]:
  """Every cell of the study, each reference before the cells that read it."""
  seeds = list(cfg.seeds)
  sweep_seeds = seeds[:cfg.sweep_seeds] if cfg.sweep_seeds is not None else seeds
  pairs = [(s, cfg.mixture, seeds) for s in cfg.samplers]
  # Table 5's last row is Table 4's mixture, with every seed.
  pairs += [(s, m, seeds if m == cfg.mixture else sweep_seeds)
            for m in cfg.sweep_mixtures for s in cfg.sweep_samplers]
  tasks = tuple(cfg.downstream)
  cells: dict[str, Cell] = {}
  # Seed by seed, each seed's scratch cells right after its pretrained ones, so a
  # study stopped early has whole seeds (every row of a paired comparison).
  for seed in seeds:
    for sampler, mixture, pair_seeds in pairs:
      if seed in pair_seeds:
        cells.setdefault(pretrained_name(sampler, mixture, seed),
                         Cell(sampler, mixture, seed, tasks))
    for task in tasks:
      cell = Cell(SCRATCH, SCRATCH, seed, (task,))
      cells[cell.name] = cell
  for sampler, mixture, pair_seeds in pairs:
    if sampler not in REFERENCE_SAMPLERS:
      continue
    for i, seed in enumerate(pair_seeds):
      ref_seed = (pair_seeds[(i + 1) % len(pair_seeds)] if len(pair_seeds) > 1
                  else seed + 1)
      ref = Cell(REFERENCE_SAMPLERS[sampler], mixture, ref_seed, ())
      ref = cells.setdefault(ref.name, ref)
      name = pretrained_name(sampler, mixture, seed)
      cells[name] = dataclasses.replace(cells[name], reference=ref.name)
  return order(list(cells.values()))


def order(cells: Sequence[Cell]) -> list[Cell]:
  """`cells` with every reference moved before the first cell that reads it."""
  by_name = {c.name: c for c in cells}
  out: list[Cell] = []
  placed: set[str] = set()

  def place(cell: Cell, chain: tuple[str, ...]) -> None:
    if cell.name in placed:
      return
    if cell.name in chain:
      raise ValueError(f"cells {' -> '.join(chain + (cell.name,))} depend on each other")
    if cell.reference is not None and cell.reference in by_name:
      place(by_name[cell.reference], chain + (cell.name,))
    placed.add(cell.name)
    out.append(cell)

  for cell in cells:
    place(cell, ())
  return out


def parse_shard(text: str) -> tuple[int, int]:
  """'i/N' -> (i, N) with 0 <= i < N; raises ValueError naming the flag."""
  parts = text.split("/")
  try:
    index, count = int(parts[0]), int(parts[1])
    if len(parts) != 2:
      raise ValueError
  except (ValueError, IndexError):
    raise ValueError(f"--shard={text}: expected i/N, e.g. --shard=0/4") from None
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"--shard={text}: need 0 <= i < N (shards are numbered 0..N-1)")
  return index, count


def shard(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
  """The cells of shard `index` of `count`; every cell lands in exactly one.

  A cell and the cells that read it (doremi and its reference) form a group
  that stays on one shard, so no shard waits for another. Groups are dealt
  round-robin in grid order, so the shards' sizes differ by at most a group.
  """
  root: dict[str, str] = {c.name: c.name for c in cells}

  def find(name: str) -> str:
    while root[name] != name:
      root[name] = root[root[name]]
      name = root[name]
    return name

  for cell in cells:
    if cell.reference in root:
      root[find(cell.name)] = find(cell.reference)
  groups = list(dict.fromkeys(find(c.name) for c in cells))
  mine = {g for i, g in enumerate(groups) if i % count == index}
  return [c for c in cells if find(c.name) in mine]


def select(cells: Sequence[Cell], names: Sequence[str]) -> list[Cell]:
  """The named cells and the references they read, in grid order.

  Raises:
    ValueError: naming a cell that is not in `cells`.
  """
  by_name = {c.name: c for c in cells}
  wanted: set[str] = set()
  for name in names:
    if name not in by_name:
      raise ValueError(f"--cell={name}: no such cell in this study (shard); "
                       "`--dry_run` lists them")
    while name is not None and name not in wanted:
      wanted.add(name)
      name = by_name[name].reference if by_name[name].reference in by_name else None
  return [c for c in cells if c.name in wanted]


def gin_literal(value: Any) -> str:
  """A Python value as gin writes it (gin parses Python literals)."""
  if isinstance(value, float) and not math.isfinite(value):
    raise ValueError(f"gin cannot express the value {value}")
  if isinstance(value, Mapping):
    return "{" + ", ".join(f"{gin_literal(k)}: {gin_literal(v)}"
                           for k, v in value.items()) + "}"
  if isinstance(value, (list, tuple)):
    inner = ", ".join(gin_literal(v) for v in value)
    return f"({inner},)" if isinstance(value, tuple) and len(value) == 1 else (
        f"({inner})" if isinstance(value, tuple) else f"[{inner}]")
  return repr(value)


def bindings(values: Mapping[str, Any]) -> list[str]:
  """`NAME=VALUE` gin binding lines, in order."""
  return [f"{name}={gin_literal(value)}" for name, value in values.items()]


def warmup_steps(cfg: StudyConfig, steps: int) -> int:
  return int(round(cfg.warmup_fraction * steps))


def finetune_gin_file(cfg: StudyConfig, task: str) -> str:
  return cfg.finetune_gin.format(task=task)


def data_dir(cfg: StudyConfig, out_dir: str) -> str:
  """Where the cells read data: the study's own toy world, or `cfg.data_dir`."""
  if cfg.toy_scale is None:
    return os.path.abspath(str(cfg.data_dir))
  name = "data" if cfg.toy_palette == "full" else f"data_{cfg.toy_palette}"
  if cfg.world_seed:
    name += f"_w{cfg.world_seed}"
  return os.path.abspath(os.path.join(out_dir, name))


def toy_records(cfg: StudyConfig) -> dict[str, int]:
  """Records per split of the study's toy world: `toy_records`, and each
  downstream task's `val` split of `eval_examples` records when that is set."""
  records = dict(cfg.toy_records)
  if cfg.eval_examples is not None:
    for task in cfg.downstream:
      spec = toy_datasets.DATASETS.get(task)
      if spec is not None and "val" in spec.splits:
        records[f"{task}/val"] = int(cfg.eval_examples)
  return records


def build_world(cfg: StudyConfig, out_dir: str, progress: bool = False) -> str:
  """Builds the study's toy world (seed `world_seed`, `toy_records(cfg)`); its data dir.

  Splits already built with the same seed and sizes are kept.
  """
  from dynpt.toyworld import build  # TensorFlow: only when a world is built.

  path = data_dir(cfg, out_dir)
  build.build_toy_world(path, seed=cfg.world_seed, scale=cfg.toy_scale,
                        image_size=cfg.common_bindings.get("IMAGE_SIZE"),
                        records=toy_records(cfg), palette=cfg.toy_palette,
                        progress=progress)
  return path
