"""Tests of tools/launch_tpu.py (the command builders, --dry_run) and tools/tpu_worker.py.

The launch against a simulated TPU VM is in tests/test_launch_tpu_sim.py.
"""

import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TOOL = os.path.join(_REPO, "tools", "launch_tpu.py")
_REQUIREMENTS = os.path.join(_REPO, "requirements.txt")


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
  if not (tmp_path / "requirements.txt").exists():
    (tmp_path / "requirements.txt").write_text("# pins\njax==0.10.2\nnumpy==2.4.6\n")
  argv = [sys.executable, _TOOL, "--dry_run", "--name=dynpt-v4", "--zone=us-central2-b",
          "--accelerator=v4-32", "--gin_file=gin_configs/pretrain.gin",
          f"--source_dir={tmp_path}", *extra]
  env = {k: v for k, v in os.environ.items() if k != launch_tpu.SIMULATION_ENV}
  return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60, env=env)


def _script(cmd):
  return next(a for a in cmd if a.startswith("--command="))[len("--command="):]


def test_dry_run_prints_every_gcloud_command(tmp_path):
  result = _dry_run(tmp_path, "--run_dir=gs://bucket/run1", "--spot",
                    "--gin.TRAIN_STEPS=500000", "--gin.MODEL_NAME='base'",
                    "--gin.BATCH_SIZE", "4096", "--launch_id=L1", "--stop_timeout=120")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  commands = [shlex.split(line) for line in lines]
  assert all(cmd[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] for cmd in commands)
  verbs = [cmd[4] for cmd in commands]
  assert verbs == ["describe", "create", "scp", "ssh", "ssh", "ssh", "ssh"]
  create = commands[1]
  assert "--accelerator-type=v4-32" in create and "--zone=us-central2-b" in create
  assert "--spot" in create and "--version=tpu-ubuntu2204-base" in create
  assert all("--zone=us-central2-b" in cmd for cmd in commands)
  assert "--worker=all" in commands[2]  # the code goes to every worker
  assert commands[2][6] == "dynpt-v4:dynpt-src-L1.tar.gz"
  stop, install, run = (_script(c) for c in commands[3:6])
  assert all("--worker=all" in c for c in commands[3:6])
  # A fresh release folder (mkdir without -p fails on an existing one), then the stop.
  assert "mkdir ~/dynpt/releases/L1 &&" in stop
  assert stop.endswith("python3 ~/dynpt/releases/L1/tools/tpu_worker.py stop --timeout=120")
  assert install.startswith("cd ~/dynpt/releases/L1 && env PIP_BREAK_SYSTEM_PACKAGES=1 "
                            "python3 -m pip install -q --user uv==")
  assert "python3 -m uv venv --seed --python 3.11 .venv && .venv/bin/python -m pip" in install
  start, trainer = run.split(" -- ", 1)
  assert start == ("python3 ~/dynpt/releases/L1/tools/tpu_worker.py start --launch_id=L1 "
                   "--env=DYNPT_CLOUD_TPU=1")
  assert shlex.split(trainer) == [
      ".venv/bin/python", "-m", "dynpt.main", "--gin_file=gin_configs/pretrain.gin",
      "--gin.TRAIN_STEPS=500000", "--gin.MODEL_NAME='base'", "--gin.BATCH_SIZE=4096",
      "--gin.RUN_DIR='gs://bucket/run1'"]
  assert "--worker=0" in commands[6]
  assert "--command=tail -n +1 -F ~/dynpt/logs/L1.log" in commands[6]


def test_dry_run_without_spot_or_log_streaming(tmp_path):
  result = _dry_run(tmp_path, "--run_dir=gs://bucket/run1", "--nostream_logs",
                    "--project=my-proj", "--data_dir=gs://bucket/data")
  assert result.returncode == 0, result.stderr
  commands = [shlex.split(line) for line in result.stdout.strip().splitlines()]
  assert len(commands) == 6
  assert "--spot" not in commands[1] and "--preemptible" not in commands[1]
  assert all("--project=my-proj" in cmd for cmd in commands)
  assert "--env=DYNPT_CLOUD_TPU=1 --env=DYNPT_DATA_DIR=gs://bucket/data --" in _script(
      commands[5])
  # A fresh launch id each time: a relaunch never unpacks over a running release.
  again = _dry_run(tmp_path, "--run_dir=gs://bucket/run1", "--nostream_logs")
  assert _script(shlex.split(again.stdout.splitlines()[3])) != _script(commands[3])


