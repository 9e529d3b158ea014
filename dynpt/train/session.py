"""The set-up of a training run, apart from its step loop (t5x's `Trainer.__init__`).

`build_session` makes everything the loop (`dynpt.train.loop.run`) steps
with: the mesh, the model, the jitted step, the train state (restored from
the newest good checkpoint, or fresh, or from given params), the mixture
feedback around the sampler (restored with it) and the per-task input
prefetched one batch ahead (`prefetch.BatchPrefetcher`). Pretraining (`loop.train`) and finetuning
(`dynpt.downstream.finetune.finetune`) both build their runs here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from typing import Any, Callable, Iterator

import jax
import orbax.checkpoint as ocp
from absl import logging

from dynpt import fs, mixing
from dynpt.train import batching, checkpoints, memory, model_setup, optim
from dynpt.train import partitioning, preflight, run_lock
from dynpt.train import state as state_lib
from dynpt.train import step as step_lib
from dynpt.train.config import DataConfig, ModelConfig, SamplerConfig, TrainConfig
from dynpt.train.feedback import Draw, MixtureFeedback
from dynpt.train.prefetch import BatchPrefetcher

_COMPILE_BARRIER_TIMEOUT_MS = 3600 * 1000  # Large models compile for minutes.
_BARRIER_IDS = itertools.count()  # Barrier keys must not repeat in a process.


@contextlib.contextmanager
def claimed_run_dir(run_dir: str, on_claimed: Callable[[str], Any] | None = None
                    ) -> Iterator[None]:
  """Holds the run directory for the whole run and checks that its folders are
  writable; the one place a run takes `run_lock.RunLock` (a second trainer on
  the directory is refused).

  Args:
    run_dir: the run directory.
    on_claimed: called with `run_dir` once it is held and found writable,
      before anything is built: `dynpt.main` writes `config.gin` there, so a
      refused run leaves the holder's config as it is.
  """
  with run_lock.RunLock(run_dir):
    preflight.check_writable(run_dir)
    if on_claimed is not None:
      on_claimed(run_dir)
    yield


def build_sampler(sampler_cfg: SamplerConfig, task_names, batch_size: int,
                  data_cfg: DataConfig, num_steps: int) -> mixing.Sampler:
  """The configured sampler, handed what it declares it needs from this run.

  The run knows its tasks' dataset sizes (counted in `sampler_cfg.size_split`,
  only when the sampler needs them and its options do not give them), its
  length and the signal it feeds: the training loss of every step, and no
  validation scores (`dynpt.mixing.registry`).
  """
  run = mixing.RunFacts(
      task_sizes=lambda: [model_setup.dataset_size(t, sampler_cfg.size_split,
                                                   data_cfg.data_dir) for t in task_names],
      num_steps=num_steps)
  return mixing.make_sampler(sampler_cfg.name, task_names, batch_size, run=run,
                             **sampler_cfg.options)


@dataclasses.dataclass
class TraceCount:
  """How often JAX traced a function: once per new input signature.

  A jitted function is traced exactly when it needs a program for inputs of a
  shape, dtype or sharding it has not seen, and each trace is compiled (or
  loaded from the persistent compilation cache), so the count is the number
  of compilations the run's step needed, read through public JAX only
  (`tests/test_train_e2e.py` asserts one over a run whose mixture changes).
  """
  count: int = 0

  def __call__(self) -> None:
    self.count += 1


@dataclasses.dataclass
class TrainSession:
  """A run ready to step: what `build_session` made.

  Attributes:
    train_cfg: the run's `TrainConfig` (steps, logging, checkpoint cadence).
    task_names: the mixture's tasks, in `task_id` order.
    mesh: the (data, model) device mesh.
    model: the `VLModel`.
    state: the `TrainState` (donated to every step; replaced by the loop).
    train_step: `(state, batch, loss_weights) -> (state, metrics)`, jitted.
    step_traces: how often `train_step` was traced (its compilations).
    start_step: the step the run continues from (0 for a fresh run).
    feedback: the mixture feedback around the sampler.
    prefetcher: the input, one batch ahead.
    checkpointer: the run's checkpoints.
  """
  train_cfg: TrainConfig
  task_names: list[str]
  mesh: jax.sharding.Mesh
  model: Any
  state: Any
  train_step: Any
  step_traces: TraceCount
  start_step: int
  feedback: MixtureFeedback
  prefetcher: BatchPrefetcher
  checkpointer: checkpoints.Checkpointer

  @property
  def trace_context(self) -> Callable:
    """The mesh and activation rules the step is traced under (for decoding)."""
    return partitioning.trace_context(self.mesh, self.train_cfg.partition_mode)

  def compile_on_every_process(self) -> None:
    """Compiles the step for the started batch, then waits for every process.

    CPU collectives (gloo) give all processes 30 s to reach the first
    collective. A process that finds the step in the persistent compilation
    cache while another compiles it for a minute would fail there, so every
    process compiles first (the jitted call then reuses the executable) and
    they meet at a barrier of the distributed runtime, which has no such
    limit. Call inside `with mesh` (part of jit's cache key).
    """
    draw, local = self.prefetcher.peek()
    rows = jax.process_count()
    batch = {k: jax.ShapeDtypeStruct((v.shape[0] * rows,) + v.shape[1:], v.dtype,
                                     sharding=self.prefetcher.sharding)
             for k, v in local.items()}
    weights = jax.ShapeDtypeStruct(draw.loss_weights.shape, draw.loss_weights.dtype,
                                   sharding=partitioning.replicated(self.mesh))
    self.train_step.lower(self.state, batch, weights).compile()
    ocp.multihost.get_barrier_sync_fn()(
        key=f"dynpt_train_step_compiled_{next(_BARRIER_IDS)}",
        timeout_ms=_COMPILE_BARRIER_TIMEOUT_MS)

  def loss_weights(self, draw: Draw) -> jax.Array:
    """`draw.loss_weights` [tasks] copied to every device, as the step takes them.

    An explicit copy: the loop steps under `jax.transfer_guard("disallow")`,
    where a host array handed to the step would fail.
    """
    weights = draw.loss_weights
    return jax.make_array_from_callback(weights.shape, partitioning.replicated(self.mesh),
                                        lambda index: weights[index])

  def close(self) -> None:
    """Waits for pending checkpoint writes and stops the input thread."""
    try:
      self.checkpointer.close()
    finally:
      self.prefetcher.close()


def make_train_optimizer(optimizer_cfg: optim.OptimizerConfig, train_cfg: TrainConfig,
                         frozen_patterns: tuple[str, ...] = ()
                         ) -> tuple[optim.OptimizerConfig, Any]:
  """(the run's optimizer config, its optax transformation): `total_steps`
  defaults to the run's `num_steps`."""
  optimizer_cfg = dataclasses.replace(
      optimizer_cfg, total_steps=optimizer_cfg.total_steps or train_cfg.num_steps)
  return optimizer_cfg, optim.make_optimizer(optimizer_cfg, frozen_patterns)


def jit_train_step(model, num_tasks: int, train_cfg: TrainConfig,
                   optimizer_cfg: optim.OptimizerConfig, mesh, shardings,
                   on_trace: Callable[[], Any] | None = None):
  """`step.train_step` jitted with the state donated, traced under the mesh's rules.

  `on_trace` is called each time JAX traces the step (`TraceCount`).
  """
  step_fn = functools.partial(
      step_lib.train_step, model=model, num_tasks=num_tasks,
      label_smoothing=train_cfg.label_smoothing,
      loss_normalization=train_cfg.loss_normalization,
      learning_rate_fn=optim.learning_rate_schedule(optimizer_cfg))

  def train_step(state, batch, task_loss_weights):
    if on_trace is not None:
      on_trace()  # Python code of a jitted function runs when it is traced only.
    return step_fn(state, batch, task_loss_weights)

  repl = partitioning.replicated(mesh)
  return jax.jit(
      partitioning.traced_under_rules(train_step, mesh, train_cfg.partition_mode),
      in_shardings=(shardings, partitioning.batch_sharding(mesh), repl),
      out_shardings=(shardings, repl), donate_argnums=(0,))


def build_session(train_cfg: TrainConfig, data_cfg: DataConfig,
                  sampler_cfg: SamplerConfig, optimizer_cfg: optim.OptimizerConfig,
                  model_cfg: ModelConfig, *, init_params: Any = None,
                  frozen_patterns: tuple[str, ...] = (),
                  num_data_shards: int | None = None,
                  run_model: model_setup.RunModel | None = None) -> TrainSession:
  """Builds (or restores) a run from valid configs, in a claimed run directory.

  Args (beyond the configs):
    init_params: params to start from instead of a random init (an export);
      ignored when resuming from a checkpoint.
    frozen_patterns: regexes of param paths that get no updates.
    num_data_shards: logical data shards S (see `dynpt.train.batching`).
      Default: the checkpoint's S when resuming and the process count
      divides it, else one per process.
    run_model: the run's `model_setup.build_run_model` when the caller built it
      already (finetuning fits an export to it first); default: built here.

  Raises:
    ValueError: naming the setting, when the batch does not divide over the
      devices, processes or data shards.
  """
  run_dir = train_cfg.run_dir
  fs.makedirs(run_dir)  # Nothing to make in a bucket.
  task_names = model_setup.resolve_task_names(data_cfg.mixture)
  batch_size = train_cfg.global_batch_size
  feedback = MixtureFeedback(build_sampler(sampler_cfg, task_names, batch_size, data_cfg,
                                            train_cfg.num_steps))
  run_model = run_model or model_setup.build_run_model(model_cfg, data_cfg, train_cfg)
  mesh = run_model.mesh
  data_devices = mesh.shape[partitioning.DATA]
  if batch_size % max(data_devices, jax.process_count()):
    raise ValueError(
        f"TrainConfig.global_batch_size={batch_size} must be divisible by the "
        f"{data_devices} data-parallel devices and {jax.process_count()} processes")
  vocab, model, rules = run_model.vocab, run_model.model, run_model.rules
  optimizer_cfg, tx = make_train_optimizer(optimizer_cfg, train_cfg, frozen_patterns)
  init_fn = run_model.init_fn()
  ckpt = checkpoints.Checkpointer(run_dir, keep=train_cfg.keep_checkpoints,
                                  save_every=train_cfg.checkpoint_every,
                                  async_save=train_cfg.async_checkpoints)
  try:
    state, shardings, data_positions = _restore_or_init(
        ckpt, feedback, init_fn, tx, mesh, rules, train_cfg.seed, init_params)
    if num_data_shards is None:
      num_data_shards = batching.default_num_data_shards(
          data_positions, jax.process_count(), batch_size)
    if batch_size % num_data_shards:
      raise ValueError(f"TrainConfig.global_batch_size={batch_size} must be divisible "
                       f"by num_data_shards={num_data_shards}")
    mixture_input = batching.MixtureInput(
        task_names, sequence_length=data_cfg.sequence_length,
        image_size=data_cfg.image_size, seed=data_cfg.seed,
        data_dir=data_cfg.data_dir, split=data_cfg.split, vocabulary=vocab,
        positions=data_positions, num_data_shards=num_data_shards,
        max_damaged_fraction=data_cfg.max_damaged_fraction)
  except BaseException:
    ckpt.close()
    raise
  logging.info("model %s: %d params; %d tasks; mesh %s; %d data shards over "
               "%d processes", model_cfg.name, state_lib.count_params(state.params),
               len(task_names), dict(mesh.shape), num_data_shards, jax.process_count())
  logging.info("%s", memory.summary_line(memory.estimate_for_state(
      state, shardings, model.config, global_batch_size=batch_size,
      mesh_shape=(mesh.shape[partitioning.DATA], mesh.shape[partitioning.MODEL]),
      partition_mode=train_cfg.partition_mode, input_length=data_cfg.input_length,
      target_length=data_cfg.target_length)))
  traces = TraceCount()
  return TrainSession(
      train_cfg=train_cfg, task_names=task_names, mesh=mesh, model=model, state=state,
      train_step=jit_train_step(model, len(task_names), train_cfg, optimizer_cfg, mesh,
                                shardings, on_trace=traces),
      step_traces=traces,
      start_step=int(jax.device_get(state.step)), feedback=feedback,
      prefetcher=BatchPrefetcher(mixture_input, partitioning.batch_sharding(mesh)),
      checkpointer=ckpt)


def _restore_or_init(ckpt: checkpoints.Checkpointer, feedback: MixtureFeedback,
                     init_fn, tx, mesh, rules, seed: int, init_params: Any
                     ) -> tuple[Any, Any, dict | None]:
  """(state, its shardings, saved data positions or None); restores `feedback`.

  The newest checkpoint step that restores wins; damaged ones are logged and
  moved aside (`Checkpointer.restore_latest_good`).
  """
  if ckpt.all_steps():
    abstract, shardings = state_lib.state_shardings(init_fn, tx, mesh, rules, seed)
    restored = ckpt.restore_latest_good(abstract, shardings)
    if restored is not None:
      step, state, mixer_state, data_positions = restored
      logging.info("resuming from checkpoint step %d in %s", step, ckpt.run_dir)
      feedback.load_state_dict(mixer_state)
      return state, shardings, data_positions
  state, shardings = state_lib.create_train_state(init_fn, tx, mesh, rules, seed)
  if init_params is not None:
    state = state.replace(params=jax.device_put(init_params, shardings.params))
  return state, shardings, None
