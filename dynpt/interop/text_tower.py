"""The text tower's sizes and parameter shapes, shared by every checkpoint format.

dynpt's T5 params use T5X's names (`token_embedder/embedding`,
`encoder/layers_0/attention/query/kernel`, ...; see `dynpt.models.t5`), so a text tower
is the nested dict {token_embedder, encoder, decoder} of float32 numpy arrays. The
readers map a checkpoint onto that tree and check it here against the shapes the model
itself declares (`jax.eval_shape` of its init), so a format's mapping cannot drift from
the model.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dynpt.models import configs
from dynpt.models import t5

TEXT_TOWER_KEYS = ("token_embedder", "encoder", "decoder")


class CheckpointMismatchError(ValueError):
  """A checkpoint that does not fit: wrong format, missing tensor or wrong shape."""


def t5_config(sizes: Mapping[str, int], vocab_size: int) -> configs.T5Config:
  """A T5Config (float32, no dropout) from `configs.T5_SIZE_FIELDS` values."""
  return configs.T5Config(vocab_size=int(vocab_size), dropout_rate=0.0,
                          **{k: int(sizes[k]) for k in configs.T5_SIZE_FIELDS})


def t5_sizes(cfg: configs.T5Config) -> dict[str, int]:
  """The `configs.T5_SIZE_FIELDS` of a T5Config, as plain ints (for JSON)."""
  return {k: int(getattr(cfg, k)) for k in configs.T5_SIZE_FIELDS}


@functools.lru_cache(maxsize=16)
def expected_shapes(cfg: configs.T5Config) -> dict[str, tuple[int, ...]]:
  """{'encoder/layers_0/attention/query/kernel': shape, ...} of the text tower (cached
  per config: treat the result as read-only)."""
  tokens = jnp.ones((1, 2), jnp.int32)
  model = t5.T5Transformer(cfg)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens))
  flat = traverse_util.flatten_dict(nn.meta.unbox(abstract["params"]), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def check_text_tower(params: Mapping[str, Any], cfg: configs.T5Config, source: str,
                     names: Mapping[str, str] | None = None, prefix: str = "") -> None:
  """Raises `CheckpointMismatchError` unless `params` has exactly the model's shapes.

  Args:
    params: the nested text tower.
    cfg: the config it must fit.
    source: the checkpoint, for the message.
    names: dynpt path -> the tensor's name in the checkpoint, for the message.
    prefix: else the name is prefix + the dynpt path.
  """
  names = names or {}
  have = traverse_util.flatten_dict(dict(params), sep="/")
  want = expected_shapes(cfg)
  for path, shape in want.items():
    name = names.get(path, prefix + path)
    if path not in have:
      raise CheckpointMismatchError(f"{source}: tensor {name!r} is missing")
    if tuple(np.shape(have[path])) != shape:
      raise CheckpointMismatchError(
          f"{source}: tensor {name!r} has shape {tuple(np.shape(have[path]))}, the "
          f"config needs {shape}")
  extra = sorted(set(have) - set(want))
  if extra:
    raise CheckpointMismatchError(
        f"{source}: tensor {names.get(extra[0], prefix + extra[0])!r} is not part of a T5 v1.1 "
        "text tower of this config")


def _layer_count(flat: Mapping[str, Any], stack: str) -> int:
  found = {int(m.group(1)) for k in flat
           if (m := re.match(rf"{stack}/layers_(\d+)/", k))}
  if found != set(range(len(found))):
    raise CheckpointMismatchError(f"{stack} layers are not numbered 0..n-1: {sorted(found)}")
  return len(found)


def infer_sizes(params: Mapping[str, Any], source: str, max_distance: int = 128,
                prefix: str = "") -> tuple[dict[str, int], int]:
  """(T5 sizes, vocab size) read off the shapes of a text tower in dynpt's names.

  Formats without a config (T5X checkpoints, dynpt exports) carry every size in their
  shapes except the relative attention's max distance, which is passed in (128 in
  every T5 v1.1 release).
  """
  flat = traverse_util.flatten_dict(dict(params), sep="/")

  def shape(path: str) -> tuple[int, ...]:
    if path not in flat:
      raise CheckpointMismatchError(f"{source}: tensor {prefix + path!r} is missing (not a T5 v1.1 "
                                    "text tower)")
    return tuple(np.shape(flat[path]))

  vocab_size, emb_dim = shape("token_embedder/embedding")
  num_heads, num_buckets = shape("encoder/relpos_bias/rel_embedding")
  joined = shape("encoder/layers_0/attention/query/kernel")[1]
  if joined % num_heads:
    raise CheckpointMismatchError(
        f"{source}: {prefix}encoder/layers_0/attention/query/kernel width {joined} is not "
        f"a multiple of the {num_heads} heads of {prefix}encoder/relpos_bias/rel_embedding")
  sizes = dict(emb_dim=emb_dim, num_heads=num_heads, head_dim=joined // num_heads,
               mlp_dim=shape("encoder/layers_0/mlp/wi_0/kernel")[1],
               num_encoder_layers=_layer_count(flat, "encoder"),
               num_decoder_layers=_layer_count(flat, "decoder"),
               relative_attention_num_buckets=num_buckets,
               relative_attention_max_distance=int(max_distance))
  return sizes, vocab_size


def named_size(sizes: Mapping[str, int]) -> str | None:
  """The named model size whose T5 has exactly these sizes, if any."""
  for name in configs.MODEL_NAMES:
    if t5_sizes(configs.get_config(name).t5) == dict(sizes):
      return name
  return None


def as_float32(params: Any) -> Any:
  """The tree with float32 numpy leaves (bfloat16 checkpoints are widened exactly)."""
  return jax.tree.map(lambda x: np.asarray(x, np.float32), params)


def text_tower_of(params: Mapping[str, Any], source: str) -> dict[str, Any]:
  """The {token_embedder, encoder, decoder} part of a full dynpt param tree."""
  missing = [k for k in TEXT_TOWER_KEYS if k not in params]
  if missing:
    raise CheckpointMismatchError(f"{source}: params have no {missing} (top-level keys: "
                                  f"{sorted(params)})")
  return {k: params[k] for k in TEXT_TOWER_KEYS}

