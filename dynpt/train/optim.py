"""The optimizer and learning-rate schedule of the paper, built from optax.

Paper (appendix): Adam with weight decay 0.1, lr 1e-4, 10k linear warm-up then
cosine decay, gradient-norm clipping at 1.0.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import jax
import optax

from dynpt.train.config import Open


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Hyper-parameters of AdamW + warm-up/cosine (bound from gin)."""
  RANGES = {  # `dynpt.train.config.check_fields`: field -> (low, high).
      "learning_rate": (Open(0.0), None), "warmup_steps": (0, None),
      "total_steps": (0, None), "end_learning_rate_factor": (0.0, None),
      "weight_decay": (0.0, None), "b1": (0.0, Open(1.0)),
      "b2": (0.0, Open(1.0)), "eps": (Open(0.0), None),
      "grad_clip_norm": (0.0, None)}
  learning_rate: float = 1e-4
  warmup_steps: int = 10_000
  total_steps: int = 500_000
  end_learning_rate_factor: float = 0.0
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  grad_clip_norm: float = 1.0
  # Decay only matrices/kernels/embeddings, not norm scales (common practice;
  # set False to decay everything, as a literal reading of the paper would).
  decay_only_matrices: bool = True


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  """Linear warm-up from 0 to `learning_rate`, then cosine decay."""
  warmup = min(cfg.warmup_steps, max(cfg.total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
      decay_steps=max(cfg.total_steps, warmup + 1),
      end_value=cfg.learning_rate * cfg.end_learning_rate_factor)


def _decay_mask(params):
  return jax.tree.map(lambda p: getattr(p, "ndim", 0) > 1, params)


def param_path(path) -> str:
  """'encoder/layers_0/mlp/wi_0/kernel' for a jax key path (boxes skipped)."""
  parts = []
  for k in path:
    name = getattr(k, "key", None)
    if name is None:
      name = getattr(k, "name", None)
    if name is None or name == "value":
      continue
    parts.append(str(name))
  return "/".join(parts)


def frozen_labels(params, frozen_patterns: Sequence[str]):
  """'frozen' for params whose path matches any regex (re.search), else 'train'."""
  compiled = [re.compile(p) for p in frozen_patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if any(c.search(param_path(path)) for c in compiled)
      else "train", params)


def make_optimizer(cfg: OptimizerConfig, frozen_patterns: Sequence[str] = ()
                   ) -> optax.GradientTransformation:
  """AdamW with global-norm clipping and the warm-up/cosine schedule.

  Args:
    cfg: hyper-parameters.
    frozen_patterns: regexes over slash-separated param paths (e.g.
      `^encoder/`, `^resnet/`); matching params get zero updates and no
      optimizer state (the frozen-base transfer study of "Are we
      pretraining it right?").
  """
  if cfg.learning_rate <= 0 or cfg.weight_decay < 0:
    raise ValueError(f"bad optimizer config {cfg}: learning_rate must be > 0 "
                     "and weight_decay >= 0")
  parts = []
  if cfg.grad_clip_norm and cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  parts.append(optax.adamw(
      learning_rate=learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2,
      eps=cfg.eps, weight_decay=cfg.weight_decay,
      mask=_decay_mask if cfg.decay_only_matrices else None))
  tx = optax.chain(*parts)
  if not frozen_patterns:
    return tx
  for p in frozen_patterns:
    try:
      re.compile(p)
    except re.error as e:
      raise ValueError(f"bad frozen parameter pattern {p!r}: {e}") from e
  return optax.multi_transform(
      {"train": tx, "frozen": optax.set_to_zero()},
      lambda params: frozen_labels(params, frozen_patterns))
