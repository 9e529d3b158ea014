r"""Runs one study cell, stage by stage, in its own process.

  python -m dynpt.study.cell <out_dir>/cells/<cell>/spec.json

The runner (`dynpt.study.runner`) writes the spec and starts one such process
per cell, so a crash, a hang or an out-of-memory kill ends that cell only.
Inside, the stages run in-process through the entry point's own functions
(`dynpt.main.parse_gin`, `run_mode`), which saves starting
Python, JAX and TensorFlow once per stage:

  pretrain        the pretraining run (resumes from its last checkpoint)
  pretrain_loss   the mean over the mixture's tasks of their training loss
                  over the last steps (`dynpt.study.pretrain_loss`; the
                  paper's Figure 1 measures the training loss)
  export          the params-only export finetuning starts from
  finetune_<task> finetuning from the export (or from scratch) with one
                  evaluation at the end, on the task's official metric

Each finished stage leaves `stages/<stage>.json`; a rerun skips it. The cell's
done marker (`dynpt.study.store`) is written after the last stage.

Exit codes: 0 done; 1 a mistake in the configuration (one `error:` line); any
other failure prints a traceback.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any

EXIT_ERROR = 1
SPEC = "spec.json"
# gin appends "In call to configurable 'train' (<function train at 0x...>)" to
# errors raised inside a configurable; the key is already in the message.
_GIN_CALL_NOTE = re.compile(r"\s*In call to configurable '[^']*' \(<[^>]*>\)")


def clean_error(error: BaseException | str) -> str:
  """One line of `error`'s message, without gin's call note."""
  return _GIN_CALL_NOTE.sub("", " ".join(str(error).split())).strip()


def stage_path(cell_dir: str, stage: str) -> str:
  return os.path.join(cell_dir, "stages", f"{stage}.json")


def _run_stage(cell_dir: str, stage: str, fn) -> dict[str, Any]:
  """`fn()` unless the stage's marker exists; the marker holds its result."""
  from dynpt.study import store

  path = stage_path(cell_dir, stage)
  done = store.read_json(path)
  if done is not None:
    return done
  t0 = time.time()
  result = dict(fn(), seconds=round(time.time() - t0, 2))
  store.write_json_atomic(path, result)
  return result


def configure(gin_files: list[str], bindings: list[str]) -> None:
  """Replaces this process's gin config with `gin_files` and `bindings`."""
  import gin

  from dynpt import main as dynpt_main

  gin.clear_config()
  dynpt_main.parse_gin(gin_files, bindings)


def run_in_process(mode: str, gin_files: list[str], bindings: list[str]) -> dict:
  """`python -m dynpt.main --mode=<mode>` in this process (`run_mode` locks the run
  directory and writes its config.gin); the config stays set for what follows."""
  from dynpt import main as dynpt_main

  configure(gin_files, bindings)
  return dynpt_main.run_mode(mode)


def _pretrain(spec: dict) -> dict[str, Any]:
  pt = spec["pretrain"]
  summary = run_in_process("pretrain", pt["gin_files"], pt["bindings"])
  if summary.get("preempted"):
    raise InterruptedError("pretraining was preempted (SIGTERM); run the study again")
  return {"end_step": int(summary["end_step"])}


def _pretrain_loss(spec: dict) -> dict[str, Any]:
  from dynpt.mixing import history
  from dynpt.study import pretrain_loss

  pt = spec["pretrain"]
  records, _ = history.read_history(os.path.join(pt["run_dir"], history.HISTORY_FILENAME))
  loss, per_task = pretrain_loss.training_loss(records, float(pt["loss_fraction"]))
  return {"loss": loss, "task_loss": per_task, "records": len(records)}


def _export(spec: dict) -> dict[str, Any]:
  from dynpt import main as dynpt_main

  pt = spec["pretrain"]
  configure(pt["gin_files"], pt["bindings"])
  out = dynpt_main.run_mode("export")
  return {"out_dir": os.path.abspath(out["out_dir"]), "step": int(out["step"])}


def primary_metric(results: dict[str, float]) -> tuple[str, float]:
  """(name, value) of the first metric a task reports: its official one."""
  for name, value in results.items():
    if name != "num_examples":
      return name, float(value)
  raise ValueError(f"the evaluation reported no metric: {results}")


