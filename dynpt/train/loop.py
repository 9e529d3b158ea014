"""The step loop: batch -> jitted step -> mixture feedback -> hooks.

`train` is pretraining: validate the configs, claim the run directory, build
the run (`dynpt.train.session`), then `run` it. `run` is the loop every run
shares (finetuning adds an `EvalHook`). One iteration, step s:

  1. take batch s (assembled on a background thread from `Draw` s);
  2. take in step s-1: read its metrics (a non-finite loss stops the run),
     `feedback.observe(s-1, losses)`, logging and history hooks;
  3. `feedback.draw(s+1)` (the sampler after the losses of steps <= s-1, see
     `dynpt.train.feedback`) and start assembling batch s+1;
  4. dispatch step s under `jax.transfer_guard("disallow")`, with the batch
     and the loss weights copied to the devices explicitly (an accidental
     host-to-device copy fails loudly, as in big_vision); its metrics start
     copying to the host as soon as they are ready;
  5. agree on preemption; checkpoint and eval hooks when due (after taking
     in step s, so the checkpoint holds its losses).

There is one ordering whether the jitted call returns at once (asynchronous
dispatch) or when the step is done (synchronous, e.g. XLA:CPU with async
dispatch off): batch s+1 is always assembled beside step s, and the counts of
each batch are the same in both, so a resumed run replays exactly.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Callable, Sequence

import jax
from absl import logging

from dynpt import console, fs
from dynpt.train import checkpoints, optim
from dynpt.train import config as config_lib
from dynpt.train import preemption
from dynpt.train import session as session_lib
from dynpt.train.config import DataConfig, ModelConfig, SamplerConfig, TrainConfig
from dynpt.train.hooks import (CheckpointHook, EvalHook, HistoryHook, LoggingHook,
                               StepResult, TrainingDivergedError)

__all__ = ["TrainingDivergedError", "run", "train"]


def train(train_cfg: TrainConfig = TrainConfig(),
          data_cfg: DataConfig = DataConfig(),
          sampler_cfg: SamplerConfig = SamplerConfig(),
          optimizer_cfg: optim.OptimizerConfig = optim.OptimizerConfig(),
          model_cfg: ModelConfig = ModelConfig(),
          init_params: Any = None, frozen_patterns: tuple[str, ...] = (),
          num_data_shards: int | None = None,
          on_claimed: Callable[[str], Any] | None = None) -> dict[str, Any]:
  """Runs (or resumes) a multi-task pretraining run; returns a summary dict.

  Args (beyond the configs):
    init_params: params to start from instead of a random init (pretraining
      from an export); ignored when resuming from a checkpoint.
    frozen_patterns: regexes of param paths that get no updates.
    num_data_shards: logical data shards S (see `dynpt.train.batching`):
      which example lands in which row depends on S only, so runs with the
      same S on any process count (dividing S) see the same batches. Default:
      the checkpoint's S when resuming and the process count divides it,
      else one per process.
    on_claimed: called with the run directory once this run holds it, before
      the model is built (`session.claimed_run_dir`; `dynpt.main` writes
      `config.gin` there).

  Everything that can be wrong with the configuration (a field of the wrong
  type or range, unknown task or sampler, batch too small for the per-task
  minimum, missing data, an unwritable run directory) fails here before the
  model is built. The run directory is locked for the whole run
  (`run_lock.RunLock`): a second trainer on it is refused.
  """
  config_lib.validate_configs(train_cfg, data_cfg, sampler_cfg, optimizer_cfg,
                              model_cfg)
  with session_lib.claimed_run_dir(train_cfg.run_dir, on_claimed):
    session = session_lib.build_session(
        train_cfg, data_cfg, sampler_cfg, optimizer_cfg, model_cfg,
        init_params=init_params, frozen_patterns=tuple(frozen_patterns),
        num_data_shards=num_data_shards)
    return run(session)


def run(session: session_lib.TrainSession,
        eval_hooks: Sequence[EvalHook] = ()) -> dict[str, Any]:
  """Steps `session` to `num_steps` (or a preemption); returns the summary.

  Writes `<run_dir>/train_summary.json` (chief). Closes the session.

  Raises:
    TrainingDivergedError: naming the step and the checkpoint kept, when the
      loss or the state becomes NaN/inf.
  """
  cfg = session.train_cfg
  start, last = session.start_step, cfg.num_steps
  feedback, prefetcher = session.feedback, session.prefetcher
  if start >= last:
    logging.info("run already complete at step %d", start)
  t_start = time.time()
  with contextlib.ExitStack() as stack:
    stack.callback(session.close)  # Runs last: waits for the checkpoint writes.
    logger = LoggingHook.create(cfg.run_dir, start, session.task_names, cfg,
                                skip_counts=prefetcher.input.skipped_by_task)
    stack.callback(logger.close)
    history = HistoryHook(cfg.run_dir, start, session.task_names, cfg.history_every)
    stack.callback(history.close)
    checkpoint = CheckpointHook(session.checkpointer, session.task_names, last)
    preempt = stack.enter_context(preemption.Preemption())
    stack.enter_context(session.mesh)

    def take_in(result: StepResult) -> None:
      """A finished step's losses to the feedback, its metrics to the hooks."""
      feedback.observe(result.step, result.task_loss(), result.draw.counts)
      logger.after_step(result)
      history.after_step(result)

    pending: StepResult | None = None  # Dispatched, not yet taken in.
    try:
      if start < last:
        prefetcher.start(feedback.draw(start))
        if jax.process_count() > 1:
          session.compile_on_every_process()
      for step in _progress(cfg, start, last):
        draw, batch, positions = prefetcher.take()
        if pending is not None:
          take_in(pending)  # Waits for step - 1.
        if step + 1 < last:
          prefetcher.start(feedback.draw(step + 1))
        weights = session.loss_weights(draw)
        # Every input is on the devices already (explicit copies): an implicit
        # host-to-device copy in the step call is a bug, and fails here.
        with jax.transfer_guard("disallow"):
          session.state, metrics = session.train_step(session.state, batch, weights)
        pending = StepResult(step, draw, _copy_to_host_async(metrics))
        done = step + 1
        # Collective where there are several processes: SIGTERM on any host
        # stops all of them after the same step (dynpt/train/preemption.py).
        stop = preempt.should_stop() or done == last
        save = checkpoint.due(done, stop)
        evals = [hook for hook in eval_hooks if hook.due(done, stop)]
        if save or evals:
          take_in(pending)  # The checkpoint holds step s's losses.
          pending = None
        if save:
          checkpoint.save(done, session.state, feedback, positions)
          logger.sync()  # A bucket's run dir gets the history and events
          history.sync()  # up to this checkpoint (written locally till now).
        for hook in evals:
          hook.run(done, session.state.params, logger)
        if stop and done < last:  # The last step ends the loop itself (a bar shows 100%).
          break
    except (TrainingDivergedError, checkpoints.NonFiniteStateError) as e:
      raise TrainingDivergedError(f"{e}. {checkpoint.kept_message()}") from None
  summary = logger.summary(start, int(jax.device_get(session.state.step)),
                           time.time() - t_start)
  summary.update(run_dir=cfg.run_dir, preempted=preempt.agreed,
                 compilations=session.step_traces.count,
                 skipped_records=prefetcher.input.skipped,
                 skipped_records_by_task=prefetcher.input.skipped_by_task(),
                 checkpoints=session.checkpointer.directory)
  if jax.process_index() == 0:
    fs.write_text(fs.join(cfg.run_dir, "train_summary.json"),
                  json.dumps(summary, indent=1))
  return summary


def _progress(cfg: TrainConfig, start: int, last: int):
  """The steps to run; a bar over them on the chief's terminal when asked for
  (in a log file, the line of each log step tells the progress)."""
  steps = range(start, last)
  if cfg.progress_bar and jax.process_index() == 0:
    return console.progress(steps, initial=start, total=last, desc="train", unit="step",
                            every_s=None)
  return steps


def _copy_to_host_async(metrics: Any) -> Any:
  """Starts the metrics' device-to-host copy, so that reading them next step
  waits only for the step itself."""
  for leaf in jax.tree.leaves(metrics):
    leaf.copy_to_host_async()
  return metrics
