r"""Does toy pretraining transfer? Pretrained vs from-scratch finetuning, over seeds.

  python tools/transfer_check.py --data_dir=data/toy --out_dir=runs/transfer \
      --seeds=0,1,2 --tasks=vqav2,gqa,snli_ve

Per seed: pretrain `--pretrain_config` (SEED=seed), export it, probe its
yes/no tasks for grounding (answer accuracy with true vs shuffled images,
`dynpt.downstream.grounding`), then finetune every task of `--tasks` twice with
`--finetune_config` (the task's name replaces `{task}`): from the export and
from scratch, at the same steps and seed. Each finished run is one line of
`<out_dir>/results.jsonl`, so a re-run skips what is done; the closing table
gives mean +- std over seeds of each arm and of the per-seed difference.
The toy world is built in `--data_dir` if absent (docs/study/transfer.md).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging

os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dynpt import console  # noqa: E402

console.setup(__name__)  # Before TensorFlow and JAX load: their start-up chatter goes.

from dynpt import hostalloc  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", "data/toy", "Toy data directory (built if absent).")
_OUT_DIR = flags.DEFINE_string("out_dir", "runs/transfer", "Where runs and results go.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (pretraining and finetuning).")
_TASKS = flags.DEFINE_list("tasks", ["vqav2", "gqa", "snli_ve"], "Downstream tasks.")
_PRETRAIN = flags.DEFINE_string("pretrain_config", "pretrain/toy_study.gin",
                                "Pretraining gin file.")
_FINETUNE = flags.DEFINE_string("finetune_config", "finetune/toy_study_{task}.gin",
                                "Finetuning gin file; {task} is replaced by the task name.")
_PT_BINDINGS = flags.DEFINE_multi_string("pretrain_binding", [], "Extra pretraining bindings.")
_FT_BINDINGS = flags.DEFINE_multi_string("finetune_binding", [], "Extra finetuning bindings.")
_PROBE_TASKS = flags.DEFINE_list(
    "probe_tasks", ["cc3m_itm", "oi_exists", "vg_exists", "vg_multi_exists"],
    "Pretraining tasks probed for grounding after pretraining (empty: none).")
_SCALE = flags.DEFINE_enum("scale", "default", ["tiny", "default"],
                           "Toy world size to build if absent.")
_PALETTE = flags.DEFINE_enum("palette", "full", ["full", "simple"],
                             "Toy world palette to build if absent (scene.PALETTES).")

RESULTS_FILE = "results.jsonl"


def _read_results(path: str) -> dict[tuple, dict]:
  done = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          r = json.loads(line)
          done[(r["kind"], r["seed"], r.get("task"), r.get("init"))] = r
  return done


def _append(path: str, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record, sort_keys=True) + "\n")


def _configure(gin_file: str, bindings: list[str]) -> None:
  import gin
  from dynpt import main as dynpt_main

  gin.clear_config()
  dynpt_main.parse_gin([gin_file], bindings)


def _pretrain(seed: int, run_dir: str, data_dir: str) -> dict:
  import gin
  from dynpt import main as dynpt_main
  from dynpt.downstream import grounding
  from dynpt.train import config

  bindings = [f"RUN_DIR='{run_dir}'", f"DATA_DIR='{data_dir}'", f"SEED={seed}"]
  _configure(_PRETRAIN.value, bindings + _PT_BINDINGS.value)
  dynpt_main.write_config(run_dir)
  start = time.time()
  summary = dynpt_main.run_mode("pretrain")
  seconds = time.time() - start
  exported = dynpt_main.run_mode("export")
  probe = {}
  if _PROBE_TASKS.value:
    model_cfg = gin.get_configurable(config.ModelConfig)()
    data_cfg = gin.get_configurable(config.DataConfig)()
    probe = grounding.run_answer_accuracy(run_dir, _PROBE_TASKS.value,
                                          model_cfg=model_cfg, data_cfg=data_cfg)
  return {"kind": "pretrain", "seed": seed, "run_dir": run_dir,
          "export": os.path.abspath(exported["out_dir"]), "seconds": seconds,
          "steady_examples_per_s": summary.get("steady_examples_per_s"),
          "final_task_loss": summary.get("final_task_loss"), "grounding": probe}


def _finetune(seed: int, task: str, init_from: str | None, run_dir: str,
              data_dir: str) -> dict:
  from dynpt import main as dynpt_main

  bindings = [f"RUN_DIR='{run_dir}'", f"DATA_DIR='{data_dir}'", f"SEED={seed}",
              f"INIT_FROM={repr(init_from) if init_from else None}"]
  _configure(_FINETUNE.value.format(task=task), bindings + _FT_BINDINGS.value)
  dynpt_main.write_config(run_dir)
  start = time.time()
  summary = dynpt_main.run_mode("finetune")
  last = summary["eval"]
  return {"kind": "finetune", "seed": seed, "task": task,
          "init": "pretrained" if init_from else "scratch", "run_dir": run_dir,
          "seconds": time.time() - start, "step": last["step"], "score": last["score"],
          "metrics": last["tasks"]}


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from dynpt import main as dynpt_main

  try:
    seeds = [int(s) for s in _SEEDS.value]
  except ValueError:
    print(f"error: --seeds={','.join(_SEEDS.value)}: seeds must be integers", file=sys.stderr)
    sys.exit(dynpt_main.EXIT_ERROR)
  try:
    _run(seeds)
  except Exception as e:  # A user's mistake gets one line; a bug keeps its traceback.
    code = dynpt_main.exit_code_for(e)
    if code is None:
      raise
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    sys.exit(code)


def _run(seeds: list[int]) -> None:
  """Every missing run of the grid, then the table."""
  from dynpt.toyworld import build

  data_dir = os.path.abspath(_DATA_DIR.value)
  out_dir = os.path.abspath(_OUT_DIR.value)
  os.makedirs(out_dir, exist_ok=True)
  build.build_toy_world(data_dir, seed=0, scale=_SCALE.value, progress=False,
                        palette=_PALETTE.value)
  path = os.path.join(out_dir, RESULTS_FILE)
  done = _read_results(path)
  for seed in seeds:
    key = ("pretrain", seed, None, None)
    if key not in done:
      done[key] = _pretrain(seed, os.path.join(out_dir, f"seed{seed}", "pretrain"), data_dir)
      _append(path, done[key])
      print(f"seed {seed}: pretrained in {done[key]['seconds']:.0f} s; grounding "
            + json.dumps({t: round(g["true"] - g["shuffled"], 3)
                          for t, g in done[key]["grounding"].items()}), flush=True)
    for task in _TASKS.value:
      for init in ("pretrained", "scratch"):
        key = ("finetune", seed, task, init)
        if key in done:
          continue
        init_from = done[("pretrain", seed, None, None)]["export"] if init == "pretrained" else None
        run_dir = os.path.join(out_dir, f"seed{seed}", f"{task}_{init}")
        done[key] = _finetune(seed, task, init_from, run_dir, data_dir)
        _append(path, done[key])
        print(f"seed {seed} {task} {init}: {done[key]['score']:.1f} "
              f"({done[key]['seconds']:.0f} s)", flush=True)
  from dynpt.metrics import transfer

  print("\n".join(transfer.summarize(list(done.values()), _TASKS.value)))


if __name__ == "__main__":
  hostalloc.configure_process()
  console.run_app(main)
