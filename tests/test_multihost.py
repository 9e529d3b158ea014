"""Multi-process pretraining on 127.0.0.1: 2 processes x 2 CPU devices (gloo).

Three runs of the toy config (tiny model, 32 px, 3 tasks, batch 8), all with 2
logical data shards, so every run puts the same examples in the same rows:

  reference  1 process x 4 devices, steps 0-4, checkpoints at 3 and 5;
  two_proc   2 processes x 2 devices, steps 0-2, checkpoint at 3;
  elastic    1 process x 2 devices resuming `two_proc` to step 5 (N=2 -> M=1),
             the shard count taken from the checkpoint.

The multi-process and resumed runs must reproduce the reference: the same
mixture counts, per-task losses to 1e-5 relative, and the same params.

A fourth run (2 processes x 2 devices) gets SIGTERM on process 1 only: both
processes must save the same step, exit with 75, and a resumed run continue.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = "cc3m_cap,ln_mlm,vg_exists"
TOTAL_STEPS = 5
SPLIT_STEP = 3
TIMEOUT_S = 420  # per launch; an idle 2-core machine needs well under a minute


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _args(run_dir, data_dir, steps, data_shards=2):
  args = ["--gin_file=pretrain/toy_cpu.gin", f"--gin.RUN_DIR='{run_dir}'",
          f"--gin.DATA_DIR='{data_dir}'", f"--gin.MIXTURE='{TASKS}'",
          f"--gin.NUM_STEPS={steps}", "--gin.BATCH_SIZE=8",
          "--gin.IMAGE_SIZE=32", "--gin.TARGET_LENGTH=16",
          "--gin.WARMUP_STEPS=2",
          "--gin.SAMPLER_OPTIONS={'window': 2, 'min_per_task': 1, "
          "'temperature': 0.1}",
          f"--gin.optim.OptimizerConfig.total_steps={TOTAL_STEPS}",
          "--gin.config.TrainConfig.progress_bar=False",
          f"--gin.config.TrainConfig.checkpoint_every={SPLIT_STEP}",
          "--gin.config.TrainConfig.log_every=1"]
  if data_shards is not None:
    args.append(f"--gin.loop.train.num_data_shards={data_shards}")
  return args


def _launch(run_dir, args, num_processes: int, devices_per_process: int):
  """Starts the processes of one run; returns their (Popen, log path) pairs."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             DYNPT_CPU_COLLECTIVES="gloo",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  for name in ("DYNPT_COORDINATOR_ADDRESS", "DYNPT_NUM_PROCESSES", "DYNPT_PROCESS_ID"):
    env.pop(name, None)
  extra = [[]]
  if num_processes > 1:
    coordinator = f"127.0.0.1:{_free_port()}"
    extra = [[f"--coordinator_address={coordinator}",
              f"--num_processes={num_processes}", f"--process_id={i}"]
             for i in range(num_processes)]
  os.makedirs(run_dir, exist_ok=True)
  procs = []
  for i, flags in enumerate(extra):
    log = os.path.join(os.path.dirname(run_dir), f"{os.path.basename(run_dir)}-{i}.log")
    with open(log, "w") as f:
      procs.append((subprocess.Popen(
          [sys.executable, "-m", "dynpt.main"] + args + flags, cwd=ROOT, env=env,
          stdout=f, stderr=subprocess.STDOUT), log))
  return procs


def _wait(procs) -> list[str]:
  """Waits for every process within TIMEOUT_S; kills them all on failure."""
  deadline = time.time() + TIMEOUT_S
  try:
    while time.time() < deadline:
      codes = [p.poll() for p, _ in procs]
      if any(c not in (None, 0) for c in codes) or all(c == 0 for c in codes):
        break
      time.sleep(0.5)
  finally:
    for p, _ in procs:
      if p.poll() is None:
        p.kill()
      p.wait(timeout=30)
  logs = [open(log).read() for _, log in procs]
  for (p, _), log in zip(procs, logs):
    assert p.returncode == 0, f"process exited with {p.returncode}:\n{log[-4000:]}"
  return logs


def _history(run_dir):
  with open(os.path.join(run_dir, "mixture_history.jsonl")) as f:
    return [json.loads(line) for line in f]


def _assert_same_history(got, want):
  assert [h["step"] for h in got] == [h["step"] for h in want]
  for g, w in zip(got, want):
    assert g["counts"] == w["counts"], f"step {g['step']}"
    for task, loss in w["task_loss"].items():
      if loss is None:
        assert g["task_loss"][task] is None
      else:
        np.testing.assert_allclose(g["task_loss"][task], loss, rtol=1e-5,
                                   err_msg=f"step {g['step']} task {task}")


def _assert_same_params(run_a, run_b, step):
  from dynpt.train import checkpoints

  pa, _ = checkpoints.restore_params(str(run_a), step)
  pb, _ = checkpoints.restore_params(str(run_b), step)
  leaves_a, leaves_b = _leaves(pa), _leaves(pb)
  assert leaves_a.keys() == leaves_b.keys()
  for k in leaves_a:
    np.testing.assert_allclose(leaves_a[k], leaves_b[k], rtol=1e-4, atol=1e-6,
                               err_msg=k)