def test_dry_run_installs_the_source_trees_jax_pin(tmp_path):
  result = _dry_run(tmp_path, "--run_dir=gs://bucket/run1")
  install = _script(shlex.split(result.stdout.splitlines()[4]))
  assert "-r requirements.txt 'jax[tpu]==0.10.2' -f " in install
  (tmp_path / "requirements.txt").write_text("jax>=0.10\n")
  result = _dry_run(tmp_path, "--run_dir=gs://bucket/run1")
  assert result.returncode != 0 and "not pinned" in result.stderr
  (tmp_path / "requirements.txt").write_text("numpy==2.4.6\n")
  result = _dry_run(tmp_path, "--run_dir=gs://bucket/run1")
  assert result.returncode != 0 and "pins no jax version" in result.stderr


def test_local_run_dir_only_in_a_simulation(tmp_path):
  argv_tail = ("--run_dir=/tmp/run1", "--data_dir=/tmp/data")
  assert "--run_dir must be a gs:// path" in _dry_run(tmp_path, *argv_tail).stderr
  with pytest.raises(ValueError, match="gs://"):
    _config(run_dir="relative/run1", local_paths=True)
  assert _config(run_dir="/tmp/run1", data_dir="/tmp/data", local_paths=True)


@pytest.mark.parametrize("run_dir", ["/tmp/run1", "bucket/run1", "gs://"])
def test_run_dir_must_be_gcs(tmp_path, run_dir):
  result = _dry_run(tmp_path, f"--run_dir={run_dir}")
  assert result.returncode != 0
  assert "--run_dir must be a gs:// path" in result.stderr
  assert result.stdout == ""


def test_missing_gin_file_is_named(tmp_path):
  result = _dry_run(tmp_path, "--run_dir=gs://b/r", "--gin_file=gin_configs/absent.gin")
  assert result.returncode != 0 and "gin_configs/absent.gin" in result.stderr


def test_readme_dry_run_with_a_gin_configs_relative_file():
  # README.md's command: the repository is the source tree, the gin file is found in
  # its gin_configs/ (as dynpt.main finds it) and the pins come from its requirements.
  argv = [sys.executable, _TOOL, "--name=dynpt", "--zone=us-central2-b",
          "--accelerator=v4-32", "--gin_file=pretrain/paper_base.gin",
          "--run_dir=gs://BUCKET/runs/base", "--dry_run"]
  result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
  assert result.returncode == 0, result.stderr
  assert f"'jax[tpu]=={launch_tpu.read_pins(_REQUIREMENTS)['jax']}'" in result.stdout


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
    (dict(launch_id="a b"), "--launch_id"),
    (dict(launch_id="../x"), "--launch_id"),
    (dict(stop_timeout_s=-1), "--stop_timeout"),
])
def test_config_validation(overrides, message):
  with pytest.raises(ValueError, match=message):
    _config(**overrides)


def test_plan_by_tpu_state():
  config = _config(preemptible=True)
  verbs = lambda state: [c[4] for c in launch_tpu.plan_commands(config, state, "/tmp/s.tgz")]
  assert verbs(None) == ["create", "scp", "ssh", "ssh", "ssh", "ssh"]
  assert verbs("READY") == ["scp", "ssh", "ssh", "ssh", "ssh"]  # reuse: resume on the same TPU
  assert verbs("PREEMPTED") == ["delete", "create", "scp", "ssh", "ssh", "ssh", "ssh"]
  assert "--preemptible" in launch_tpu.create_command(config)
  with pytest.raises(RuntimeError, match="CREATING"):
    launch_tpu.plan_commands(config, "CREATING", "/tmp/s.tgz")


def test_the_stop_comes_before_any_install_and_the_start():
  config = _config(launch_id="L2")
  scripts = [_script(c) for c in launch_tpu.plan_commands(config, "READY", "/tmp/s.tgz",
                                                          stream_logs=False)[1:]]
  stop, install, start = scripts
  assert "tpu_worker.py stop --timeout=300" in stop and "pip" not in stop
  assert "pip install" in install and "tpu_worker" not in install
  assert "tpu_worker.py start" in start and "pip" not in start
  # Nothing is removed or unpacked over an existing folder: the code a running
  # trainer uses stays in place until tpu_worker's prune finds it unused.
  assert "rm -rf" not in " ".join(scripts) and "mkdir -p ~/dynpt/releases/L2" not in stop


