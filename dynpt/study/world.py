"""The toy world a study's cells read: where it lives, its sizes, and building it.

A study builds its own toy world into its directory (one per palette and
world seed, so cells never count as done across worlds), or reads an existing
data dir (`StudyConfig.data_dir` with `toy_scale = None`).
"""

from __future__ import annotations

import os

from dynpt.study.grid import StudyConfig
from dynpt.toyworld import datasets as toy_datasets


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
