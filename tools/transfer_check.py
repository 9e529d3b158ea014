r"""Does toy pretraining transfer? Pretrained vs from-scratch finetuning, over seeds.

  python tools/transfer_check.py --data_dir=data/toy --out_dir=runs/transfer \
      --seeds=0,1,2 --tasks=vqav2,gqa,snli_ve

Per seed: pretrain `--pretrain_config` (SEED=seed), export it, probe its
yes/no tasks for grounding, then finetune every task of `--tasks` twice with
`--finetune_config` (the task's name replaces `{task}`): from the export and
from scratch, at the same steps and seed. Each finished run is one line of
`<out_dir>/results.jsonl` (with the commit it ran from), so a re-run skips
what is done; the closing table gives mean +- std over seeds of each arm and
of the per-seed difference. The toy world is built in `--data_dir` if absent.
The check itself is `dynpt.study.transfer`; docs/study/transfer.md has the
measurements.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

os.environ.setdefault("JAX_PLATFORMS", "cpu")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dynpt import console  # noqa: E402

console.setup(__name__)  # Before TensorFlow and JAX load: their start-up chatter goes.

from dynpt import hostalloc  # noqa: E402
from dynpt.study import transfer  # noqa: E402

_DEFAULT = transfer.TransferConfig()
_DATA_DIR = flags.DEFINE_string("data_dir", _DEFAULT.data_dir,
                                "Toy data directory (built if absent).")
_OUT_DIR = flags.DEFINE_string("out_dir", _DEFAULT.out_dir, "Where runs and results go.")
_SEEDS = flags.DEFINE_list("seeds", [str(s) for s in _DEFAULT.seeds],
                           "Seeds (pretraining and finetuning).")
_TASKS = flags.DEFINE_list("tasks", list(_DEFAULT.tasks), "Downstream tasks.")
_PRETRAIN = flags.DEFINE_string("pretrain_config", _DEFAULT.pretrain_gin,
                                "Pretraining gin file.")
_FINETUNE = flags.DEFINE_string("finetune_config", _DEFAULT.finetune_gin,
                                "Finetuning gin file; {task} is replaced by the task name.")
_PT_BINDINGS = flags.DEFINE_multi_string("pretrain_binding", [], "Extra pretraining bindings.")
_FT_BINDINGS = flags.DEFINE_multi_string("finetune_binding", [], "Extra finetuning bindings.")
_PROBE_TASKS = flags.DEFINE_list(
    "probe_tasks", list(_DEFAULT.probe_tasks),
    "Pretraining tasks probed for grounding after pretraining (empty: none).")
_SCALE = flags.DEFINE_enum("scale", _DEFAULT.scale, ["tiny", "default"],
                           "Toy world size to build if absent.")
_PALETTE = flags.DEFINE_enum("palette", _DEFAULT.palette, ["full", "simple"],
                             "Toy world palette to build if absent (scene.PALETTES).")


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
  cfg = transfer.TransferConfig(
      data_dir=_DATA_DIR.value, out_dir=_OUT_DIR.value, seeds=seeds, tasks=_TASKS.value,
      pretrain_gin=_PRETRAIN.value, finetune_gin=_FINETUNE.value,
      pretrain_bindings=_PT_BINDINGS.value, finetune_bindings=_FT_BINDINGS.value,
      probe_tasks=_PROBE_TASKS.value, scale=_SCALE.value, palette=_PALETTE.value)
  try:
    results = transfer.run(cfg)
  except Exception as e:  # A user's mistake gets one line; a bug keeps its traceback.
    code = dynpt_main.exit_code_for(e)
    if code is None:
      raise
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    sys.exit(code)
  print("\n".join(transfer.summarize(results, cfg.tasks) + transfer.code_lines(results)))


if __name__ == "__main__":
  hostalloc.configure_process()
  console.run_app(main)
