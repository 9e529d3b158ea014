r"""The launcher's hands on each TPU VM worker: stops, starts and tracks the trainer.

`tools/launch_tpu.py` runs this file on every worker (``gcloud ... ssh --worker=all``)
from the release it has just unpacked. It uses the standard library only, because it
runs before the pinned packages are installed, and Linux's /proc.

  python3 tpu_worker.py [--root=DIR] stop [--timeout=300]
  python3 tpu_worker.py [--root=DIR] start --launch_id=ID [--env=KEY=VALUE ...] \
      -- python3 -m dynpt.main ...

Layout under ``--root`` (default ``~/dynpt``):

  releases/<launch id>/   the source tree of one launch, unpacked into a fresh folder
                          and never changed; removed only when no process uses it
  current                 symlink to the release of the latest start
  logs/<launch id>.log    the trainer's output
  trainer.json            the latest trainer: process group, launch id and, once it
                          has ended, its exit status

How a trainer runs: `start` starts a small supervisor in a new session
(``setsid``), so the supervisor leads a process group of its own, and the supervisor
runs the trainer in that group and waits for it. The group id in trainer.json is
therefore exact (not the pid of a shell that started it), and `stop` reaches the
trainer and everything it started with one ``kill -TERM -- -PGID``. The supervisor
outlives the trainer's SIGTERM (its handler does nothing) to record the exit status:
75 means the trainer wrote its checkpoint and exited (dynpt.main's EXIT_PREEMPTED).

`stop` sends SIGTERM to the group, waits up to ``--timeout`` seconds for every process
in it to exit, then sends SIGKILL; it exits 1 only when the group outlives SIGKILL,
so the launcher never installs code or starts a second trainer beside a live one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

DEFAULT_ROOT = "~/dynpt"
TRAINER_RECORD = "trainer.json"
LEGACY_PID_FILE = "~/dynpt-run.pid"  # Written by launchers before releases existed.
EXIT_PREEMPTED = 75  # dynpt.main: checkpoint written after SIGTERM.
_KILL_GRACE_S = 30.0  # After SIGKILL: only a process stuck in the kernel takes longer.
_POLL_S = 0.2


# ----------------------------------------------------------------------------- /proc

def _stat(pid: int) -> tuple[str, int, int] | None:
  """(state, process group, start time in clock ticks) of `pid`, None when gone."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      text = f.read()
  except OSError:
    return None
  fields = text[text.rindex(")") + 2:].split()  # The command name may hold spaces.
  return fields[0], int(fields[2]), int(fields[19])


def _pids() -> list[int]:
  return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def group_members(pgid: int) -> list[int]:
  """Live (not zombie) processes of process group `pgid`."""
  members = []
  for pid in _pids():
    stat = _stat(pid)
    if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
      members.append(pid)
  return members


def _recorded_group_alive(record: dict) -> bool:
  """Whether the recorded trainer's group still has live processes.

  A process-group id is not given to a new process while its group has members,
  so a live group with that id is the recorded one, unless its leader was replaced:
  a leader with another start time means the old group ended long ago and the id
  was reused.
  """
  pgid = record.get("pgid")
  if not isinstance(pgid, int) or pgid <= 1 or pgid == os.getpgrp():
    return False  # Never the group this stop runs in.
  leader = _stat(pgid)
  if leader is not None and leader[2] != record.get("start_ticks"):
    return False
  return bool(group_members(pgid))


def paths_in_use(root: str) -> set[str]:
  """Real paths of the top entries under `root` that some process uses (cwd, open
  files, mapped files); processes of other users are not readable and not counted."""
  root = os.path.realpath(root)
  prefix = root + os.sep
  used = set()

  def note(path: str) -> None:
    if path.startswith(prefix):
      used.add(os.path.join(root, path[len(prefix):].split(os.sep, 1)[0]))

  for pid in _pids():
    links = [f"/proc/{pid}/cwd"]
    try:
      links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
      pass
    for link in links:
      try:
        note(os.readlink(link))
      except OSError:
        pass
    try:
      with open(f"/proc/{pid}/maps") as f:
        for line in f:
          parts = line.split(None, 5)
          if len(parts) == 6:
            note(parts[5].strip())
    except OSError:
      pass
  return used


