"""Finetuning on downstream tasks (the paper's appendix B).

Finetuning is the pretraining loop (`dynpt.train.loop.run`) on a run built by
`dynpt.train.session.build_session` from an export's params (fresh optimizer,
fitted by `dynpt.train.init_params`), on one downstream task or a mixture of
them, with optional frozen subtrees, plus an `EvalHook`: every
`EvalConfig.every` steps and at the end the model decodes the eval split and
the task's official metric is computed (`decode_score`); the best params by that
metric are kept in `<run_dir>/best/` with `best.json` (`best_params`).
"""

from __future__ import annotations

from typing import Any, Callable

from dynpt import mixing
from dynpt.downstream import best_params
from dynpt.downstream.decode_score import EvalConfig
from dynpt.train import hooks, loop, model_setup, optim
from dynpt.train import init_params as init_params_lib
from dynpt.train import session as session_lib
from dynpt.train.config import (DataConfig, ModelConfig, SamplerConfig, TrainConfig,
                                validate_configs)

# Kept reachable from here: gin files bind `finetune.EvalConfig`, and configs written
# before the downstream package bind `finetune.pretrain_init_params`.
pretrain_init_params = init_params_lib.pretrain_init_params
__all__ = ["EvalConfig", "finetune", "pretrain_init_params"]


def finetune(train_cfg: TrainConfig = TrainConfig(),
             data_cfg: DataConfig = DataConfig(mixture="vqav2"),
             optimizer_cfg: optim.OptimizerConfig = optim.OptimizerConfig(),
             model_cfg: ModelConfig = ModelConfig(),
             sampler_cfg: SamplerConfig = SamplerConfig(mixing.EVEN_SAMPLER,
                                                        {"min_per_task": 1}),
             eval_cfg: EvalConfig = EvalConfig(),
             init_from: str | None = None,
             frozen_patterns: tuple[str, ...] = (),
             on_claimed: Callable[[str], Any] | None = None) -> dict[str, Any]:
  """Finetunes from an export (or from scratch when `init_from` is None).

  Args:
    init_from: an export directory (`tools/export_checkpoint.py`); params
      only, the optimizer starts fresh. None = random init (the paper's
      "no pretraining" baseline).
    frozen_patterns: regexes of param paths to freeze, e.g. ('^encoder/',
      '^resnet/') for a frozen encoder.
    on_claimed: called with the run directory once this run holds it
      (`session.claimed_run_dir`; `dynpt.main` writes `config.gin` there).

  Returns:
    the train summary plus `eval` (last evaluation) and `best` (its score).
  """
  validate_configs(train_cfg, data_cfg, optimizer_cfg, model_cfg, sampler_cfg,
                   eval_cfg)
  with session_lib.claimed_run_dir(train_cfg.run_dir, on_claimed):
    task_names = model_setup.resolve_task_names(data_cfg.mixture)
    run_model = model_setup.build_run_model(model_cfg, data_cfg, train_cfg)
    init_params = init_params_lib.load_init_params(init_from, run_model.model,
                                                   data_cfg, frozen_patterns)
    session = session_lib.build_session(
        train_cfg, data_cfg, sampler_cfg, optimizer_cfg, model_cfg,
        init_params=init_params, frozen_patterns=tuple(frozen_patterns),
        run_model=run_model)
    keeper = best_params.BestKeeper(task_names, run_model, eval_cfg, train_cfg.run_dir)
    summary = loop.run(session, eval_hooks=[hooks.EvalHook(keeper, eval_cfg.every)])
  summary.update(eval=keeper.last, best=keeper.best)
  return summary
