"""The train and eval steps: pure functions of (state, batch, weights).

`train_step` is the one function the loop jits. It depends on the mixture
only through the batch's `task_id` feature and the `task_loss_weights` input,
so a new mixture never triggers recompilation.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from dynpt.models import vl_model
from dynpt.train import losses
from dynpt.train.state import TrainState

MODEL_INPUTS = ("image", "encoder_input_tokens", "decoder_input_tokens")


def _forward(model, params, batch, rng, train: bool):
  image = vl_model.normalize_image(batch["image"])
  rngs = {"dropout": rng} if train else {}
  return model.apply({"params": params}, image, batch["encoder_input_tokens"],
                     batch["decoder_input_tokens"], enable_dropout=train,
                     rngs=rngs)


def token_losses(logits, batch, label_smoothing: float
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(smoothed CE, unsmoothed CE, loss weights), each [B, L_tgt] per target token.

  The smoothed one is what the training loss reduces (`losses.mixture_loss`);
  the unsmoothed one is what the per-task metrics report.
  """
  weights = batch["decoder_loss_weights"].astype(jnp.float32)
  smoothed, nll = losses.cross_entropy(logits, batch["decoder_target_tokens"],
                                       label_smoothing)
  return smoothed, nll, weights


def task_metrics(logits, batch, nll, weights, num_tasks: int) -> dict[str, jax.Array]:
  """[num_tasks] sums over the batch: `task_loss_sum` (of `nll`), `task_tokens`,
  `task_correct` (target tokens whose logit is the largest)."""
  targets = batch["decoder_target_tokens"]
  task_sum, task_tokens = losses.per_task_sums(nll, weights, batch["task_id"],
                                               num_tasks)
  # Token accuracy: the target's logit is the largest (ties count as correct). Cheaper
  # than argmax, whose (value, index) reduction over the vocabulary is a slower one.
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  correct = (target_logit >= jnp.max(logits, axis=-1)).astype(jnp.float32)
  task_correct, _ = losses.per_task_sums(correct, weights, batch["task_id"],
                                         num_tasks)
  return {"task_loss_sum": task_sum, "task_tokens": task_tokens,
          "task_correct": task_correct}


def train_step(state: TrainState, batch: dict[str, jax.Array],
               task_loss_weights: jax.Array, *, model: Any, num_tasks: int,
               label_smoothing: float = 0.1, loss_normalization: str = "tokens",
               learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a task-ordered multi-task batch.

  Args:
    state: the train state (donated by the loop).
    batch: model features (see docs/architecture.md), incl. `task_id` [B].
    task_loss_weights: [num_tasks] float, ones unless loss re-weighting.
    model: the Flax `VLModel` (static).
    num_tasks: length of the mixture's task list (static).
    label_smoothing: for the training loss only; reported per-task losses
      are unsmoothed token cross-entropy.
    loss_normalization: see `losses.mixture_loss`.
    learning_rate_fn: the schedule, to report the current rate.

  Returns:
    (new state, metrics): `loss`, `task_loss_sum` [T], `task_tokens` [T],
    `task_correct` [T], `grad_norm`, `param_norm`, `learning_rate`.
  """
  rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    logits = _forward(model, params, batch, rng, train=True)
    smoothed, nll, weights = token_losses(logits, batch, label_smoothing)
    m = task_metrics(logits, batch, nll, weights, num_tasks)
    loss = losses.mixture_loss(smoothed, weights, batch["task_id"],
                               task_loss_weights, loss_normalization)
    return loss, m

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  new_state = state.apply_gradients(grads)
  metrics["loss"] = loss
  metrics["grad_norm"] = optax.global_norm(grads)
  metrics["param_norm"] = optax.global_norm(new_state.params)
  if learning_rate_fn is not None:
    metrics["learning_rate"] = learning_rate_fn(state.step)
  return new_state, metrics


def eval_step(params: Any, batch: dict[str, jax.Array], *, model: Any,
              num_tasks: int) -> dict[str, jax.Array]:
  """Per-task teacher-forced CE sums, token counts and token accuracy."""
  logits = _forward(model, params, batch, None, train=False)
  _, nll, weights = token_losses(logits, batch, 0.0)
  return task_metrics(logits, batch, nll, weights, num_tasks)