# ----------------------------------------------------------------------------- state

def _read_record(root: str) -> dict | None:
  try:
    with open(os.path.join(root, TRAINER_RECORD)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_record(root: str, record: dict) -> None:
  path = os.path.join(root, TRAINER_RECORD)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1)
  os.replace(tmp, path)


def _describe_end(record: dict | None) -> str:
  if record is None or "returncode" not in record:
    return "no exit status recorded"
  code = record["returncode"]
  if record.get("killed_by_stop"):
    return "killed (SIGKILL; no checkpoint at the stop)"
  if code == EXIT_PREEMPTED:
    return f"exited {code} (checkpoint written)"
  if code < 0:
    return f"ended by signal {-code} (no checkpoint)"
  return f"exited {code}"


def _wait_gone(record: dict, timeout: float) -> bool:
  deadline = time.monotonic() + timeout
  while _recorded_group_alive(record):
    if time.monotonic() >= deadline:
      return False
    time.sleep(_POLL_S)
  return True


def _signal_group(pgid: int, sig: int) -> None:
  try:
    os.killpg(pgid, sig)
  except ProcessLookupError:
    pass


# ----------------------------------------------------------------------------- commands

def stop(root: str, timeout: float) -> int:
  """Stops the recorded trainer's process group; 0 when none is left running."""
  _stop_legacy(root, timeout)
  record = _read_record(root)
  if record is None or not _recorded_group_alive(record):
    print("tpu_worker: no trainer running", flush=True)
    return 0
  pgid, launch = record["pgid"], record.get("launch_id")
  print(f"tpu_worker: stopping the trainer of launch {launch} (process group {pgid}): "
        f"SIGTERM, waiting up to {timeout:g} s for its checkpoint", flush=True)
  started = time.monotonic()
  _signal_group(pgid, signal.SIGTERM)
  if not _wait_gone(record, timeout):
    print(f"tpu_worker: process group {pgid} still running after {timeout:g} s: SIGKILL",
          flush=True)
    _signal_group(pgid, signal.SIGKILL)
    if not _wait_gone(record, _KILL_GRACE_S):
      print(f"tpu_worker: process group {pgid} outlived SIGKILL ({group_members(pgid)}); "
            "not replacing code under it", file=sys.stderr, flush=True)
      return 1
  ended = _read_record(root)
  if ended is None or ended.get("pgid") != pgid:
    ended = None
  elif "returncode" not in ended:  # Killed with its supervisor, which could not say so.
    ended.update(returncode=-signal.SIGKILL, killed_by_stop=True, ended=time.time())
    _write_record(root, ended)
  print(f"tpu_worker: trainer of launch {launch} gone after "
        f"{time.monotonic() - started:.1f} s: {_describe_end(ended)}", flush=True)
  return 0


def _stop_legacy(root: str, timeout: float) -> None:
  """Stops a trainer started by the launcher before releases: its pid file held a
  shell's pid, so it is found as ``dynpt.main`` running in the old code folder."""
  pid_file = os.path.expanduser(LEGACY_PID_FILE)
  if not os.path.exists(pid_file):
    return
  old_dir = os.path.realpath(root)
  pids = []
  for pid in _pids():
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
      cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
      continue
    if cwd == old_dir and b"dynpt.main" in argv and pid != os.getpid():
      pids.append(pid)
  for pid in pids:
    print(f"tpu_worker: stopping trainer pid {pid} of an older launcher: SIGTERM", flush=True)
    os.kill(pid, signal.SIGTERM)
  deadline = time.monotonic() + timeout
  while any(_alive(p) for p in pids) and time.monotonic() < deadline:
    time.sleep(_POLL_S)
  for pid in pids:
    if _alive(pid):
      os.kill(pid, signal.SIGKILL)
  os.remove(pid_file)


def _alive(pid: int) -> bool:
  stat = _stat(pid)
  return stat is not None and stat[0] not in ("Z", "X")