def _leaves(tree):
  import jax

  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def runs(toy_data_dir, tmp_path_factory):
  """The reference and the 2-process run, started together (XLA compiles on
  one core; the two runs overlap their compilations on a 2-core machine)."""
  base = tmp_path_factory.mktemp("mh")
  reference, two_proc = base / "reference", base / "two_proc"
  procs = (_launch(str(reference), _args(reference, toy_data_dir, TOTAL_STEPS), 1, 4)
           + _launch(str(two_proc), _args(two_proc, toy_data_dir, SPLIT_STEP), 2, 2))
  logs = _wait(procs)
  return reference, two_proc, logs[1:]


def test_two_processes_match_one_process(runs):
  reference, run_dir, logs = runs
  assert "process 1 of 2" in logs[1], logs[1][-3000:]
  hist = _history(run_dir)
  assert len(hist) == SPLIT_STEP
  _assert_same_history(hist, _history(reference)[:SPLIT_STEP])
  # The mixture moved, so the comparison covers changing counts.
  assert len({tuple(h["counts"].values()) for h in _history(reference)}) > 1
  _assert_same_params(run_dir, reference, SPLIT_STEP)
  summary = json.load(open(run_dir / "train_summary.json"))
  assert summary["end_step"] == SPLIT_STEP and summary["compilations"] == 1


def test_resume_two_processes_on_one(runs, toy_data_dir, tmp_path):
  reference, two_proc, _ = runs
  run_dir = tmp_path / "elastic"
  shutil.copytree(two_proc, run_dir)
  # No num_data_shards: the resumed run keeps the checkpoint's 2 shards.
  args = _args(run_dir, toy_data_dir, TOTAL_STEPS, data_shards=None)
  [log] = _wait(_launch(str(run_dir), args, 1, 2))
  assert "2 data shards over 1 processes" in log, log[-3000:]
  summary = json.load(open(run_dir / "train_summary.json"))
  assert summary["start_step"] == SPLIT_STEP
  assert summary["end_step"] == TOTAL_STEPS
  _assert_same_history(_history(run_dir), _history(reference))
  _assert_same_params(run_dir, reference, TOTAL_STEPS)


def _wait_all(procs, timeout_s=TIMEOUT_S) -> list[str]:
  """Waits for every process to exit (whatever its code); returns the logs."""
  deadline = time.time() + timeout_s
  try:
    for p, _ in procs:
      p.wait(timeout=max(1.0, deadline - time.time()))
  finally:
    for p, _ in procs:
      if p.poll() is None:
        p.kill()
        p.wait(timeout=30)
  return [open(log).read() for _, log in procs]


def test_sigterm_on_one_process_stops_both_at_one_step(toy_data_dir, tmp_path):
  from dynpt import main as dynpt_main
  from dynpt.train import checkpoints

  run_dir = tmp_path / "preempted"
  args = _args(run_dir, toy_data_dir, 100000) + [
      "--gin.config.TrainConfig.checkpoint_every=100000"]
  procs = _launch(str(run_dir), args, 2, 2)
  hist = run_dir / "mixture_history.jsonl"  # Written by process 0 only.
  deadline = time.time() + TIMEOUT_S
  while time.time() < deadline and all(p.poll() is None for p, _ in procs):
    if hist.exists() and sum(1 for _ in open(hist)) >= 2:
      break
    time.sleep(0.2)
  assert all(p.poll() is None for p, _ in procs), _wait_all(procs)
  procs[1][0].send_signal(signal.SIGTERM)  # Process 0 is not told.
  logs = _wait_all(procs)
  for (p, _), log in zip(procs, logs):
    assert p.returncode == dynpt_main.EXIT_PREEMPTED, log[-4000:]
  saved = [int(re.search(r"preempted: checkpoint of step (\d+) saved", log)[1])
           for log in logs]
  assert saved[0] == saved[1] and 2 <= saved[0] < 100000, saved
  step = saved[0]
  ckpt = checkpoints.Checkpointer(str(run_dir))
  assert ckpt.all_steps() == [step]  # Committed: orbax lists finished steps only.
  ckpt.close()
  _, restored_step = checkpoints.restore_params(str(run_dir), step)
  assert restored_step == step
  summary = json.load(open(run_dir / "train_summary.json"))
  assert summary["preempted"] and summary["end_step"] == step

  # The elastic resume (2 processes -> 1) continues from the agreed step.
  args = _args(run_dir, toy_data_dir, step + 1, data_shards=None)
  [log] = _wait(_launch(str(run_dir), args, 1, 2))
  summary = json.load(open(run_dir / "train_summary.json"))
  assert (summary["start_step"], summary["end_step"]) == (step, step + 1), log[-3000:]
  assert not summary["preempted"]
  assert [h["step"] for h in _history(run_dir)] == list(range(step + 1))
