"""Glue between configs and the parts: task lists, vocabulary, model, init.

Kept apart from the loop so eval, export and finetuning build the very same
model from the same configs.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from dynpt.data import task_registry
from dynpt.data import vocab as vocab_lib
from dynpt.models import configs as model_configs
from dynpt.models import cpu_kernels
from dynpt.models import vl_model
from dynpt.train.config import DataConfig, ModelConfig


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
