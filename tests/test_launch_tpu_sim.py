"""tools/launch_tpu.py against a simulated TPU VM: create, run, relaunch, resume.

A stand-in ``gcloud`` (written below into a tmp dir put first on PATH) implements
what the launcher calls: ``compute tpus tpu-vm describe/create/delete/scp/ssh``.
Each worker is a tmp folder used as its HOME; ``ssh --worker=...`` runs the command
with ``bash -c`` there, every worker at once, as gcloud does. The workers' "image"
puts a ``python3`` first on their PATH that runs this virtualenv's Python but only
records ``python3 -m pip ...`` (nothing is installed here, and nothing is
downloaded). ``DYNPT_LAUNCH_TPU_SIMULATION=1`` lets the launcher take local run and
data dirs; ``DYNPT_NUM_PROCESSES=1`` in the workers' environment stands in for the
metadata server that tells JAX a v4-8 is one host.

The trainer is the real one (``python3 -m dynpt.main`` from the unpacked release) on
the tiny toy world.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.test_train_e2e import TASKS
from tools import launch_tpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "launch_tpu.py")
NAME = "sim-v4"
_DEADLINE_S = 420  # Per wait; generous for a loaded 2-core machine.

_GCLOUD = r'''#!{python}
"""Stand-in gcloud: `compute tpus tpu-vm VERB ...` on this machine (see the test)."""
import json, os, shutil, subprocess, sys

STATE = os.environ["SIM_TPU_STATE"]
WORKERS = {{"v4-8": 1, "v4-16": 2, "v4-32": 4}}
args = sys.argv[1:]
if args[:3] != ["compute", "tpus", "tpu-vm"] or len(args) < 5:
  sys.exit(f"stand-in gcloud: unsupported command {{args}}")
verb, rest = args[3], args[4:]
opts = dict(a[2:].partition("=")[::2] for a in rest if a.startswith("--"))
pos = [a for a in rest if not a.startswith("--")]
with open(os.path.join(STATE, "calls.jsonl"), "a") as f:
  f.write(json.dumps(args) + "\n")
name = pos[0].split(":", 1)[0] if verb != "scp" else pos[1].split(":", 1)[0]
meta_path = os.path.join(STATE, name + ".json")
meta = json.load(open(meta_path)) if os.path.exists(meta_path) else None
if verb != "create" and meta is None:
  sys.exit(f"ERROR: (gcloud.compute.tpus.tpu-vm.{{verb}}) NOT_FOUND: {{name}}")


def homes(worker):
  ids = range(meta["workers"]) if worker == "all" else [int(worker)]
  return [os.path.join(STATE, name, f"worker-{{i}}") for i in ids]


if verb == "describe":
  print(meta["state"])
elif verb == "create":
  if meta is not None:
    sys.exit(f"ERROR: (gcloud.compute.tpus.tpu-vm.create) ALREADY_EXISTS: {{name}}")
  meta = {{"state": "READY", "workers": WORKERS.get(opts["accelerator-type"], 1)}}
  for i in range(meta["workers"]):
    os.makedirs(os.path.join(STATE, name, f"worker-{{i}}"))
  json.dump(meta, open(meta_path, "w"))
elif verb == "delete":
  shutil.rmtree(os.path.join(STATE, name))
  os.remove(meta_path)
elif verb == "scp":
  for home in homes(opts.get("worker", "0")):
    shutil.copy(pos[0], os.path.join(home, pos[1].split(":", 1)[1]))
elif verb == "ssh":
  procs = []
  for home in homes(opts.get("worker", "0")):
    env = dict(os.environ, HOME=home, DYNPT_NUM_PROCESSES="1", JAX_PLATFORMS="cpu",
               PATH=os.path.join(STATE, "image-bin") + os.pathsep + os.environ["PATH"])
    env.pop("PYTHONPATH", None)  # The worker has only what it was sent.
    procs.append(subprocess.Popen(["bash", "-c", opts["command"]], cwd=home, env=env))
  sys.exit(max(p.wait() for p in procs))
else:
  sys.exit(f"stand-in gcloud: unsupported verb {{verb}}")
'''

# The workers' python3: pip is recorded, not run; `uv venv DIR` makes DIR/bin/python
# a copy of this script (so the venv's pip is recorded too); everything else is this
# Python.
_PYTHON3 = """#!/bin/bash
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "$PWD $*" >> "$HOME/pip-calls.txt"
  exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "uv" ] && [ "$3" = "venv" ]; then
  echo "$PWD $*" >> "$HOME/uv-calls.txt"
  venv="${{@: -1}}"
  mkdir -p "$venv/bin" && cp "$0" "$venv/bin/python"
  exit 0