def _finetune(ft: dict, init_from: str | None) -> dict[str, Any]:
  bindings = ft["bindings"] + [f"INIT_FROM={init_from!r}"]
  summary = run_in_process("finetune", ft["gin_files"], bindings)
  if summary.get("preempted"):
    raise InterruptedError("finetuning was preempted (SIGTERM); run the study again")
  last = summary.get("eval") or {}
  results = (last.get("tasks") or {}).get(ft["task"])
  if results is None:
    raise RuntimeError(f"finetuning {ft['run_dir']} returned no evaluation of "
                       f"{ft['task']!r}: {last}")
  metric, value = primary_metric(results)
  return {"metric": metric, "value": value, "step": int(last["step"]),
          "num_examples": int(results.get("num_examples", 0))}


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
  """Runs the cell's stages that have no marker; returns its done record."""
  from dynpt.study import provenance, store

  cell_dir, t0 = spec["cell_dir"], time.time()
  pretrain_loss = export_dir = None
  pretrain_steps = 0
  if spec.get("pretrain"):
    pretrain_steps = _run_stage(cell_dir, "pretrain", lambda: _pretrain(spec))["end_step"]
    pretrain_loss = _run_stage(cell_dir, "pretrain_loss",
                               lambda: _pretrain_loss(spec))["loss"]
    if spec["finetune"]:
      export_dir = _run_stage(cell_dir, "export", lambda: _export(spec))["out_dir"]
  rows = []
  for ft in spec["finetune"]:
    res = _run_stage(cell_dir, f"finetune_{ft['task']}",
                     lambda ft=ft: _finetune(ft, export_dir))
    rows.append({"cell": spec["name"], "sampler": spec["sampler"],
                 "mixture": spec["mixture"], "seed": spec["seed"], "init": spec["init"],
                 "task": ft["task"], "metric": res["metric"], "value": res["value"],
                 "pretrain_loss": pretrain_loss, "pretrain_steps": pretrain_steps,
                 "finetune_steps": res["step"], "eval_examples": res["num_examples"],
                 "world_seed": spec.get("world_seed", 0),
                 **{k: v for k, v in (spec.get("provenance") or {}).items()
                    if k in provenance.KEYS}})
  record = {"cell": spec["name"], "rows": rows, "pretrain_loss": pretrain_loss,
            "fingerprint": spec.get("fingerprint"),
            "pretrain_steps": pretrain_steps,
            "pretrain_run_dir": (spec.get("pretrain") or {}).get("run_dir"),
            "seconds": round(time.time() - t0, 2),
            "stage_seconds": _stage_seconds(cell_dir)}
  store.mark_done(spec["out_dir"], spec["name"], record)
  return record


def _stage_seconds(cell_dir: str) -> dict[str, float]:
  from dynpt.study import store

  root = os.path.join(cell_dir, "stages")
  out = {}
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else ():
    marker = store.read_json(os.path.join(root, name))
    if marker is not None:
      out[name[:-len(".json")]] = marker.get("seconds", 0.0)
  return out


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print(f"usage: python -m dynpt.study.cell <cell_dir>/{SPEC}", file=sys.stderr)
    return EXIT_ERROR
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from absl import logging

  from dynpt import main as dynpt_main

  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  try:
    with open(argv[1]) as f:
      spec = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    print(f"error: cell spec {argv[1]}: {e}", file=sys.stderr)
    return EXIT_ERROR
  try:
    record = run_cell(spec)
  except Exception as e:  # pylint: disable=broad-except
    if dynpt_main.exit_code_for(e) is None:
      raise  # A bug: the traceback is what helps.
    print(f"error: cell {spec.get('name')}: {clean_error(e)}", file=sys.stderr)
    return dynpt_main.exit_code_for(e)
  logging.info("cell %s done in %.0f s", spec["name"], record["seconds"])
  return 0


if __name__ == "__main__":
  from dynpt import console, hostalloc

  console.setup()  # Before TensorFlow and JAX load: worker.log holds the cell's own lines.
  hostalloc.configure_process()
  sys.exit(main(sys.argv))