def test_install_line_holds_the_tested_pins():
  """The workers get requirements.txt (setup.py's install_requires, as `make setup`
  installs it), jax[tpu] at its jax pin, and dynpt itself without dependencies."""
  pins = launch_tpu.read_pins(_REQUIREMENTS)
  setup_py = open(os.path.join(_REPO, "setup.py")).read()
  assert 'install_requires=_requirements("requirements.txt")' in setup_py
  makefile = open(os.path.join(_REPO, "Makefile")).read()
  assert "pip install -q -r requirements.txt" in makefile and "--no-deps -e ." in makefile
  install = _script(launch_tpu.install_command(_config()))
  steps = [shlex.split(step) for step in install.split(" && ")]
  assert steps[0][0] == "cd"
  uv, venv, first, second = steps[1:]
  # The image's python3 only installs the pinned uv, which makes the release's venv on
  # the tested Python; everything else goes into that venv.
  assert uv[-2:] == ["--user", launch_tpu.UV_SPEC] and "==" in launch_tpu.UV_SPEC
  assert venv == ["python3", "-m", "uv", "venv", "--seed", "--python",
                  launch_tpu.WORKER_PYTHON, ".venv"]
  assert first[:4] == [".venv/bin/python", "-m", "pip", "install"]
  assert first[first.index("-r") + 1] == "requirements.txt"
  named = [a for i, a in enumerate(first[4:], 4)
           if not a.startswith("-") and first[i - 1] not in ("-r", "-f")]
  assert named, first
  for requirement in named:  # Anything named beside the file is at a tested pin.
    name, _, version = requirement.partition("==")
    base = name.split("[", 1)[0]
    assert pins.get(base) == version, (requirement, pins.get(base))
  assert second == [".venv/bin/python", "-m", "pip", "install", "-q", "--no-deps", "-e", "."]
  # requirements.txt travels in the tarball (nothing skips it).
  assert "requirements.txt" not in launch_tpu._SKIP_IN_TARBALL | launch_tpu._SKIP_AT_TOP


def test_worker_python_is_the_tested_one():
  """JAX needs Python >= 3.11; the TPU images' python3 is older: refused below 3.11."""
  setup_py = open(os.path.join(_REPO, "setup.py")).read()
  assert f'python_requires=">={launch_tpu.WORKER_PYTHON}"' in setup_py
  assert _config(python_version="3.12").python_version == "3.12"
  for bad in ("3.10", "python3.11", "3"):
    with pytest.raises(ValueError, match="python_version"):
      _config(python_version=bad)


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


# ---------------------------------------------------------------- tools/tpu_worker.py

# A stand-in trainer with a child in its process group. "polite": on SIGTERM it
# takes a moment (the checkpoint), then exits 75; "deaf": it ignores SIGTERM.
_FAKE_TRAINER = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
if sys.argv[1] == "polite":
  signal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.5), child.wait(), sys.exit(75)))
else:
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", child.pid, flush=True)
time.sleep(600)
"""


@pytest.fixture
def worker_root(tmp_path):
  """A worker's ~/dynpt with releases a and b and a stand-in trainer script."""
  root = tmp_path / "dynpt"
  for name in ("a", "b"):
    (root / "releases" / name).mkdir(parents=True)
  (tmp_path / "trainer.py").write_text(_FAKE_TRAINER)
  yield root
  record = root / "trainer.json"
  if record.exists():  # Never leave a stand-in behind, whatever failed.
    try:
      os.killpg(json.loads(record.read_text())["pgid"], signal.SIGKILL)
    except ProcessLookupError:
      pass


def _start_fake(root, launch_id, mode):
  from tools import tpu_worker

  trainer = str(root.parent / "trainer.py")
  assert tpu_worker.start(str(root), launch_id, ["X=1"], [sys.executable, trainer, mode]) == 0
  log = root / "logs" / f"{launch_id}.log"
  deadline = time.monotonic() + 120
  while "ready" not in (log.read_text() if log.exists() else ""):
    assert time.monotonic() < deadline, "the stand-in trainer did not start"
    time.sleep(0.1)
  record = json.loads((root / "trainer.json").read_text())
  child = int(log.read_text().split("ready", 1)[1].split()[0])
  return record, child


