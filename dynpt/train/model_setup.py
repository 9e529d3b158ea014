"""Glue between configs and the parts: task lists, vocabulary, model, mesh, init.

Kept apart from the loop so eval, export and finetuning build the very same
model from the same configs. `build_run_model` is the one place that turns the
configs into vocabulary, model, mesh and logical-axis rules: the trainer's set-up
(`dynpt.train.session.build_session`) and every scorer of `dynpt.downstream` start
from it, so an evaluation places params and traces its functions exactly as the
run's train step does (a model that needs fsdp to train is evaluated under fsdp).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from dynpt.data import task_registry
from dynpt.data import vocab as vocab_lib
from dynpt.models import configs as model_configs
from dynpt.models import cpu_kernels
from dynpt.models import vl_model
from dynpt.train import partitioning
from dynpt.train.config import DataConfig, ModelConfig, TrainConfig


def resolve_task_names(mixture: str) -> list[str]:
  """Task names of a registered mixture, a task, or a comma-separated list.

  Raises:
    ValueError: naming any unknown task or mixture (before training starts).
  """
  names = [n.strip() for n in mixture.split(",") if n.strip()]
  if not names:
    raise ValueError("DataConfig.mixture is empty")
  out = []
  for name in names:
    out.extend(task_registry.mixture_task_names(name))
  if len(set(out)) != len(out):
    raise ValueError(f"DataConfig.mixture={mixture!r} lists a task twice")
  return out


def dataset_size(task: str, split: str, data_dir: str | None) -> int:
  from dynpt.data import pipeline  # TF is only loaded when data is read.

  return pipeline.dataset_size(task, split=split, data_dir=data_dir)


def padded_vocab_size(vocab) -> int:
  """Vocab size rounded up to a multiple of 128 (MXU/TPU friendly, as T5)."""
  return vocab_lib.padded_vocab_size(vocab.vocab_size)


def model_config(model_cfg: ModelConfig, vocab_size: int, image_size: int,
                 devices: Sequence[jax.Device] | None = None) -> model_configs.VLConfig:
  """The frozen model config of `model_cfg` for a mesh over `devices`.

  `ModelConfig.cpu_kernels` is resolved here, once, for the devices the model will run
  on (default `jax.devices()`, the devices `partitioning.create_mesh` uses): 'auto'
  turns the XLA:CPU kernels on exactly when they are CPU devices. The run's paths
  (pretrain, finetune, eval, captioning, tools/check_config.py) come through here; the
  checkpoint importer, tools/model_summary.py and the benchmarks, which have no
  `ModelConfig`, call `cpu_kernels.resolve('auto', ...)` themselves.

  Raises:
    ValueError: for an unknown `cpu_kernels` mode or an invalid size override.
  """
  return model_configs.get_config(
      model_cfg.name, vocab_size=vocab_size,
      image_size=image_size, dtype=model_cfg.dtype, remat=model_cfg.remat,
      dropout_rate=model_cfg.dropout_rate, t5_overrides=model_cfg.t5_overrides,
      resnet_preactivation=model_cfg.resnet_preactivation,
      cpu_kernels=cpu_kernels.resolve(model_cfg.cpu_kernels, devices),
      visual_fusion=model_cfg.visual_fusion)


def build_model(model_cfg: ModelConfig, vocab, image_size: int,
                devices: Sequence[jax.Device] | None = None) -> vl_model.VLModel:
  """The run's model for a mesh over `devices` (default `jax.devices()`)."""
  return vl_model.VLModel(model_config(model_cfg, padded_vocab_size(vocab), image_size,
                                       devices))


def dummy_batch(data_cfg: DataConfig, batch_size: int = 1,
                num_frames: int | None = None) -> dict[str, jax.Array]:
  """Zero model inputs of the configured shapes (for init and shape checks)."""
  size = data_cfg.image_size
  image_shape = ((batch_size, num_frames, size, size, 3) if num_frames
                 else (batch_size, size, size, 3))
  return {
      "image": jnp.zeros(image_shape, jnp.uint8),
      "encoder_input_tokens": jnp.ones((batch_size, data_cfg.input_length),
                                       jnp.int32),
      "decoder_input_tokens": jnp.ones((batch_size, data_cfg.target_length),
                                       jnp.int32),
  }


