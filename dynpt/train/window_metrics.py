"""How each logged training metric is reduced over its log window (clu metrics).

`hooks.LoggingHook` writes the metrics every `log_every` steps. The window's
steps are merged as clu `Metric`s, as t5x merges its metrics, so each logged
value names its reduction here rather than in the hook's arithmetic:

  train/loss            `Average` of the step losses (the window's mean)
  train/grad_norm       `LastValue`: the window's last step
  train/learning_rate   `LastValue`: the window's last step
  train/task/<t>/loss   `TaskMean`: the task's summed token cross-entropy over
                        its summed target tokens (steps weighted by tokens)
  train/task/<t>/share  `LastValue`: the share of the window's last batch

Each step's metrics are merged on the host, from the values the loop already
fetched, in float64, so a window's mean does not depend on the rounding of a
float32 sum.

No `from __future__ import annotations` here: `clu.metrics.Collection` reads
its metric classes from the class annotations at run time.
"""

from typing import Any, Mapping

import flax
import numpy as np
from clu import metrics as clu_metrics


def _of_step_value(metric_cls: type, name: str) -> type:
  """`metric_cls` (`Average` or `LastValue`) of the host value `name` of a step
  (clu's `Metric.from_output`, without its copy to the device)."""

  @flax.struct.dataclass
  class OfStepValue(metric_cls):

    @classmethod
    def from_model_output(cls, **step: Any):
      return cls(total=np.asarray(step[name], np.float64), count=np.int64(1))

  return OfStepValue


@flax.struct.dataclass
class TaskMean(clu_metrics.Metric):
  """[tasks] mean token cross-entropy over the window: summed CE / summed tokens.

  NaN for a task without target tokens in the window (it has no loss to log).
  """
  total: np.ndarray  # [tasks] summed unsmoothed token cross-entropy.
  tokens: np.ndarray  # [tasks] summed target tokens.

  @classmethod
  def from_model_output(cls, task_loss_sum, task_tokens, **_) -> "TaskMean":
    return cls(total=np.asarray(task_loss_sum, np.float64),
               tokens=np.asarray(task_tokens, np.float64))

  def merge(self, other: "TaskMean") -> "TaskMean":
    return type(self)(total=self.total + other.total, tokens=self.tokens + other.tokens)

  def compute(self) -> np.ndarray:
    mean = self.total / np.maximum(self.tokens, 1)
    return np.where(self.tokens > 0, mean, np.nan)


@flax.struct.dataclass
class WindowMetrics(clu_metrics.Collection):
  """The metrics of a log window, one clu metric each (see the module doc)."""
  loss: _of_step_value(clu_metrics.Average, "loss")
  grad_norm: _of_step_value(clu_metrics.LastValue, "grad_norm")
  learning_rate: _of_step_value(clu_metrics.LastValue, "learning_rate")
  task_loss: TaskMean
  share: _of_step_value(clu_metrics.LastValue, "share")

  @classmethod
  def from_step(cls, metrics: Mapping[str, Any], shares: np.ndarray) -> "WindowMetrics":
    """A window of one step: its fetched metrics and its batch's task shares.

    Args:
      metrics: the step's metrics on the host (`step.train_step`'s, as numpy).
      shares: [tasks] the target shares of the step's batch.
    """
    step = dict(metrics)
    step.setdefault("learning_rate", 0.0)  # A step without a schedule.
    return cls.single_from_model_output(share=shares, **step)