def _running(pid):
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
  except OSError:
    return False


def test_worker_stop_waits_for_the_checkpoint_exit_of_the_whole_group(worker_root, capsys):
  from tools import tpu_worker

  record, child = _start_fake(worker_root, "a", "polite")
  assert record["pgid"] != os.getpgrp() and record["cwd"] == str(worker_root / "releases/a")
  assert os.readlink(worker_root / "current") == "releases/a"
  assert tpu_worker.stop(str(worker_root), timeout=60) == 0
  assert not _running(record["pgid"]) and not _running(record["trainer_pid"])
  assert not _running(child)  # The trainer's own child got the group's SIGTERM too.
  assert json.loads((worker_root / "trainer.json").read_text())["returncode"] == 75
  assert "exited 75 (checkpoint written)" in capsys.readouterr().out
  assert tpu_worker.stop(str(worker_root), timeout=60) == 0  # Nothing left: a no-op.


def test_worker_stop_kills_the_group_after_the_timeout(worker_root, capsys):
  from tools import tpu_worker

  record, child = _start_fake(worker_root, "a", "deaf")
  assert tpu_worker.stop(str(worker_root), timeout=1) == 0
  assert not _running(record["trainer_pid"]) and not _running(child)
  ended = json.loads((worker_root / "trainer.json").read_text())
  assert ended["killed_by_stop"] and ended["returncode"] == -signal.SIGKILL
  assert "still running after 1 s: SIGKILL" in capsys.readouterr().out


def test_worker_never_starts_beside_a_live_trainer_nor_prunes_its_release(worker_root):
  from tools import tpu_worker

  record, _ = _start_fake(worker_root, "a", "deaf")
  assert not (worker_root / "releases" / "b").exists()  # Unused: pruned by the start.
  (worker_root / "releases" / "b").mkdir()  # The next launch unpacks.
  assert tpu_worker.start(str(worker_root), "b", [], ["true"]) == 1
  assert os.readlink(worker_root / "current") == "releases/a"
  tpu_worker.prune(str(worker_root), keep="b")
  assert sorted(os.listdir(worker_root / "releases")) == ["a", "b"]  # a is in use.
  assert tpu_worker.stop(str(worker_root), timeout=0) == 0
  tpu_worker.prune(str(worker_root), keep="b")
  assert os.listdir(worker_root / "releases") == ["b"]


def test_worker_ignores_a_record_whose_group_id_was_reused(worker_root):
  from tools import tpu_worker

  # A group led by a process that started after the recorded leader: the recorded
  # group ended and its id was given to this one, which must not be signalled.
  other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                           start_new_session=True)
  try:
    ticks = tpu_worker._stat(other.pid)[2]  # pylint: disable=protected-access
    (worker_root / "trainer.json").write_text(
        json.dumps({"pgid": other.pid, "start_ticks": ticks - 1}))
    assert tpu_worker.stop(str(worker_root), timeout=0) == 0
    assert other.poll() is None
    (worker_root / "trainer.json").write_text(
        json.dumps({"pgid": other.pid, "start_ticks": ticks}))
    assert tpu_worker.stop(str(worker_root), timeout=5) == 0  # The recorded one: stopped.
    assert other.wait(timeout=30) == -signal.SIGTERM
  finally:
    other.kill()
    other.wait()


def test_worker_stop_finds_a_trainer_of_the_launcher_before_releases(tmp_path, monkeypatch):
  from tools import tpu_worker

  # The older launcher ran `python3 -m dynpt.main` in ~/dynpt and wrote a shell's pid.
  monkeypatch.setenv("HOME", str(tmp_path))
  root = tmp_path / "dynpt"
  root.mkdir()
  (tmp_path / "dynpt-run.pid").write_text("1\n")
  old = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "dynpt.main"],
                         cwd=root)
  bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                               cwd=root)
  try:
    assert tpu_worker.stop(str(root), timeout=30) == 0
    assert old.wait(timeout=30) == -signal.SIGTERM
    assert bystander.poll() is None and not (tmp_path / "dynpt-run.pid").exists()
  finally:
    for p in (old, bystander):
      p.kill()
      p.wait()
