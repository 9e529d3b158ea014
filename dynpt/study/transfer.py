"""The transfer check: finetuning from a pretrained export against from scratch, over seeds.

Per seed: pretrain `pretrain_gin` (SEED=seed), export it, probe its yes/no
tasks for grounding (answer accuracy with true vs shuffled images,
`dynpt.downstream.grounding`), then finetune every task of `tasks` twice with
`finetune_gin` (`{task}` replaced by the task's name): from the export and
from scratch, at the same steps and seed. So the per-seed difference is the
effect of the initialisation alone, and its mean and spread over seeds decide
whether pretraining helped (docs/study/transfer.md).

The runs go in-process through the study cell's `run_in_process`, one after
the other. Each finished run is one row of `<out_dir>/results.jsonl`, written
whole (`store.append_rows`) and stamped with the commit and the gin files'
fingerprint it ran from (`provenance`), so a re-run skips what is done and
the closing table says which code made its rows. `tools/transfer_check.py`
is its command line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Iterable, Sequence

import numpy as np

from dynpt import fs
from dynpt.study import cell, provenance, store

# (kind, seed, task, init) of a row: ('pretrain', 0, None, None), ('finetune', 0, 'gqa', 'scratch').
Key = tuple[str, int, str | None, str | None]


@dataclasses.dataclass(frozen=True)
class TransferConfig:
  """What a transfer check runs.

  Attributes:
    data_dir: the toy world's data dir, built there if absent (`scale`, `palette`).
    out_dir: where the runs (`seed<seed>/pretrain`, `seed<seed>/<task>_<init>`)
      and `results.jsonl` go.
    seeds: the seeds of pretraining and of both finetuning arms.
    tasks: the downstream tasks, each finetuned from the export and from scratch.
    pretrain_gin: the pretraining gin file.
    finetune_gin: the finetuning gin file; `{task}` is replaced by the task's name.
    pretrain_bindings: further gin bindings of the pretraining (`NAME=VALUE`).
    finetune_bindings: further gin bindings of every finetuning.
    probe_tasks: pretraining tasks probed for grounding after pretraining
      (empty: none).
    scale: the toy world's scale if it has to be built ('tiny' or 'default').
    palette: the toy world's palette if it has to be built (`scene.PALETTES`).
  """
  data_dir: str = "data/toy"
  out_dir: str = "runs/transfer"
  seeds: Sequence[int] = (0, 1, 2)
  tasks: Sequence[str] = ("vqav2", "gqa", "snli_ve")
  pretrain_gin: str = "pretrain/toy_study.gin"
  finetune_gin: str = "finetune/toy_study_{task}.gin"
  pretrain_bindings: Sequence[str] = ()
  finetune_bindings: Sequence[str] = ()
  probe_tasks: Sequence[str] = ("cc3m_itm", "oi_exists", "vg_exists", "vg_multi_exists")
  scale: str = "default"
  palette: str = "full"


def row_key(row: dict[str, Any]) -> Key:
  return (row["kind"], row["seed"], row.get("task"), row.get("init"))


def read_results(path: str) -> dict[Key, dict[str, Any]]:
  """The finished runs in `path`, by key (an absent file: none)."""
  return {row_key(r): r for r in store.read_rows(path)}


def pretrain(cfg: TransferConfig, seed: int, run_dir: str, data_dir: str) -> dict[str, Any]:
  """Pretrains, exports and probes one seed; its row."""
  import gin

  from dynpt import main as dynpt_main
  from dynpt.downstream import grounding
  from dynpt.train import config

  bindings = [f"RUN_DIR='{run_dir}'", f"DATA_DIR='{data_dir}'", f"SEED={seed}"]
  start = time.time()
  summary = cell.run_in_process("pretrain", [cfg.pretrain_gin],
                                bindings + list(cfg.pretrain_bindings))
  seconds = time.time() - start
  exported = dynpt_main.run_mode("export")
  probe = {}
  if cfg.probe_tasks:
    model_cfg = gin.get_configurable(config.ModelConfig)()
    data_cfg = gin.get_configurable(config.DataConfig)()
    probe = grounding.run_answer_accuracy(run_dir, list(cfg.probe_tasks),
                                          model_cfg=model_cfg, data_cfg=data_cfg)
  return {"kind": "pretrain", "seed": seed, "run_dir": run_dir,
          "export": os.path.abspath(exported["out_dir"]), "seconds": seconds,
          "steady_examples_per_s": summary.get("steady_examples_per_s"),
          "final_task_loss": summary.get("final_task_loss"), "grounding": probe}


def finetune(cfg: TransferConfig, seed: int, task: str, init_from: str | None, run_dir: str,
             data_dir: str) -> dict[str, Any]:
  """Finetunes `task` from `init_from` (None: from scratch) and evaluates; its row."""
  bindings = [f"RUN_DIR='{run_dir}'", f"DATA_DIR='{data_dir}'", f"SEED={seed}",
              f"INIT_FROM={repr(init_from) if init_from else None}"]
  start = time.time()
  summary = cell.run_in_process("finetune", [cfg.finetune_gin.format(task=task)],
                                bindings + list(cfg.finetune_bindings))
  last = summary["eval"]
  return {"kind": "finetune", "seed": seed, "task": task,
          "init": "pretrained" if init_from else "scratch", "run_dir": run_dir,
          "seconds": time.time() - start, "step": last["step"], "score": last["score"],
          "metrics": last["tasks"]}


def run(cfg: TransferConfig) -> list[dict[str, Any]]:
  """Every run of the check that is not done yet, seed by seed; returns all rows.

  Prints a line per finished run.

  Raises:
    FileNotFoundError: a gin file is missing (before anything runs).
    ValueError: a folder is a bucket URL (before anything runs).
  """
  from dynpt.toyworld import build

  data_dir = store.local_folder("--data_dir", cfg.data_dir)
  out_dir = store.local_folder("--out_dir", cfg.out_dir)
  version = provenance.of_gin_files(
      [cfg.pretrain_gin] + [cfg.finetune_gin.format(task=t) for t in cfg.tasks])
  fs.makedirs(out_dir)
  build.build_toy_world(data_dir, seed=0, scale=cfg.scale, progress=False,
                        palette=cfg.palette)
  path = os.path.join(out_dir, store.RESULTS)
  done = read_results(path)

  def record(row: dict[str, Any]) -> dict[str, Any]:
    row = {**row, **version}
    store.append_rows(path, [row])
    done[row_key(row)] = row
    return row

  for seed in cfg.seeds:
    key: Key = ("pretrain", seed, None, None)
    if key not in done:
      row = record(pretrain(cfg, seed, os.path.join(out_dir, f"seed{seed}", "pretrain"),
                            data_dir))
      print(f"seed {seed}: pretrained in {row['seconds']:.0f} s; grounding "
            + json.dumps({t: round(g["true"] - g["shuffled"], 3)
                          for t, g in row["grounding"].items()}), flush=True)
    for task in cfg.tasks:
      for init in ("pretrained", "scratch"):
        if ("finetune", seed, task, init) in done:
          continue
        init_from = done[key]["export"] if init == "pretrained" else None
        run_dir = os.path.join(out_dir, f"seed{seed}", f"{task}_{init}")
        row = record(finetune(cfg, seed, task, init_from, run_dir, data_dir))
        print(f"seed {seed} {task} {init}: {row['score']:.1f} ({row['seconds']:.0f} s)",
              flush=True)
  return list(done.values())


def _cell(x: np.ndarray) -> str:
  """'mean +- std' in points (sample std; 0 for one seed)."""
  return f"{x.mean():7.1f} +- {x.std(ddof=1) if len(x) > 1 else 0.0:4.1f}"


def paired_scores(results: Iterable[dict], task: str) -> dict[int, dict[str, float]]:
  """{seed: {'pretrained': points, 'scratch': points}} for seeds with both arms."""
  by_seed: dict[int, dict[str, float]] = {}
  for r in results:
    if r.get("kind") == "finetune" and r["task"] == task:
      by_seed.setdefault(r["seed"], {})[r["init"]] = float(r["score"])
  return {s: v for s, v in sorted(by_seed.items()) if {"pretrained", "scratch"} <= set(v)}


def summarize(results: Sequence[dict], tasks: Sequence[str]) -> list[str]:
  """Lines of the closing table: per task, mean +- std of each arm and of the gain.

  Args:
    results: records with kind='finetune', seed, task, init ('pretrained' or
      'scratch') and score (the task's primary metric, in points as `dynpt.metrics` reports
      it); other records are ignored.
    tasks: the rows, in order.

  Returns:
    A header line and one line per task; a task without a seed that finished
    both arms says so instead of reporting half a comparison.
  """
  lines = [f"{'task':<10}{'pretrained':>16}{'scratch':>16}{'gain':>16}  seeds"]
  for task in tasks:
    paired = paired_scores(results, task)
    if not paired:
      lines.append(f"{task:<10}  (no seed with both arms finished)")
      continue
    pre = np.array([v["pretrained"] for v in paired.values()])
    scr = np.array([v["scratch"] for v in paired.values()])
    lines.append(f"{task:<10}{_cell(pre):>16}{_cell(scr):>16}{_cell(pre - scr):>16}  "
                 f"{','.join(map(str, paired))}")
  return lines


def code_lines(results: Sequence[dict]) -> list[str]:
  """Which code and gin files made the rows ('unrecorded': rows of before the stamp)."""
  return [f"rows of commit {c[:10]}{' (dirty tree)' if d == 'True' else ''}, gin files "
          f"{g}: {n}" for (c, d, g), n in sorted(provenance.code_versions(results).items())]
