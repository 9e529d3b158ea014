r"""The README's main job: toy pretraining with dynamic sampling, end to end.

  make demo            # == python tools/demo.py --run_dir=runs/demo --data_dir=data/toy

Builds the toy world if absent, pretrains `gin_configs/pretrain/toy_cpu.gin`
on all 24 tasks, exports the checkpoint, draws the mixture plot and prints a
closing summary. Re-running resumes from the last checkpoint.
"""

from __future__ import annotations

import os
import sys

from absl import flags

os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dynpt import console  # noqa: E402

# The demo talks through dynpt's own lines (a bar on a terminal, one line per log
# step, the closing summary); the libraries' start-up chatter goes (dynpt.console).
console.setup(__name__)

from dynpt import hostalloc  # noqa: E402

_RUN_DIR = flags.DEFINE_string("run_dir", "runs/demo", "Run directory.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data/toy", "Toy data directory.")
_CONFIG = flags.DEFINE_string("config", "pretrain/toy_cpu.gin", "Gin config.")
_BINDING = flags.DEFINE_multi_string("binding", [], "Extra gin bindings.")
_SCALE = flags.DEFINE_enum("scale", "default", ["tiny", "default"],
                           "Toy world size to build if absent.")


def main(argv) -> None:
  del argv
  from dynpt import main as dynpt_main
  from dynpt.toyworld import build

  print(f"toy world in {_DATA_DIR.value} (built once, then reused)")
  build.build_toy_world(_DATA_DIR.value, seed=0, scale=_SCALE.value)
  bindings = [f"RUN_DIR='{_RUN_DIR.value}'",
              f"DATA_DIR='{os.path.abspath(_DATA_DIR.value)}'"] + _BINDING.value
  dynpt_main.parse_gin([_CONFIG.value], bindings)
  dynpt_main.write_config(_RUN_DIR.value)
  summary = dynpt_main.run_mode("pretrain")
  exported = dynpt_main.run_mode("export")
  from dynpt.mixing import history as mixing_history
  from dynpt.mixing import plot

  history = os.path.join(_RUN_DIR.value, mixing_history.HISTORY_FILENAME)
  records, _ = mixing_history.read_history(history)
  png = os.path.join(_RUN_DIR.value, "mixture.png")
  plot.plot_history(records, png, title="dynpt demo (toy_cpu.gin)")
  first, last = records[0]["shares"], records[-1]["shares"]
  print("\n=== dynpt demo summary ===")
  if summary["start_step"] == summary["end_step"]:
    print(f"the run in {_RUN_DIR.value} was already complete at step "
          f"{summary['end_step']}; delete it to train again")
  else:
    steady = summary.get("steady_examples_per_s")
    print(f"steps {summary['start_step']} -> {summary['end_step']} in "
          f"{summary['seconds']:.0f} s, {summary['examples_per_s']:.1f} examples/s"
          + (f" ({steady:.1f} after the first step, which compiles)" if steady else ""))
  print(f"{'task':<24}{'final loss':>11}{'share start':>13}{'share end':>11}")
  # A re-run of a finished demo trains no step: take the losses from the history.
  final_loss = summary["final_task_loss"] or records[-1].get("task_loss") or {}
  for task in sorted(last, key=lambda t: -(last[t] or 0)):
    loss = final_loss.get(task)
    loss = float("nan") if loss is None else loss
    print(f"{task:<24}{loss:>11.3f}{first[task]:>13.3f}{last[task]:>11.3f}")
  print(f"run dir:     {os.path.abspath(_RUN_DIR.value)}")
  print(f"checkpoints: {summary['checkpoints']}")
  print(f"export:      {os.path.abspath(exported['out_dir'])}")
  print(f"mixture:     {os.path.abspath(history)}")
  print(f"plot:        {os.path.abspath(png)}")
  print(f"tensorboard: tensorboard --logdir {os.path.join(_RUN_DIR.value, 'tensorboard')}")


if __name__ == "__main__":
  hostalloc.configure_process()
  console.run_app(main)
