"""Tests of tools/launch_tpu.py: the command builders and the --dry_run mode."""

import importlib.util
import os
import shlex
import subprocess
import sys
import tarfile

import pytest

_TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools",
                     "launch_tpu.py")


def _load_tool():
  spec = importlib.util.spec_from_file_location("launch_tpu_under_test", _TOOL)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up by name
  spec.loader.exec_module(module)
  return module


launch_tpu = _load_tool()


def _config(**overrides):
  kwargs = dict(name="dynpt-v4", zone="us-central2-b", accelerator="v4-32",
                runtime_version="tpu-ubuntu2204-base", gin_file="gin_configs/pretrain.gin",
                gin_bindings=("TRAIN_STEPS=10",), run_dir="gs://bucket/run1")
  kwargs.update(overrides)
  return launch_tpu.LaunchConfig(**kwargs)


def _dry_run(tmp_path, *extra):
  (tmp_path / "gin_configs").mkdir(exist_ok=True)
  (tmp_path / "gin_configs" / "pretrain.gin").write_text("TRAIN_STEPS = 5\n")
  argv = [sys.executable, _TOOL, "--dry_run", "--name=dynpt-v4", "--zone=us-central2-b",
          "--accelerator=v4-32", "--gin_file=gin_configs/pretrain.gin",
          f"--source_dir={tmp_path}", *extra]
  return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def test_dry_run_prints_every_gcloud_command(tmp_path):
  result = _dry_run(tmp_path, "--run_dir=gs://bucket/run1", "--spot",
                    "--gin.TRAIN_STEPS=500000", "--gin.MODEL_NAME='base'",
                    "--gin.BATCH_SIZE", "4096")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  commands = [shlex.split(line) for line in lines]
  assert all(cmd[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] for cmd in commands)
  verbs = [cmd[4] for cmd in commands]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh", "ssh"]
  create = commands[1]
  assert "--accelerator-type=v4-32" in create and "--zone=us-central2-b" in create
  assert "--spot" in create and "--version=tpu-ubuntu2204-base" in create
  assert all("--zone=us-central2-b" in cmd for cmd in commands)
  assert "--worker=all" in commands[2]  # the code goes to every worker
  run = commands[4]
  assert "--worker=all" in run
  script = next(a for a in run if a.startswith("--command="))[len("--command="):]
  assert "nohup" in script and "dynpt-run.log" in script and "DYNPT_CLOUD_TPU=1" in script
  trainer = shlex.split(script.split("nohup", 1)[1].split(">", 1)[0])
  assert trainer == ["python3", "-m", "dynpt.main", "--gin_file=gin_configs/pretrain.gin",
                     "--gin.TRAIN_STEPS=500000", "--gin.MODEL_NAME='base'",
                     "--gin.BATCH_SIZE=4096", "--gin.RUN_DIR='gs://bucket/run1'"]
  assert "--worker=0" in commands[5] and "--command=tail -n +1 -F ~/dynpt-run.log" in commands[5]


def test_dry_run_without_spot_or_log_streaming(tmp_path):
  result = _dry_run(tmp_path, "--run_dir=gs://bucket/run1", "--nostream_logs",
                    "--project=my-proj", "--data_dir=gs://bucket/data")
  assert result.returncode == 0, result.stderr
  commands = [shlex.split(line) for line in result.stdout.strip().splitlines()]
  assert len(commands) == 5
  assert "--spot" not in commands[1] and "--preemptible" not in commands[1]
  assert all("--project=my-proj" in cmd for cmd in commands)
  assert "DYNPT_DATA_DIR=gs://bucket/data nohup" in " ".join(commands[4])


@pytest.mark.parametrize("run_dir", ["/tmp/run1", "bucket/run1", "gs://"])
def test_run_dir_must_be_gcs(tmp_path, run_dir):
  result = _dry_run(tmp_path, f"--run_dir={run_dir}")
  assert result.returncode != 0
  assert "--run_dir must be a gs:// path" in result.stderr
  assert result.stdout == ""


def test_missing_gin_file_is_named(tmp_path):
  result = _dry_run(tmp_path, "--run_dir=gs://b/r", "--gin_file=gin_configs/absent.gin")
  assert result.returncode != 0 and "gin_configs/absent.gin" in result.stderr


def test_rewrite_gin_args():
  argv = ["tool", "--gin.A=1", "--gin.B", "x y", "--gin=C=2", "--name=n"]
  assert launch_tpu.rewrite_gin_args(argv) == ["tool", "--gin=A=1", "--gin=B=x y", "--gin=C=2",
                                               "--name=n"]
  with pytest.raises(ValueError, match="needs a value"):
    launch_tpu.rewrite_gin_args(["tool", "--gin.A"])


@pytest.mark.parametrize("overrides, message", [
    (dict(run_dir="/local"), "gs://"),
    (dict(name="Bad_Name"), "--name"),
    (dict(accelerator="v4"), "--accelerator"),
    (dict(spot=True, preemptible=True), "exclusive"),
    (dict(gin_bindings=("NOVALUE",)), "KEY=VALUE"),
    (dict(data_dir="/data"), "--data_dir"),
    (dict(gin_bindings=("RUN_DIR='x'",)), "RUN_DIR is set from --run_dir"),
])
def test_config_validation(overrides, message):
  with pytest.raises(ValueError, match=message):
    _config(**overrides)


def test_plan_by_tpu_state():
  config = _config(preemptible=True)
  verbs = lambda state: [c[4] for c in launch_tpu.plan_commands(config, state, "/tmp/s.tgz")]
  assert verbs(None) == ["create", "scp", "ssh", "ssh", "ssh"]
  assert verbs("READY") == ["scp", "ssh", "ssh", "ssh"]  # reuse: resume on the same TPU
  assert verbs("PREEMPTED") == ["delete", "create", "scp", "ssh", "ssh", "ssh"]
  assert "--preemptible" in launch_tpu.create_command(config)
  with pytest.raises(RuntimeError, match="CREATING"):
    launch_tpu.plan_commands(config, "CREATING", "/tmp/s.tgz")


def test_run_command_stops_the_previous_run_first():
  run = launch_tpu.run_command(_config())
  script = next(a for a in run if a.startswith("--command="))[len("--command="):]
  assert script.index("kill $(cat ~/dynpt-run.pid)") < script.index("nohup")
  assert script.endswith("echo $! > ~/dynpt-run.pid")


def test_make_tarball_skips_venv_git_and_caches(tmp_path):
  src = tmp_path / "src"
  for rel in ["dynpt/__init__.py", ".venv/lib/x.py", ".git/HEAD", "dynpt/__pycache__/a.pyc",
              "pyproject.toml", "data/toy/x.tfrecord", "dynpt/data/schema.py"]:
    (src / rel).parent.mkdir(parents=True, exist_ok=True)
    (src / rel).write_text("x")
  path = launch_tpu.make_tarball(str(src), str(tmp_path / "src.tar.gz"))
  with tarfile.open(path) as tar:
    names = {os.path.normpath(n) for n in tar.getnames()}
  assert {"dynpt/__init__.py", "pyproject.toml", "dynpt/data/schema.py"} <= names
  assert not any(n.startswith((".venv", ".git", "data")) or "__pycache__" in n for n in names)