def init_params_fn(model: vl_model.VLModel, data_cfg: DataConfig,
                   num_frames: int | None = None) -> Callable[[jax.Array], Any]:
  """rng -> boxed params (logical axis metadata kept for partitioning)."""
  batch = dummy_batch(data_cfg, 1, num_frames)

  def init(rng):
    return model.init(rng, vl_model.normalize_image(batch["image"]),
                      batch["encoder_input_tokens"],
                      batch["decoder_input_tokens"])["params"]

  return init


@dataclasses.dataclass(frozen=True)
class RunModel:
  """What every user of a run's model shares: vocabulary, model, mesh and rules.

  Attributes:
    vocab: the run's sentencepiece vocabulary.
    model: the `VLModel` built for the mesh's devices.
    mesh: the (data, model) device mesh (`partitioning.create_mesh`).
    partition_mode: `TrainConfig.partition_mode` (the logical-axis rules).
    data_cfg: the data config (lengths, image size, data dir, seed).
  """
  vocab: Any
  model: vl_model.VLModel
  mesh: jax.sharding.Mesh
  partition_mode: str
  data_cfg: DataConfig

  @property
  def rules(self) -> tuple:
    return partitioning.logical_axis_rules(self.partition_mode)

  def init_fn(self, num_frames: int | None = None) -> Callable[[jax.Array], Any]:
    return init_params_fn(self.model, self.data_cfg, num_frames)

  def param_shardings(self) -> Any:
    """The params' shardings under the run's rules (from shapes; nothing allocated)."""
    boxed = jax.eval_shape(self.init_fn(), jax.random.PRNGKey(0))
    return partitioning.param_shardings(boxed, self.mesh, self.rules)

  def place(self, params: Any) -> Any:
    """`params` (host or device arrays) sharded as the train step holds them."""
    return jax.device_put(params, self.param_shardings())

  def trace_context(self) -> Callable:
    """The mesh and activation rules to trace under (`partitioning.trace_context`)."""
    return partitioning.trace_context(self.mesh, self.partition_mode)

  def jit(self, fn: Callable, **jit_kwargs) -> Callable:
    """`fn` jitted and traced under the run's mesh and activation rules."""
    return jax.jit(partitioning.traced_under_rules(fn, self.mesh, self.partition_mode),
                   **jit_kwargs)

  def eval_iterator(self, task_name: str, *, task_id: int = 0, split: str,
                    passthrough: Sequence[str] = (), repeat: bool = True):
    """The task's examples of `split` in file order (no shuffle), for scoring."""
    from dynpt.data import pipeline  # TF is only loaded when data is read.

    d = self.data_cfg
    return pipeline.TaskIterator(
        task_name, task_id=task_id, sequence_length=d.sequence_length,
        image_size=d.image_size, seed=d.seed, split=split, data_dir=d.data_dir,
        shuffle=False, repeat=repeat, vocabulary=self.vocab,
        passthrough=tuple(passthrough))


def build_run_model(model_cfg: ModelConfig, data_cfg: DataConfig,
                    train_cfg: TrainConfig | None = None) -> RunModel:
  """Vocabulary, model, mesh and rules of a run, from its configs.

  `train_cfg` gives the mesh's model partitions and the partition mode (default:
  `TrainConfig()`'s, data parallel on every device).
  """
  train_cfg = train_cfg or TrainConfig()
  mesh = partitioning.create_mesh(train_cfg.num_model_partitions)
  vocab = vocab_lib.get_vocabulary(data_cfg.vocabulary_path)
  model = build_model(model_cfg, vocab, data_cfg.image_size,
                      devices=list(mesh.devices.flat))
  return RunModel(vocab=vocab, model=model, mesh=mesh,
                  partition_mode=train_cfg.partition_mode, data_cfg=data_cfg)
