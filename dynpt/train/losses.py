"""Token cross-entropy with label smoothing, and its per-task reduction.

Pure jnp functions, so the train step stays one jitted function and the math
is testable against numpy. Per-task numbers are segment sums over the batch's
`task_id` feature: under jit over a sharded batch they are global sums, hence
identical on every host, which is what the mixer needs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOSS_NORMALIZATIONS = ("tokens", "task_mean")


def cross_entropy(logits: jax.Array, targets: jax.Array,
                  label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Per-token smoothed and unsmoothed cross-entropy.

  The smoothed loss subtracts the entropy of the smoothed target distribution
  (as t5x does), so a perfect prediction of the smoothed targets scores 0.

  Args:
    logits: [batch, length, vocab] float.
    targets: [batch, length] int.
    label_smoothing: mass spread uniformly over the vocabulary.

  Returns:
    (smoothed, unsmoothed), each [batch, length] float32.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if not label_smoothing:
    return nll, nll
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  normalizer = -(confidence * jnp.log(confidence) +
                 (vocab - 1) * low * jnp.log(low + 1e-20))
  smooth = -jnp.mean(log_probs, axis=-1) * vocab * low  # Spread part.
  # Soft targets: confidence on the target, `low` on every other class.
  smoothed = confidence * nll + smooth - low * nll - normalizer
  return smoothed, nll


def per_task_sums(token_values: jax.Array, weights: jax.Array,
                  task_id: jax.Array, num_tasks: int
                  ) -> tuple[jax.Array, jax.Array]:
  """Sums `token_values * weights` and `weights` per task.

  Args:
    token_values: [batch, length] float.
    weights: [batch, length] float (0 on padding).
    task_id: [batch] int in [0, num_tasks).
    num_tasks: static number of tasks.

  Returns:
    (value_sums, token_counts), each [num_tasks] float32.
  """
  per_example = jnp.sum(token_values * weights, axis=-1)
  per_example_tokens = jnp.sum(weights, axis=-1)
  sums = jax.ops.segment_sum(per_example, task_id, num_segments=num_tasks)
  counts = jax.ops.segment_sum(per_example_tokens, task_id,
                               num_segments=num_tasks)
  return sums, counts


def mixture_loss(smoothed: jax.Array, weights: jax.Array, task_id: jax.Array,
                 task_loss_weights: jax.Array, normalization: str = "tokens"
                 ) -> jax.Array:
  """The scalar training loss of a multi-task batch.

  Args:
    smoothed: [batch, length] per-token (smoothed) loss.
    weights: [batch, length] token weights (0 on padding).
    task_id: [batch] int.
    task_loss_weights: [num_tasks] float; all ones except under loss
      re-weighting. An input of the step, so changing it never recompiles.
    normalization: `tokens` — divide by all target tokens of the batch, so a
      task's gradient share follows its sample count (which the sampler
      controls); `task_mean` — the paper's literal L_M = sum over tasks of
      each task's mean token loss.
  """
  if normalization not in LOSS_NORMALIZATIONS:
    raise ValueError(f"unknown loss normalization {normalization!r}; known: "
                     f"{LOSS_NORMALIZATIONS}")
  example_w = task_loss_weights[task_id][:, None]  # [batch, 1]
  if normalization == "tokens":
    return jnp.sum(smoothed * weights * example_w) / jnp.maximum(
        jnp.sum(weights), 1.0)
  num_tasks = task_loss_weights.shape[0]
  sums, counts = per_task_sums(smoothed, weights, task_id, num_tasks)
  present = counts > 0
  means = jnp.where(present, sums / jnp.maximum(counts, 1.0), 0.0)
  return jnp.sum(means * task_loss_weights)
