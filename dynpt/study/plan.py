"""The study's cells: which exist, in which order, and how they are sharded.

A *cell* is one unit of work whose results never change once written: a
pretrained cell (sampler x mixture x seed) pretrains, measures its
pretraining loss, exports and finetunes on every downstream task; a scratch
cell finetunes one downstream task from random init with one seed (the
paper's "no pretraining" baseline). The grid (`grid.StudyConfig`) is the
Table-4 rows (every sampler on one mixture) plus the Table-5 sweep (a few
samplers on more mixtures), times the seeds.

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
from typing import Sequence

from dynpt.study.grid import SCRATCH, StudyConfig

REFERENCE_SAMPLERS = {"doremi": "uniform"}  # Sampler -> the sampler of its reference.


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