def start(root: str, launch_id: str, env: list[str], argv: list[str]) -> int:
  """Starts `argv` under a supervisor in a new session, from the launch's release."""
  release = os.path.join(root, "releases", launch_id)
  if not os.path.isdir(release):
    print(f"tpu_worker: no release {release}", file=sys.stderr)
    return 2
  record = _read_record(root)
  if record is not None and _recorded_group_alive(record):
    print(f"tpu_worker: the trainer of launch {record.get('launch_id')} (process group "
          f"{record['pgid']}) is still running; stop it first", file=sys.stderr)
    return 1
  link = os.path.join(root, "current")
  tmp_link = f"{link}.tmp.{os.getpid()}"
  os.symlink(os.path.join("releases", launch_id), tmp_link)
  os.replace(tmp_link, link)  # Atomic: `current` always names a complete release.
  os.makedirs(os.path.join(root, "logs"), exist_ok=True)
  log_path = os.path.join(root, "logs", f"{launch_id}.log")
  child_env = dict(os.environ)
  for item in env:
    key, _, value = item.partition("=")
    child_env[key] = value
  with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
    supervisor = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), f"--root={root}", "supervise",
         f"--launch_id={launch_id}", "--", *argv],
        cwd=release, env=child_env, stdin=devnull, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline:
    record = _read_record(root)
    if record is not None and record.get("pgid") == supervisor.pid:
      break
    if supervisor.poll() is not None:
      print(f"tpu_worker: the supervisor exited {supervisor.returncode}; see {log_path}",
            file=sys.stderr)
      return 1
    time.sleep(_POLL_S)
  print(f"tpu_worker: started launch {launch_id} as process group {supervisor.pid} in "
        f"{release}, logging to {log_path}", flush=True)
  prune(root, keep=launch_id)
  return 0


def supervise(root: str, launch_id: str, argv: list[str]) -> int:
  """Runs the trainer in this process's group and records how it ended."""
  for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    # A handler, not SIG_IGN: the trainer gets the default disposition back at exec.
    signal.signal(sig, lambda *unused: None)
  pgid = os.getpgrp()
  record = {"launch_id": launch_id, "pgid": pgid, "start_ticks": _stat(pgid)[2],
            "cwd": os.getcwd(), "argv": argv, "started": time.time()}
  trainer = subprocess.Popen(argv)
  record["trainer_pid"] = trainer.pid
  _write_record(root, record)
  record["returncode"] = trainer.wait()
  record["ended"] = time.time()
  _write_record(root, record)
  return 0


def prune(root: str, keep: str) -> None:
  """Removes the releases other than `keep` that no process uses."""
  releases = os.path.join(root, "releases")
  in_use = paths_in_use(releases)
  for name in sorted(os.listdir(releases)):
    path = os.path.realpath(os.path.join(releases, name))
    if name == keep:
      continue
    if path in in_use:
      print(f"tpu_worker: keeping release {name}: a process still uses it", flush=True)
      continue
    shutil.rmtree(path, ignore_errors=True)
    print(f"tpu_worker: removed release {name}", flush=True)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
  parser.add_argument("--root", default=DEFAULT_ROOT)
  sub = parser.add_subparsers(dest="command", required=True)
  p_stop = sub.add_parser("stop", help="stop the recorded trainer's process group")
  p_stop.add_argument("--timeout", type=float, default=300.0,
                      help="seconds between SIGTERM and SIGKILL")
  for name in ("start", "supervise"):
    p = sub.add_parser(name)
    p.add_argument("--launch_id", required=True)
    if name == "start":
      p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the trainer")
    p.add_argument("trainer", nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  root = os.path.abspath(os.path.expanduser(args.root))
  if args.command == "stop":
    return stop(root, args.timeout)
  trainer = args.trainer[1:] if args.trainer[:1] == ["--"] else args.trainer
  if not trainer:
    parser.error("the trainer's command follows --")
  if args.command == "start":
    return start(root, args.launch_id, args.env, trainer)
  return supervise(root, args.launch_id, trainer)


if __name__ == "__main__":
  sys.exit(main())