fi
exec "{python}" "$@"
"""


@pytest.fixture
def simulated_gcloud(tmp_path):
  """(environment for the launcher, state dir); stops leftover trainers at the end."""
  state = tmp_path / "gcloud-state"
  (state / "image-bin").mkdir(parents=True)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for path, text in ((bin_dir / "gcloud", _GCLOUD), (state / "image-bin" / "python3",
                                                     _PYTHON3)):
    path.write_text(text.format(python=sys.executable))
    path.chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             SIM_TPU_STATE=str(state), PYTHONPATH=ROOT)
  env[launch_tpu.SIMULATION_ENV] = "1"
  yield env, state
  for path in state.glob("*/worker-*/dynpt/trainer.json"):
    record = json.loads(path.read_text())
    if "returncode" not in record:  # Still running: a failed test leaves no trainer.
      try:
        os.killpg(record["pgid"], signal.SIGKILL)
      except ProcessLookupError:
        pass


def _launch(env, launch_id, run_dir, data_dir):
  argv = [sys.executable, TOOL, f"--name={NAME}", "--zone=sim-zone", "--accelerator=v4-8",
          "--gin_file=gin_configs/pretrain/toy_cpu.gin", f"--run_dir={run_dir}",
          f"--data_dir={data_dir}", "--nostream_logs", f"--launch_id={launch_id}",
          "--stop_timeout=300",
          # The shapes of test_train_e2e's SIGTERM test: one compiled step for both.
          f"--gin.MIXTURE='{TASKS}'", "--gin.NUM_STEPS=100000",
          "--gin.BATCH_SIZE=12", "--gin.IMAGE_SIZE=32", "--gin.TARGET_LENGTH=16",
          "--gin.config.TrainConfig.progress_bar=False",
          "--gin.config.TrainConfig.checkpoint_every=1000"]
  done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=_DEADLINE_S)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  return done.stdout + done.stderr


def _wait_for(condition, what, log_path, home):
  """Polls `condition` until it holds; fails early when the trainer has ended."""
  deadline = time.monotonic() + _DEADLINE_S
  while not condition():
    ended = "returncode" in _record(home)
    if ended or time.monotonic() > deadline:
      log = log_path.read_text()[-3000:] if log_path.exists() else "(no log)"
      why = "the trainer ended" if ended else "timed out"
      pytest.fail(f"{why} waiting for {what}; log:\n{log}")
    time.sleep(0.5)


def _history_steps(run_dir):
  path = run_dir / "mixture_history.jsonl"
  if not path.exists():
    return []
  return [json.loads(line)["step"] for line in path.read_text().splitlines()
          if line.endswith("}")]


def _record(home):
  path = home / "dynpt" / "trainer.json"
  return json.loads(path.read_text()) if path.exists() else {}


def _alive(pid):
  """Whether `pid` runs (a zombie waiting for its parent to reap it does not)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
  except OSError:
    return False


def _checkpoint_steps(run_dir):
  return sorted(int(s) for s in os.listdir(run_dir / "checkpoints") if s.isdigit())


def test_relaunch_stops_the_trainer_after_its_checkpoint_and_the_next_resumes(
    simulated_gcloud, toy_data_dir, tmp_path):
  env, state = simulated_gcloud
  run_dir = tmp_path / "run"
  home = state / NAME / "worker-0"

  _launch(env, "first", run_dir, toy_data_dir)
  calls = [json.loads(l) for l in (state / "calls.jsonl").read_text().splitlines()]
  assert [c[3] for c in calls] == ["describe", "create", "scp", "ssh", "ssh", "ssh"]
  first_log = home / "dynpt" / "logs" / "first.log"
  # In its step loop (history written), so SIGTERM means "checkpoint and exit 75".
  _wait_for(lambda: len(_history_steps(run_dir)) >= 2, "the first trainer's steps",
            first_log, home)
  first = _record(home)
  assert first["launch_id"] == "first" and "returncode" not in first

  out = _launch(env, "second", run_dir, toy_data_dir)
  # The relaunch waited for the whole group: the first trainer wrote its checkpoint
  # and exited 75 before the install step ran and the second trainer started.
  assert "trainer of launch first gone after" in out and "exited 75" in out, out[-3000:]
  assert out.index("trainer of launch first gone") < out.index("started launch second")
  assert "describe" in (state / "calls.jsonl").read_text().splitlines()[6]
  assert not _alive(first["trainer_pid"]) and not _alive(first["pgid"])
  saved = _checkpoint_steps(run_dir)
  assert saved and saved[-1] >= 2
  assert "SIGTERM received" in first_log.read_text()
  # Each launch installed the tested pins in its own release, after the stop.
  pip_calls = (home / "pip-calls.txt").read_text().splitlines()
  assert len(pip_calls) == 6  # uv for the user, the pins and dynpt into the venv
  assert pip_calls[3].endswith(f"-m pip install -q --user {launch_tpu.UV_SPEC}")
  assert pip_calls[4].startswith(f"{home}/dynpt/releases/second -m pip install -q -r "
                                 f"requirements.txt {launch_tpu.pinned_jax_spec()} -f ")
  uv_calls = (home / "uv-calls.txt").read_text().splitlines()
  assert uv_calls[1] == (f"{home}/dynpt/releases/second -m uv venv --seed --python "
                         f"{launch_tpu.WORKER_PYTHON} .venv")
  # The first release is gone (no process uses it); `current` names the second.
  assert os.listdir(home / "dynpt" / "releases") == ["second"]
  assert os.readlink(home / "dynpt" / "current") == os.path.join("releases", "second")

  second_log = home / "dynpt" / "logs" / "second.log"
  _wait_for(lambda: any(s >= saved[-1] for s in _history_steps(run_dir)),
            "the second trainer's first step", second_log, home)
  assert f"resuming from checkpoint step {saved[-1]}" in second_log.read_text()
  second = _record(home)
  assert second["launch_id"] == "second"
  assert second["cwd"] == os.path.realpath(home / "dynpt" / "releases" / "second")

  # Stopped the way a third launch would stop it.
  stop = subprocess.run(
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME, "--worker=all",
       "--command=python3 ~/dynpt/current/tools/tpu_worker.py stop"],
      env=env, capture_output=True, text=True, timeout=_DEADLINE_S)
  assert stop.returncode == 0 and "exited 75" in stop.stdout, stop.stdout + stop.stderr
  assert _record(home)["returncode"] == 75
  summary = json.loads((run_dir / "train_summary.json").read_text())
  assert summary["start_step"] == saved[-1] and summary["preempted"]
  assert summary["end_step"] > saved[-1] and _checkpoint_steps(run_dir)[-1] == \
      summary["end_step"]
