"""The pretraining loop: sampler -> batch -> jitted step -> sampler update.

One iteration (step s):
  1. take the batch for s, assembled on a background thread;
  2. dispatch the jitted step (asynchronous on the device);
  3. while it runs: fetch step s-1's metrics, `sampler.update(s-1, ...)`,
     log, and start assembling batch s+1 from `sampler.counts(s+1)`.
So the sampler sees losses one step late (immaterial with windows of K=100
steps), and the host never waits for the device except to read metrics
that are already done. At checkpoint steps the pending update is flushed
before the next batch is drawn, so a resumed run replays exactly.

Where the jitted call is synchronous (XLA:CPU, `dynpt.hostalloc`), step 3's
update and the start of batch s+1 come before step 2 instead (not before a
checkpoint or the last step), with the same sampler inputs, so that batch
assembly still runs beside the step. A checkpoint records the data positions
as they were after batch s, whichever batch is being assembled when it is
written.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils

from dynpt import mixing
from dynpt.data import vocab as vocab_lib
from dynpt.train import batching, checkpoints, events, memory, model_setup
from dynpt.train import optim
from dynpt.train import config as config_lib
from dynpt.train import partitioning, preemption, preflight, run_lock
from dynpt.train import state as state_lib
from dynpt.train import step as step_lib
from dynpt.train.config import DataConfig, ModelConfig, SamplerConfig, TrainConfig
from dynpt.train.history import MixtureHistory


_COMPILE_BARRIER_TIMEOUT_MS = 3600 * 1000  # Large models compile for minutes.
_BARRIER_IDS = itertools.count()  # Barrier keys must not repeat in a process.


class TrainingDivergedError(RuntimeError):
  """The loss or the state became NaN/inf; the message names the step kept.

  Checkpoints never hold non-finite values (`Checkpointer.save` refuses
  them), so the newest checkpoint is the last good one.
  """


def _make_sampler(sampler_cfg: SamplerConfig, task_names, batch_size,
                  data_cfg: DataConfig):
  options = dict(sampler_cfg.options)
  if sampler_cfg.name in ("size", "temperature") and "task_sizes" not in options:
    options["task_sizes"] = [
        model_setup.dataset_size(t, sampler_cfg.size_split, data_cfg.data_dir)
        for t in task_names]
  return mixing.make_sampler(sampler_cfg.name, task_names, batch_size,
                             **options)


def _global_batch(local: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local.items()}


def _dispatch_is_synchronous() -> bool:
  """Whether a jitted call returns only once the step is done (XLA:CPU with async
  dispatch off, as `dynpt.hostalloc.reexec_with_tuned_allocator` sets it); then the
  loop starts the next batch before the step instead of after dispatching it."""
  return (jax.default_backend() == "cpu"
          and not jax.config.values.get("jax_cpu_enable_async_dispatch", True))


def _global_positions(task_names, state: dict) -> dict:
  """{task: [position per logical data shard]}, identical on every host.

  Args:
    task_names: the mixture's tasks, in order.
    state: this process's `MixtureInput.state()`.
  """
  local = np.asarray([state[t] for t in task_names],
                     np.int64)  # [tasks, shards of this process]
  if jax.process_count() > 1:
    # [processes, tasks, shards per process]; process p holds the shards
    # [p*S/P, (p+1)*S/P), so concatenating over processes orders them.
    allpos = np.asarray(multihost_utils.process_allgather(local))
  else:
    allpos = local[None]
  return {t: [int(p) for p in allpos[:, i].reshape(-1)]
          for i, t in enumerate(task_names)}


def _compile_on_every_process(p_step, state, local_batch: dict[str, np.ndarray],
                              batch_sharding, weights) -> None:
  """Compiles the step ahead of time, then waits for every process.

  CPU collectives (gloo) give all processes 30 s to reach the first
  collective. A process that finds the step in the persistent compilation
  cache while another compiles it for a minute would fail there, so every
  process compiles first (the jitted call then reuses the executable) and
  they meet at a barrier of the distributed runtime, which has no such limit.
  """
  rows = jax.process_count()
  batch = {k: jax.ShapeDtypeStruct((v.shape[0] * rows,) + v.shape[1:], v.dtype,
                                   sharding=batch_sharding)
           for k, v in local_batch.items()}
  p_step.lower(state, batch, weights).compile()
  ocp.multihost.get_barrier_sync_fn()(
      key=f"dynpt_train_step_compiled_{next(_BARRIER_IDS)}",
      timeout_ms=_COMPILE_BARRIER_TIMEOUT_MS)


def train(train_cfg: TrainConfig = TrainConfig(),
          data_cfg: DataConfig = DataConfig(),
          sampler_cfg: SamplerConfig = SamplerConfig(),
          optimizer_cfg: optim.OptimizerConfig = optim.OptimizerConfig(),
          model_cfg: ModelConfig = ModelConfig(),
          init_params: Any = None, frozen_patterns: tuple[str, ...] = (),
          eval_fn: Any = None, eval_every: int = 0,
          num_data_shards: int | None = None) -> dict[str, Any]:
  """Runs (or resumes) a multi-task run; returns a summary dict.

  Args (beyond the configs):
    init_params: params to start from instead of a random init (finetuning
      from an export); ignored when resuming from a checkpoint.
    frozen_patterns: regexes of param paths that get no updates.
    eval_fn: `(step, params) -> {name: float}`, called every `eval_every`
      steps and at the end; its results go to the metric writers.
    num_data_shards: logical data shards S (see `dynpt.train.batching`):
      which example lands in which row depends on S only, so runs with the
      same S on any process count (dividing S) see the same batches. Default:
      the checkpoint's S when resuming and the process count divides it,
      else one per process.

  Everything that can be wrong with the configuration (a field of the wrong
  type or range, unknown task or sampler, batch too small for the per-task
  minimum, missing data, an unwritable run directory) fails here before the
  model is built. The run directory is locked for the whole run
  (`run_lock.RunLock`): a second trainer on it is refused.
  """
  config_lib.validate_configs(train_cfg, data_cfg, sampler_cfg, optimizer_cfg,
                              model_cfg)
  with run_lock.RunLock(train_cfg.run_dir):
    preflight.check_writable(train_cfg.run_dir)
    return _train(train_cfg, data_cfg, sampler_cfg, optimizer_cfg, model_cfg,
                  init_params, frozen_patterns, eval_fn, eval_every,
                  num_data_shards)


def _train(train_cfg: TrainConfig, data_cfg: DataConfig,
           sampler_cfg: SamplerConfig, optimizer_cfg: optim.OptimizerConfig,
           model_cfg: ModelConfig, init_params: Any, frozen_patterns,
           eval_fn: Any, eval_every: int,
           num_data_shards: int | None) -> dict[str, Any]:
  """`train` once its configs are valid and its run directory is held."""
  run_dir = train_cfg.run_dir
  os.makedirs(run_dir, exist_ok=True)
  task_names = model_setup.resolve_task_names(data_cfg.mixture)
  num_tasks = len(task_names)
  sampler = _make_sampler(sampler_cfg, task_names,
                          train_cfg.global_batch_size, data_cfg)
  mesh = partitioning.create_mesh(train_cfg.num_model_partitions)
  data_shards = mesh.shape[partitioning.DATA]
  if train_cfg.global_batch_size % max(data_shards, jax.process_count()):
    raise ValueError(
        f"TrainConfig.global_batch_size={train_cfg.global_batch_size} must be "
        f"divisible by the {data_shards} data-parallel devices and "
        f"{jax.process_count()} processes")
  vocab = vocab_lib.get_vocabulary(data_cfg.vocabulary_path)
  ckpt = checkpoints.Checkpointer(
      run_dir, keep=train_cfg.keep_checkpoints,
      save_every=train_cfg.checkpoint_every,
      async_save=train_cfg.async_checkpoints)
  mixer_state = data_state = None
  model = model_setup.build_model(model_cfg, vocab, data_cfg.image_size)
  rules = partitioning.logical_axis_rules(train_cfg.partition_mode)
  tx = optim.make_optimizer(dataclasses.replace(
      optimizer_cfg, total_steps=optimizer_cfg.total_steps or train_cfg.num_steps),
      frozen_patterns)
  init_fn = model_setup.init_params_fn(model, data_cfg)
  restored = None
  if ckpt.all_steps():
    abstract, shardings = state_lib.state_shardings(init_fn, tx, mesh, rules,
                                                    train_cfg.seed)
    # The newest step that restores; damaged ones are logged and moved aside.
    restored = ckpt.restore_latest_good(abstract, shardings)
  if restored is not None:
    latest, state, mixer_state, data_state = restored
    logging.info("resuming from checkpoint step %d in %s", latest, run_dir)
    sampler.load_state_dict(mixer_state)
  else:
    state, shardings = state_lib.create_train_state(init_fn, tx, mesh, rules,
                                                    train_cfg.seed)
    if init_params is not None:
      state = state.replace(params=jax.device_put(init_params,
                                                  shardings.params))
  if num_data_shards is None:
    num_data_shards = batching.default_num_data_shards(
        data_state, jax.process_count(), train_cfg.global_batch_size)
  if train_cfg.global_batch_size % num_data_shards:
    raise ValueError(
        f"TrainConfig.global_batch_size={train_cfg.global_batch_size} must be "
        f"divisible by num_data_shards={num_data_shards}")
  mixture_input = batching.MixtureInput(
      task_names, sequence_length=data_cfg.sequence_length,
      image_size=data_cfg.image_size, seed=data_cfg.seed,
      data_dir=data_cfg.data_dir, split=data_cfg.split, vocabulary=vocab,
      positions=data_state, num_data_shards=num_data_shards,
      max_damaged_fraction=data_cfg.max_damaged_fraction)
  logging.info("model %s: %d params; %d tasks; mesh %s; %d data shards over "
               "%d processes", model_cfg.name,
               state_lib.count_params(state.params), num_tasks,
               dict(mesh.shape), num_data_shards, jax.process_count())
  logging.info("%s", memory.summary_line(memory.estimate_for_state(
      state, shardings, model.config,
      global_batch_size=train_cfg.global_batch_size,
      mesh_shape=(mesh.shape[partitioning.DATA], mesh.shape[partitioning.MODEL]),
      partition_mode=train_cfg.partition_mode,
      input_length=data_cfg.input_length,
      target_length=data_cfg.target_length)))

  batch_sharding = partitioning.batch_sharding(mesh)
  repl = partitioning.replicated(mesh)
  p_step = jax.jit(
      partitioning.traced_under_rules(functools.partial(
          step_lib.train_step, model=model, num_tasks=num_tasks,
          label_smoothing=train_cfg.label_smoothing,
          loss_normalization=train_cfg.loss_normalization,
          learning_rate_fn=optim.learning_rate_schedule(dataclasses.replace(
              optimizer_cfg,
              total_steps=optimizer_cfg.total_steps or train_cfg.num_steps))),
          mesh, train_cfg.partition_mode),
      in_shardings=(shardings, batch_sharding, repl),
      out_shardings=(shardings, repl), donate_argnums=(0,))

  is_chief = jax.process_index() == 0
  if is_chief:  # A killed attempt's summaries after the checkpoint go.
    events.truncate_after(os.path.join(run_dir, "tensorboard"),
                          int(jax.device_get(state.step)))
  writer = metric_writers.create_default_writer(
      os.path.join(run_dir, "tensorboard"), just_logging=not is_chief,
      asynchronous=True)
  history = MixtureHistory(os.path.join(run_dir, "mixture_history.jsonl"),
                           task_names, enabled=is_chief)
  start = int(jax.device_get(state.step))
  history.truncate_after(start)
  last = train_cfg.num_steps
  if start >= last:
    logging.info("run already complete at step %d", start)
  reporter = _Reporter(writer, task_names, train_cfg, sampler, history,
                       skip_counts=mixture_input.skipped_by_task)
  pending = None  # (step, metrics on device) of the previous step.

  def flush():
    nonlocal pending
    if pending is not None:
      reporter.consume(*pending)
      pending = None

  future = mixture_input.prefetch(reporter.draw(start)) if start < last else None
  sync_dispatch = _dispatch_is_synchronous()
  t_start = time.time()
  step = start
  with preemption.Preemption() as preempt, mesh:
    try:
      if future is not None and jax.process_count() > 1:
        # Inside `with mesh`: the mesh context is part of jit's cache key.
        _compile_on_every_process(
            p_step, state, future.result(), batch_sharding,
            jnp.asarray(sampler.loss_weights(start), jnp.float32))
      for step in reporter.progress(start, last):
        batch = _global_batch(future.result(), batch_sharding)
        # The data positions after this step's batch; the assembly of the next batch
        # may start before this step's checkpoint is written (below).
        positions = mixture_input.state()
        weights = jnp.asarray(sampler.loss_weights(step), jnp.float32)
        done = step + 1
        save_due = done == last or ckpt.should_save(done, last)
        drawn_early = sync_dispatch and not save_due
        if drawn_early:
          # The step call returns only when the step is done: take in the previous
          # step's losses now and start assembling the next batch, so that assembly
          # runs beside the step. Same sampler inputs as the order below.
          flush()
          future = mixture_input.prefetch(reporter.draw(done))
        state, metrics = p_step(state, batch, weights)
        flush()
        pending = (step, metrics)
        # Collective where there are several processes: SIGTERM on any host
        # stops all of them after the same step (dynpt/train/preemption.py).
        stop = preempt.should_stop() or done == last
        if stop or save_due:
          flush()
          ckpt.save(done, state, sampler.state_dict(),
                    _global_positions(mixture_input.task_names, positions))
        if eval_fn is not None and (
            stop or (eval_every > 0 and done % eval_every == 0)):
          flush()
          writer.write_scalars(done, eval_fn(done, state.params))
        if stop:
          break
        if not drawn_early:
          future = mixture_input.prefetch(reporter.draw(done))
      flush()
    except (TrainingDivergedError, checkpoints.NonFiniteStateError) as e:
      ckpt.wait()
      raise TrainingDivergedError(f"{e}. {_kept_checkpoint(ckpt)}") from None
    finally:
      ckpt.close()
      writer.flush()
      history.close()
      mixture_input.close()
  elapsed = time.time() - t_start
  summary = reporter.summary(start, int(jax.device_get(state.step)), elapsed)
  summary.update(run_dir=run_dir, preempted=preempt.agreed,
                 compilations=p_step._cache_size(),
                 skipped_records=mixture_input.skipped,
                 skipped_records_by_task=mixture_input.skipped_by_task(),
                 checkpoints=ckpt.directory)
  if is_chief:
    with open(os.path.join(run_dir, "train_summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
  return summary


def _kept_checkpoint(ckpt: checkpoints.Checkpointer) -> str:
  """Which checkpoint a diverged run leaves, for its error message."""
  kept = ckpt.latest_step()
  if kept is None:
    return f"No checkpoint was written in {ckpt.directory}."
  return (f"The newest checkpoint, step {kept} in {ckpt.directory}, holds "
          "finite values; a restart resumes from it and diverges again unless "
          "the config changes (e.g. a lower LEARNING_RATE).")


class _Reporter:
  """Host-side bookkeeping of step metrics: sampler update, logs, history."""

  def __init__(self, writer, task_names, train_cfg: TrainConfig, sampler,
               history: MixtureHistory, skip_counts=None):
    self.writer = writer
    self.skip_counts = skip_counts  # () -> {task: records skipped so far}.
    self.task_names = task_names
    self.cfg = train_cfg
    self.sampler = sampler
    self.history = history
    self._acc_loss = 0.0
    self._acc_n = 0
    self._acc_task_sum = np.zeros(len(task_names))
    self._acc_task_tokens = np.zeros(len(task_names))
    # step -> (shares, counts) its batch was drawn with. The batch of step s+1 is drawn
    # before update(s), which may change the mixture (every step for online mixers).
    self._drawn: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self._last_time = time.time()
    self.final_task_loss: dict[str, float] = {}
    self.examples = 0
    # When the first step's metrics arrived, and the examples up to then: the first
    # step includes compilation, so throughput after it is the steady rate.
    self._first_done: tuple[float, int] | None = None

  def progress(self, start: int, last: int):
    rng = range(start, last)
    if self.cfg.progress_bar and jax.process_index() == 0:
      import tqdm  # Only the chief draws a bar.
      return tqdm.tqdm(rng, initial=start, total=last, desc="train",
                       unit="step", dynamic_ncols=True)
    return rng

  def draw(self, step: int) -> np.ndarray:
    """The counts for `step`'s batch, remembered for its update and history line."""
    counts = np.asarray(self.sampler.counts(step))
    self._drawn[step] = (np.asarray(self.sampler.shares(step), np.float64), counts)
    return counts

  def consume(self, step: int, metrics) -> None:
    m = jax.device_get(metrics)
    loss = float(m["loss"])
    if not np.isfinite(loss):
      raise TrainingDivergedError(f"loss is {loss} at step {step}; stopping")
    shares, counts = self._drawn.pop(step, None) or (
        np.asarray(self.sampler.shares(step), np.float64),
        np.asarray(self.sampler.counts(step)))
    tokens = np.asarray(m["task_tokens"], np.float64)
    sums = np.asarray(m["task_loss_sum"], np.float64)
    task_loss = np.where(tokens > 0, sums / np.maximum(tokens, 1), np.nan)
    self.sampler.update(step, task_loss, task_count=counts)
    self.examples += int(counts.sum())
    if self._first_done is None:
      self._first_done = (time.time(), self.examples)
    self._acc_loss += loss
    self._acc_n += 1
    self._acc_task_sum += sums
    self._acc_task_tokens += tokens
    if step % self.cfg.history_every == 0:
      self.history.write(step, shares, counts, task_loss)
    if (step + 1) % self.cfg.log_every == 0 or step + 1 == self.cfg.num_steps:
      self._write(step, m, shares)

  def _write(self, step: int, m, shares) -> None:
    now = time.time()
    steps = self._acc_n
    dt = max(now - self._last_time, 1e-9)
    task_loss = self._acc_task_sum / np.maximum(self._acc_task_tokens, 1)
    scalars = {
        "train/loss": self._acc_loss / max(self._acc_n, 1),
        "train/grad_norm": float(m["grad_norm"]),
        "train/learning_rate": float(m.get("learning_rate", 0.0)),
        "train/steps_per_s": steps / dt,
        "train/examples_per_s": steps * self.cfg.global_batch_size / dt,
        "train/step_time_ms": 1000 * dt / max(steps, 1),
    }
    for i, name in enumerate(self.task_names):
      if self._acc_task_tokens[i] > 0:
        scalars[f"train/task/{name}/loss"] = float(task_loss[i])
        self.final_task_loss[name] = float(task_loss[i])
      scalars[f"train/task/{name}/share"] = float(shares[i])
    if self.skip_counts is not None:
      for name, count in self.skip_counts().items():
        scalars[f"train/task/{name}/skipped_records"] = float(count)
    self.writer.write_scalars(step + 1, scalars)
    self._last_time = now
    self._acc_loss, self._acc_n = 0.0, 0
    self._acc_task_sum[:] = 0
    self._acc_task_tokens[:] = 0

  def summary(self, start: int, end: int, elapsed: float) -> dict:
    """Totals of the run; `steady_examples_per_s` leaves out the first step (compile,
    pipeline start-up) and is None when the run trained fewer than 2 steps."""
    steady = None
    if self._first_done is not None and self.examples > self._first_done[1]:
      seconds = max(time.time() - self._first_done[0], 1e-9)
      steady = round((self.examples - self._first_done[1]) / seconds, 2)
    return {"start_step": start, "end_step": end,
            "seconds": round(elapsed, 2),
            "examples_per_s": round(self.examples / max(elapsed, 1e-9), 2),
            "steady_examples_per_s": steady,
            "final_task_loss": self.final_task_loss}
