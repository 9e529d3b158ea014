"""Does a model look at the image? Answer accuracy with true and with shuffled images.

A task whose answer follows from the image (ITM, "does X exist?") can still be
learned to a low loss from the text alone when the text carries a prior (a
caption's style, a label's base rate). Comparing the teacher-forced answer
accuracy on the true images with the accuracy on the same examples whose
images were rolled by one position within the batch (each text meets another
record's image) separates the two: a grounded model drops to chance on
shuffled images, a text-only model does not notice.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dynpt.models import vl_model
from dynpt.train import checkpoints, model_setup
from dynpt.train.config import DataConfig, ModelConfig, TrainConfig


def _sequence_scores(model, params, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
  """[B] exact-match flags, [B] summed target cross-entropy and [B] target token counts.

  Exact match: the teacher-forced argmax gets every target token right.
  """
  logits = model.apply({"params": params}, vl_model.normalize_image(batch["image"]),
                       batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                       enable_dropout=False)
  targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
  right = (jnp.argmax(logits, axis=-1) == targets) | (weights == 0)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  weights = weights.astype(jnp.float32)
  return (jnp.all(right, axis=-1).astype(jnp.float32), jnp.sum(nll * weights, axis=-1),
          jnp.sum(weights, axis=-1))


def answer_accuracy(task_names: tuple[str, ...] | list[str], params: Any,
                    run_model: model_setup.RunModel, *, split: str = "validation",
                    examples: int = 128, batch_size: int = 64) -> dict[str, dict[str, float]]:
  """Per task: exact answer accuracy and token loss with true and with shuffled images.

  Args:
    task_names: registered tasks to probe (any kind; yes/no tasks are the telling ones).
    params: model params (e.g. `checkpoints.restore_params(run_dir)[0]`).
    run_model: the run's model, mesh and rules (`model_setup.build_run_model`): the
      params are placed and the scores traced as the run's train step, so a model
      that needs fsdp to train is probed under fsdp.
    split: the split to read; pretraining sources have `validation`.
    examples: examples per task, read in order from the split's start.
    batch_size: examples per forward pass; the image shuffle is within a batch (so a
      last batch of one example keeps its own image: choose `examples` to avoid it).

  Returns:
    {task: {'true': acc, 'shuffled': acc, 'gap': true - shuffled, 'loss_true': ce,
    'loss_shuffled': ce, 'examples': n}}: accuracies are exact-match fractions, losses
    the mean target-token cross-entropy (the image helps where loss_true < loss_shuffled).
  """
  model = run_model.model
  score_fn = run_model.jit(lambda p, b: _sequence_scores(model, p, b))
  params = run_model.place(params)
  out = {}
  for task_id, name in enumerate(task_names):
    it = run_model.eval_iterator(name, task_id=task_id, split=split)
    sums = np.zeros((2, 3))  # [true | shuffled images, (correct, nll, tokens)]
    seen = 0
    while seen < examples:
      n = min(batch_size, examples - seen)
      batch = it.take(n)
      shuffled = dict(batch, image=np.roll(batch["image"], 1, axis=0))
      for row, b in enumerate((batch, shuffled)):
        sums[row] += [float(jnp.sum(x)) for x in score_fn(params, b)]
      seen += n
    out[name] = {"true": sums[0, 0] / seen, "shuffled": sums[1, 0] / seen,
                 "gap": (sums[0, 0] - sums[1, 0]) / seen,
                 "loss_true": sums[0, 1] / max(sums[0, 2], 1.0),
                 "loss_shuffled": sums[1, 1] / max(sums[1, 2], 1.0), "examples": seen}
  return out


def run_answer_accuracy(run_dir: str, task_names, *, model_cfg: ModelConfig,
                        data_cfg: DataConfig, train_cfg: TrainConfig | None = None,
                        **kwargs) -> dict[str, dict[str, float]]:
  """`answer_accuracy` for the latest checkpoint of a run directory."""
  run_model = model_setup.build_run_model(model_cfg, data_cfg, train_cfg)
  params, _ = checkpoints.restore_params(run_dir, None)
  return answer_accuracy(task_names, params, run_model, **kwargs)
