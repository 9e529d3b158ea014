"""The log window's reductions (clu metrics) and the scalars `LoggingHook` writes."""
import numpy as np

from dynpt.train import feedback, hooks
from dynpt.train.config import TrainConfig
from dynpt.train.window_metrics import WindowMetrics

TASKS = ["a", "b", "c"]
# Three steps: task c has no tokens in any, task b none in the second.
STEPS = [
    {"loss": np.float32(3.5), "grad_norm": np.float32(2.0),
     "learning_rate": np.float32(1e-3), "task_loss_sum": np.array([6.0, 4.0, 0.0]),
     "task_tokens": np.array([3.0, 2.0, 0.0]), "param_norm": np.float32(9.0)},
    {"loss": np.float32(2.25), "grad_norm": np.float32(1.5),
     "learning_rate": np.float32(2e-3), "task_loss_sum": np.array([1.0, 0.0, 0.0]),
     "task_tokens": np.array([1.0, 0.0, 0.0]), "param_norm": np.float32(9.0)},
    {"loss": np.float32(1.0), "grad_norm": np.float32(0.5),
     "learning_rate": np.float32(3e-3), "task_loss_sum": np.array([2.0, 9.0, 0.0]),
     "task_tokens": np.array([4.0, 3.0, 0.0]), "param_norm": np.float32(9.0)},
]
SHARES = [np.array([0.5, 0.25, 0.25]), np.array([0.4, 0.4, 0.2]),
          np.array([0.2, 0.3, 0.5])]


def test_each_metric_is_reduced_as_it_declares():
  window = None
  for m, shares in zip(STEPS, SHARES):
    step = WindowMetrics.from_step(m, shares)
    window = step if window is None else window.merge(step)
  got = window.compute()
  assert got["loss"] == (3.5 + 2.25 + 1.0) / 3  # Average: the window's mean.
  assert got["grad_norm"] == 0.5 and got["learning_rate"] == np.float32(3e-3)  # LastValue.
  np.testing.assert_array_equal(got["share"], SHARES[-1])
  # TaskMean: summed CE over summed tokens, NaN for a task without tokens.
  np.testing.assert_allclose(got["task_loss"][:2], [9.0 / 8.0, 13.0 / 5.0])
  assert np.isnan(got["task_loss"][2])
  assert int(window.loss.count) == 3


def test_logging_hook_writes_each_window_with_the_same_keys():
  written = []

  class Writer:

    def write_scalars(self, step, scalars):
      written.append((step, scalars))

  cfg = TrainConfig(log_every=2, num_steps=3, global_batch_size=4, progress_bar=False)
  hook = hooks.LoggingHook(Writer(), TASKS, cfg)
  for s, (m, shares) in enumerate(zip(STEPS, SHARES)):
    draw = feedback.Draw(s, np.array([2, 1, 1]), shares, np.ones(3, np.float32))
    hook.after_step(hooks.StepResult(s, draw, m))
  assert [step for step, _ in written] == [2, 3]  # Every log_every steps and the last.
  first, last = written[0][1], written[1][1]
  timing = {"train/steps_per_s", "train/examples_per_s", "train/step_time_ms"}
  assert set(first) == {"train/loss", "train/grad_norm", "train/learning_rate",
                        "train/task/a/loss", "train/task/b/loss"} | timing | {
                            f"train/task/{t}/share" for t in TASKS}
  assert first["train/loss"] == (3.5 + 2.25) / 2 and first["train/grad_norm"] == 1.5
  assert first["train/task/a/loss"] == 7.0 / 4.0 and first["train/task/b/loss"] == 2.0
  assert first["train/task/c/share"] == 0.2
  # The second window holds the last step alone.
  assert last["train/loss"] == 1.0 and last["train/task/b/loss"] == 3.0
  assert hook.final_loss == 1.0
  assert hook.final_task_loss == {"a": 0.5, "b": 3.0}
