"""End-to-end pretraining on the tiny toy world: steps, resume, recompiles."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dynpt.train import loop, optim
from dynpt.train.config import DataConfig, ModelConfig, SamplerConfig, TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = "cc3m_cap,cc12m_itm,ln_mlm,oi_list_objects,vg_exists,in21k_which_exist"


def _cfgs(run_dir, data_dir, num_steps, **train_kw):
  train_kw.setdefault("checkpoint_every", 3)
  train_cfg = TrainConfig(run_dir=str(run_dir), num_steps=num_steps,
                          global_batch_size=12,
                          log_every=2, progress_bar=False,
                          async_checkpoints=True, **train_kw)
  data_cfg = DataConfig(mixture=TASKS, data_dir=data_dir, image_size=32,
                        target_length=16)
  sampler_cfg = SamplerConfig("dynamic", {"window": 2, "min_per_task": 1,
                                           "temperature": 0.1})
  opt_cfg = optim.OptimizerConfig(learning_rate=3e-3, warmup_steps=2,
                                  total_steps=6)
  return dict(train_cfg=train_cfg, data_cfg=data_cfg, sampler_cfg=sampler_cfg,
              optimizer_cfg=opt_cfg, model_cfg=ModelConfig("tiny"))


def _history(run_dir):
  with open(os.path.join(run_dir, "mixture_history.jsonl")) as f:
    return [json.loads(l) for l in f]


@pytest.fixture(scope="module")
def uninterrupted(toy_data_dir, tmp_path_factory):
  run_dir = tmp_path_factory.mktemp("full")
  summary = loop.train(**_cfgs(run_dir, toy_data_dir, 6))
  return str(run_dir), summary


def test_pretrain_runs_and_writes_outputs(uninterrupted):
  run_dir, summary = uninterrupted
  assert summary["end_step"] == 6
  hist = _history(run_dir)
  assert [h["step"] for h in hist] == list(range(6))
  for h in hist:
    assert sum(h["counts"].values()) == 12
    assert all(v is None or np.isfinite(v) for v in h["task_loss"].values())
  # The window of 2 steps ends, so the mixture moves away from uniform.
  assert len({tuple(h["counts"].values()) for h in hist}) > 1
  assert os.listdir(os.path.join(run_dir, "checkpoints"))
  assert os.listdir(os.path.join(run_dir, "tensorboard"))
  assert summary["compilations"] == 1, "a mixture change recompiled the step"
  # The first step compiles: the rate after it is the higher one.
  assert summary["steady_examples_per_s"] > summary["examples_per_s"] > 0


def test_resume_replays_the_same_run(uninterrupted, toy_data_dir, tmp_path):
  full_dir, _ = uninterrupted
  # "Killed" after step 4, which the uninterrupted run (checkpoints every 3 steps)
  # did not checkpoint: the mixture does not depend on where checkpoints fall.
  loop.train(**_cfgs(tmp_path, toy_data_dir, 4, checkpoint_every=2))
  resumed = loop.train(**_cfgs(tmp_path, toy_data_dir, 6))
  assert resumed["start_step"] == 4 and resumed["end_step"] == 6
  a, b = _history(full_dir), _history(str(tmp_path))
  assert [h["step"] for h in b] == list(range(6))
  for ha, hb in zip(a, b):
    assert ha["counts"] == hb["counts"]
    for t in ha["task_loss"]:
      if ha["task_loss"][t] is None:
        assert hb["task_loss"][t] is None
      else:
        np.testing.assert_allclose(ha["task_loss"][t], hb["task_loss"][t],
                                   rtol=1e-5)


def test_synchronous_dispatch_and_another_cadence_replay_the_run(uninterrupted,
                                                                 toy_data_dir, tmp_path):
  # One loop ordering: with the step call synchronous (XLA:CPU with async dispatch
  # off) and checkpoints at other steps, a run draws the counts and gets the losses
  # of the asynchronous run checkpointed every 3 steps: batch s+1 comes from the
  # losses up to step s-1 in every mode (dynpt/train/feedback.py).
  full_dir, _ = uninterrupted
  script = (
      "import sys, jax\n"
      "jax.config.update('jax_cpu_enable_async_dispatch', False)\n"
      "import tasks  # noqa: F401\n"
      "from tests.test_train_e2e import _cfgs\n"
      "from dynpt.train import loop\n"
      "run_dir, data_dir = sys.argv[1:]\n"
      "s = loop.train(**_cfgs(run_dir, data_dir, 6, checkpoint_every=2))\n"
      "assert not jax.config.values['jax_cpu_enable_async_dispatch']\n"
      "assert s['end_step'] == 6, s\n")
  done = subprocess.run([sys.executable, "-c", script, str(tmp_path), toy_data_dir],
                        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  a, b = _history(full_dir), _history(str(tmp_path))
  assert [h["counts"] for h in a] == [h["counts"] for h in b]
  for ha, hb in zip(a, b):
    for t, loss in ha["task_loss"].items():
      if loss is None:
        assert hb["task_loss"][t] is None
      else:
        np.testing.assert_allclose(loss, hb["task_loss"][t], rtol=1e-5)


def test_an_implicit_host_to_device_copy_in_the_step_call_fails(toy_data_dir, tmp_path,
                                                                monkeypatch):
  # The loop steps under jax.transfer_guard("disallow"): loss weights handed to
  # the step as a host array (no explicit copy) are refused, not copied quietly.
  from dynpt.train import session

  monkeypatch.setattr(session.TrainSession, "loss_weights",
                      lambda self, draw: draw.loss_weights)
  with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
    loop.train(**_cfgs(tmp_path, toy_data_dir, 1))


def test_unknown_task_fails_before_training(toy_data_dir, tmp_path):
  cfgs = _cfgs(tmp_path, toy_data_dir, 2)
  cfgs["data_cfg"] = DataConfig(mixture="cc3m_cap,no_such_task",
                                data_dir=toy_data_dir)
  with pytest.raises(ValueError, match="no_such_task"):
    loop.train(**cfgs)
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_batch_too_small_for_minimum_fails(toy_data_dir, tmp_path):
  cfgs = _cfgs(tmp_path, toy_data_dir, 2)
  cfgs["sampler_cfg"] = SamplerConfig("dynamic", {"min_per_task": 4})
  with pytest.raises(ValueError, match="min_per_task|4"):
    loop.train(**cfgs)


def test_bad_gin_binding_fails_with_clear_message():
  from dynpt import main as dynpt_main

  with pytest.raises(ValueError, match="num_stepz"):
    dynpt_main.parse_gin(["pretrain/toy_cpu.gin"],
                         ["RUN_DIR='/tmp/x'", "config.TrainConfig.num_stepz=3"])


def _run_main(args, env_extra=None, **kw):
  env = dict(os.environ, PYTHONPATH=ROOT, **(env_extra or {}))
  return subprocess.Popen([sys.executable, "-m", "dynpt.main"] + args,
                          cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kw)


def _main_args(run_dir, data_dir, steps):
  return ["--gin_file=pretrain/toy_cpu.gin", f"--gin.RUN_DIR='{run_dir}'",
          f"--gin.DATA_DIR='{data_dir}'", f"--gin.MIXTURE='{TASKS}'",
          f"--gin.NUM_STEPS={steps}", "--gin.BATCH_SIZE=12",
          "--gin.IMAGE_SIZE=32", "--gin.TARGET_LENGTH=16",
          "--gin.config.TrainConfig.progress_bar=False",
          "--gin.config.TrainConfig.checkpoint_every=1000"]


def test_sigterm_saves_a_checkpoint_and_exits(toy_data_dir, tmp_path):
  proc = _run_main(_main_args(tmp_path, toy_data_dir, 100000))
  hist = os.path.join(tmp_path, "mixture_history.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(hist) and sum(1 for _ in open(hist)) >= 2:
      break
    time.sleep(0.5)
  assert proc.poll() is None, proc.communicate()[0][-3000:]
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  # A preemption exit is told apart from a finished run (docs/troubleshooting.md).
  from dynpt import main as dynpt_main

  assert proc.returncode == dynpt_main.EXIT_PREEMPTED == 75, out[-3000:]
  steps = [int(s) for s in os.listdir(os.path.join(tmp_path, "checkpoints"))
           if s.isdigit()]
  assert steps and 0 < max(steps) < 100000
  assert (tmp_path / "config.gin").exists()
  summary = json.load(open(tmp_path / "train_summary.json"))
  assert summary["preempted"] and summary["end_step"] == max(steps)


def test_main_rejects_unknown_task_before_training(toy_data_dir, tmp_path):
  args = _main_args(tmp_path, toy_data_dir, 2)
  args[3] = "--gin.MIXTURE='cc3m_cap,bogus_task'"
  proc = _run_main(args)
  out, _ = proc.communicate(timeout=240)
  assert proc.returncode != 0
  assert "bogus_task" in out
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_evaluate_restores_the_run_and_scores_every_task(uninterrupted, toy_data_dir):
  from dynpt.downstream import teacher_forced as evaluate

  run_dir, _ = uninterrupted
  cfgs = _cfgs(run_dir, toy_data_dir, 6)
  out = evaluate.evaluate(run_dir, cfgs["data_cfg"], cfgs["model_cfg"], split="validation",
                          examples_per_task=4, batch_size=4, train_cfg=cfgs["train_cfg"])
  assert out["step"] == 6
  assert sorted(out["tasks"]) == sorted(TASKS.split(","))
  for result in out["tasks"].values():
    assert np.isfinite(result["loss"]) and 0 <= result["token_accuracy"] <= 1
  with open(os.path.join(run_dir, "eval_validation.json")) as f:
    assert json.load(f)["mean_loss"] == pytest.approx(out["mean_loss"])
