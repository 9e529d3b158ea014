"""What the step loop does besides stepping: logs, history, checkpoints, eval.

Each hook is a small object the loop (`dynpt.train.loop.run`) calls at a fixed
point, so the loop itself stays a few lines:

- `StepResult` is one dispatched step: its number, the `Draw` its batch was
  assembled from and its metrics, read from the device once (`host()`), which
  is where a non-finite loss stops the run;
- `LoggingHook` and `HistoryHook` take in every finished step, in order
  (`after_step`);
- `CheckpointHook` saves when due; `EvalHook` evaluates every N steps and at
  the end. Both run after the step's metrics were taken in, with every
  process at the same step (both may be collective).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils

from dynpt import console, fs
from dynpt.mixing import history as history_lib
from dynpt.train import checkpoints, events
from dynpt.train.config import TrainConfig
from dynpt.train.feedback import Draw, MixtureFeedback, task_losses
from dynpt.train.window_metrics import WindowMetrics


class TrainingDivergedError(RuntimeError):
  """The loss or the state became NaN/inf; the message names the step kept.

  Checkpoints never hold non-finite values (`Checkpointer.save` refuses
  them), so the newest checkpoint is the last good one.
  """


@dataclasses.dataclass
class StepResult:
  """One dispatched step; `host()` waits for it and reads its metrics once."""
  step: int
  draw: Draw
  metrics: Any  # The step's metrics, on the device until `host()`.
  _host: dict | None = None

  def host(self) -> dict:
    """The metrics as numpy; raises `TrainingDivergedError` on a non-finite loss."""
    if self._host is None:
      self._host = jax.device_get(self.metrics)
      loss = float(self._host["loss"])
      if not np.isfinite(loss):
        raise TrainingDivergedError(f"loss is {loss} at step {self.step}; stopping")
    return self._host

  def task_loss(self) -> np.ndarray:
    """[tasks] mean token cross-entropy per task (NaN where a task had no tokens)."""
    m = self.host()
    return task_losses(m["task_loss_sum"], m["task_tokens"])


class LoggingHook:
  """Reduces step metrics over `log_every` steps into the clu writer; counts throughput.

  Each metric is reduced over the window as `window_metrics.WindowMetrics`
  says (the loss averaged, the gradient norm the last step's, ...). Metrics
  are written at the number of steps done (step s -> s + 1), as
  `events.truncate_after` expects when a run resumes. The writer gets every
  metric (per-task losses, shares, skipped records: TensorBoard); the
  console gets one line per log step (`console_line`) from the chief.
  """

  def __init__(self, writer, task_names, train_cfg: TrainConfig,
               skip_counts: Callable[[], dict[str, int]] | None = None,
               mirror: fs.LocalMirror | None = None):
    self.writer = writer
    self.mirror = mirror  # Where the event files are written, when not in the run dir.
    self.task_names = list(task_names)
    self.cfg = train_cfg
    self.skip_counts = skip_counts  # () -> {task: records skipped so far}.
    self.final_task_loss: dict[str, float] = {}
    self.examples = 0
    self._window: WindowMetrics | None = None  # The steps since the last write.
    self._last_time = time.time()
    # When the first step's metrics arrived, and the examples up to then: the first
    # step includes compilation, so throughput after it is the steady rate.
    self._first_done: tuple[float, int] | None = None
    self._first_step: tuple[float, int] | None = None  # (time, steps done) then.
    self.final_loss: float | None = None

  @classmethod
  def create(cls, run_dir: str, start_step: int, task_names, train_cfg: TrainConfig,
             skip_counts=None) -> LoggingHook:
    """A hook writing to `<run_dir>/tensorboard` (the chief) or nowhere.

    The chief first drops the summaries a killed attempt wrote after
    `start_step`, so a resumed run's TensorBoard has each step once. For a
    run directory in a bucket the events are written to a local copy
    (TensorFlow's GCS client cannot be pointed elsewhere than Google, and
    objects cannot be appended to) and uploaded through `dynpt.fs` by
    `sync` (at each checkpoint) and `close`.
    """
    log_dir = fs.join(run_dir, "tensorboard")
    mirror = None
    if jax.process_index() == 0:
      mirror = fs.LocalMirror(log_dir)
      log_dir = mirror.local
      events.truncate_after(log_dir, start_step)
    if mirror is None:  # The chief writes the events and the console lines.
      writer = metric_writers.MultiWriter([])
    else:
      writer = metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(log_dir)])
    return cls(writer, task_names, train_cfg, skip_counts, mirror)

  def after_step(self, result: StepResult) -> None:
    m = result.host()
    self.examples += int(result.draw.counts.sum())
    if self._first_done is None:
      self._first_done = (time.time(), self.examples)
      self._first_step = (time.time(), result.step + 1)
    step = WindowMetrics.from_step(m, result.draw.shares)
    self._window = step if self._window is None else self._window.merge(step)
    done = result.step + 1
    if done % self.cfg.log_every == 0 or done == self.cfg.num_steps:
      self._write(done)

  def _write(self, done: int) -> None:
    now = time.time()
    steps = int(self._window.loss.count)  # Steps merged into the window.
    window = self._window.compute()
    shares = window["share"]
    dt = max(now - self._last_time, 1e-9)
    scalars = {
        "train/loss": float(window["loss"]),
        "train/grad_norm": float(window["grad_norm"]),
        "train/learning_rate": float(window["learning_rate"]),
        "train/steps_per_s": steps / dt,
        "train/examples_per_s": steps * self.cfg.global_batch_size / dt,
        "train/step_time_ms": 1000 * dt / max(steps, 1),
    }
    for i, name in enumerate(self.task_names):
      if not np.isnan(window["task_loss"][i]):  # NaN: no tokens in the window.
        scalars[f"train/task/{name}/loss"] = float(window["task_loss"][i])
        self.final_task_loss[name] = float(window["task_loss"][i])
      scalars[f"train/task/{name}/share"] = float(shares[i])
    if self.skip_counts is not None:
      for name, count in self.skip_counts().items():
        scalars[f"train/task/{name}/skipped_records"] = float(count)
    self.writer.write_scalars(done, scalars)
    self.final_loss = scalars["train/loss"]
    if jax.process_index() == 0:
      rate, first_s = scalars["train/examples_per_s"], None
      if self._first_step is not None and done - steps < self._first_step[1]:
        # The window holds the run's first step, which compiles: rate the others.
        first_s = self._first_step[0] - self._last_time
        later = done - self._first_step[1]
        rate = (later * self.cfg.global_batch_size / max(now - self._first_step[0], 1e-9)
                if later else None)
      logging.info("%s", self.console_line(done, scalars["train/loss"], rate, shares, now,
                                           first_step_s=first_s))
    self._last_time = now
    self._window = None

  def console_line(self, done: int, loss: float, examples_per_s: float | None,
                   shares: np.ndarray, now: float, first_step_s: float | None = None) -> str:
    """`step 20/300: loss 5.1234, 96.1 examples/s, ETA 4m10s; largest share ...`.

    The ETA uses the rate since the first step (which compiles), once there is one;
    `first_step_s` is that step's time, for the line whose steps include it.
    """
    total = self.cfg.num_steps
    eta = ""
    if done < total and self._first_step is not None and done > self._first_step[1]:
      per_step = (now - self._first_step[0]) / (done - self._first_step[1])
      eta = f", ETA {console.format_seconds(per_step * (total - done))}"
    shares = np.asarray(shares, np.float64)
    if len(shares) > 1 and np.ptp(shares) > 1e-6:
      hi, lo = int(np.argmax(shares)), int(np.argmin(shares))
      mix = (f"largest share {self.task_names[hi]} {shares[hi]:.3f}, "
             f"smallest {self.task_names[lo]} {shares[lo]:.3f}")
    else:
      mix = f"{len(shares)} tasks, {shares[0] if len(shares) else 0:.3f} each"
    speed = [f"{examples_per_s:.1f} examples/s"] if examples_per_s is not None else []
    if first_step_s is not None:
      speed.append(f"first step {console.format_seconds(first_step_s)} (compiling)")
    return f"step {done}/{total}: loss {loss:.4f}, {', '.join(speed)}{eta}; {mix}"

  def write_scalars(self, done: int, scalars: dict[str, float]) -> None:
    """Writes other scalars (an evaluation's) at `done` steps; the console gets
    the score and each task's first metric."""
    self.writer.write_scalars(done, scalars)
    if jax.process_index() == 0 and "eval/score" in scalars:
      first: dict[str, float] = {}
      for key, value in scalars.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[2] != "num_examples":
          first.setdefault(parts[1], value)
      tasks = ", ".join(f"{t} {v:.2f}" for t, v in first.items())
      line = f"eval after step {done}: score {scalars['eval/score']:.2f} ({tasks})"
      logging.info("%s", line if len(line) <= 250 else line[:246] + " ...)")

  def summary(self, start: int, end: int, elapsed: float) -> dict:
    """Totals of the run; `steady_examples_per_s` leaves out the first step (compile,
    pipeline start-up) and is None when the run trained fewer than 2 steps."""
    steady = None
    if self._first_done is not None and self.examples > self._first_done[1]:
      seconds = max(time.time() - self._first_done[0], 1e-9)
      steady = round((self.examples - self._first_done[1]) / seconds, 2)
    return {"start_step": start, "end_step": end,
            "seconds": round(elapsed, 2),
            "examples_per_s": round(self.examples / max(elapsed, 1e-9), 2),
            "steady_examples_per_s": steady,
            "final_loss": self.final_loss,
            "final_task_loss": self.final_task_loss}

  def sync(self) -> None:
    """Uploads the event files when the run directory is a bucket."""
    if self.mirror is not None and self.mirror.remote:
      self.writer.flush()
      self.mirror.push()

  def close(self) -> None:
    self.writer.flush()
    if self.mirror is not None and self.mirror.remote:
      self.writer.close()  # Its files are uploaded, then the local copy goes.
      self.mirror.close()


class HistoryHook:
  """One history line (`dynpt.mixing.history`) every `history_every` steps (chief only)."""

  def __init__(self, run_dir: str, start_step: int, task_names, every: int):
    self.every = every
    self.history = history_lib.MixtureHistory(history_lib.history_path(run_dir),
                                              task_names, enabled=jax.process_index() == 0)
    self.history.truncate_after(start_step)  # A killed attempt's lines after it go.

  def after_step(self, result: StepResult) -> None:
    if result.step % self.every == 0:
      self.history.write(result.step, result.draw.shares, result.draw.counts,
                         result.task_loss())

  def sync(self) -> None:
    """Uploads the history when the run directory is a bucket."""
    self.history.sync()

  def close(self) -> None:
    self.history.close()


def global_positions(task_names, local: dict) -> dict:
  """{task: [position per logical data shard]}, identical on every host.

  Collective where there are several processes.

  Args:
    task_names: the mixture's tasks, in order.
    local: this process's `MixtureInput.state()`.
  """
  positions = np.asarray([local[t] for t in task_names],
                         np.int64)  # [tasks, shards of this process]
  if jax.process_count() > 1:
    # [processes, tasks, shards per process]; process p holds the shards
    # [p*S/P, (p+1)*S/P), so concatenating over processes orders them.
    gathered = np.asarray(multihost_utils.process_allgather(positions))
  else:
    gathered = positions[None]
  return {t: [int(p) for p in gathered[:, i].reshape(-1)]
          for i, t in enumerate(task_names)}


class CheckpointHook:
  """Saves (state, mixture feedback, data positions) every `checkpoint_every` steps,
  at the last step and when the run stops early; never a non-finite state."""

  def __init__(self, checkpointer: checkpoints.Checkpointer, task_names, last_step: int):
    self.checkpointer = checkpointer
    self.task_names = list(task_names)
    self.last_step = last_step

  def due(self, done: int, stop: bool) -> bool:
    return stop or self.checkpointer.should_save(done, self.last_step)

  def save(self, done: int, state, feedback: MixtureFeedback, positions: dict) -> None:
    """Saves the state after `done` steps; `positions` are this process's data
    positions after the batch of step `done` - 1 (collective)."""
    self.checkpointer.save(done, state, feedback.state_dict(),
                           global_positions(self.task_names, positions))

  def kept_message(self) -> str:
    """Which checkpoint a diverged run leaves, for its error message."""
    self.checkpointer.wait()
    kept = self.checkpointer.latest_step()
    if kept is None:
      return f"No checkpoint was written in {self.checkpointer.directory}."
    return (f"The newest checkpoint, step {kept} in {self.checkpointer.directory}, "
            "holds finite values; a restart resumes from it and diverges again unless "
            "the config changes (e.g. a lower LEARNING_RATE).")


class EvalHook:
  """Calls `evaluate(done, params) -> {name: value}` every `every` steps and when
  the run stops; the results go to the metric writer.

  Args:
    evaluate: the evaluation, e.g. finetuning's decode-and-score of each task.
    every: steps between evaluations (0: only when the run stops).
  """

  def __init__(self, evaluate: Callable[[int, Any], dict[str, float]], every: int):
    self.evaluate = evaluate
    self.every = every

  def due(self, done: int, stop: bool) -> bool:
    return stop or (self.every > 0 and done % self.every == 0)

  def run(self, done: int, params, logger: LoggingHook) -> None:
    logger.write_scalars(done, self.evaluate(done, params))
