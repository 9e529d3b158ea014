r"""Launches dynpt pretraining on a Cloud TPU VM or pod slice with gcloud.

  python tools/launch_tpu.py --name=dynpt-v4 --zone=us-central2-b --accelerator=v4-32 \
    --gin_file=gin_configs/pretrain/paper_base.gin --gin.NUM_STEPS=500000 \
    --run_dir=gs://my-bucket/dynpt/run1 --spot

What it does, in order (each step one gcloud command; ``--dry_run`` prints them):
1. looks the TPU up; creates it when absent, deletes and recreates it when it was
   preempted (state PREEMPTED or TERMINATED), reuses it when READY;
2. copies a tarball of the source tree to every worker and installs it there
   (``pip install -e .`` plus ``jax[tpu]``);
3. on every worker (``--worker=all``) stops the previous run started by this tool
   (by its pid file), then starts ``python3 -m dynpt.main --gin_file=...
   --gin.KEY=VALUE ... --gin.RUN_DIR='gs://...'`` under nohup, logging to
   ``~/dynpt-run.log``; ``DYNPT_CLOUD_TPU=1`` makes `dynpt.train.distributed` let
   JAX find the other hosts, and ``--data_dir`` is exported as ``DYNPT_DATA_DIR``;
4. streams worker 0's log (Ctrl-C stops the streaming, not the training).

Resume after preemption: run the same command again. The run directory is on GCS,
so it outlives the TPU, and the trainer restores the latest checkpoint it finds
there. Gin bindings are written ``--gin.KEY=VALUE`` (as for dynpt.main); absl
flag names cannot hold dots, so they are rewritten to ``--gin=KEY=VALUE`` before
parsing, and both spellings work.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

REMOTE_DIR = "dynpt"  # relative to the workers' home directory
REMOTE_TARBALL = "dynpt-src.tar.gz"
REMOTE_LOG = "dynpt-run.log"
REMOTE_PID = "dynpt-run.pid"
LIBTPU_RELEASES = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
RECREATE_STATES = ("PREEMPTED", "TERMINATED")
_SKIP_IN_TARBALL = frozenset({".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis",
                              ".ruff_cache", "build", "dist"})
_SKIP_AT_TOP = frozenset({"data", "runs"})  # local toy data and run dirs: the TPU reads gs://


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
  """Everything a launch needs; validated on construction."""
  name: str
  zone: str
  accelerator: str
  runtime_version: str
  gin_file: str
  gin_bindings: tuple[str, ...]
  run_dir: str
  spot: bool = False
  preemptible: bool = False
  project: str | None = None
  jax_spec: str = "jax[tpu]"
  data_dir: str | None = None

  def __post_init__(self):
    if not self.run_dir.startswith("gs://") or len(self.run_dir) <= len("gs://"):
      raise ValueError(f"--run_dir must be a gs:// path (the TPU workers and a resumed run "
                       f"share it), got {self.run_dir!r}")
    if "'" in self.run_dir or any(b.split("=", 1)[0].strip() == "RUN_DIR"
                                  for b in self.gin_bindings):
      raise ValueError("RUN_DIR is set from --run_dir (without quotes in it); do not bind it "
                       "with --gin.RUN_DIR")
    if self.data_dir is not None and not self.data_dir.startswith("gs://"):
      raise ValueError(f"--data_dir must be a gs:// path the TPU workers can read, "
                       f"got {self.data_dir!r}")
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", self.name):
      raise ValueError(f"--name must be lower-case letters, digits and hyphens, got {self.name!r}")
    if not re.fullmatch(r"[a-z0-9]+-\d+", self.accelerator):
      raise ValueError(f"--accelerator must look like v4-32, got {self.accelerator!r}")
    if self.spot and self.preemptible:
      raise ValueError("--spot and --preemptible are exclusive")
    for binding in self.gin_bindings:
      if "=" not in binding or not binding.split("=", 1)[0].strip():
        raise ValueError(f"gin binding must be KEY=VALUE, got {binding!r}")


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """``--gin.KEY=VALUE`` (or ``--gin.KEY VALUE``) -> ``--gin=KEY=VALUE`` for absl."""
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--gin.") and len(arg) > len("--gin."):
      binding = arg[len("--gin."):]
      if "=" not in binding:
        if i + 1 >= len(argv):
          raise ValueError(f"{arg} needs a value: write {arg}=VALUE")
        i += 1
        binding = f"{binding}={argv[i]}"
      out.append(f"--gin={binding}")
    else:
      out.append(arg)
    i += 1
  return out


def _tpu_vm(config: LaunchConfig, verb: str, *args: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *args, f"--zone={config.zone}"]
  if config.project:
    cmd.append(f"--project={config.project}")
  return cmd


def describe_command(config: LaunchConfig) -> list[str]:
  """Prints the TPU's state (READY, PREEMPTED, ...); fails when it does not exist."""
  return _tpu_vm(config, "describe", config.name, "--format=value(state)")


def delete_command(config: LaunchConfig) -> list[str]:
  return _tpu_vm(config, "delete", config.name, "--quiet")


def create_command(config: LaunchConfig) -> list[str]:
  cmd = _tpu_vm(config, "create", config.name, f"--accelerator-type={config.accelerator}",
                f"--version={config.runtime_version}")
  if config.spot:
    cmd.append("--spot")
  if config.preemptible:
    cmd.append("--preemptible")
  return cmd


def _ssh_all(config: LaunchConfig, script: str, worker: str = "all") -> list[str]:
  return _tpu_vm(config, "ssh", config.name, f"--worker={worker}", f"--command={script}")


def install_commands(config: LaunchConfig, tarball: str) -> list[list[str]]:
  """Copies the source tarball to every worker, unpacks and installs it."""
  copy = _tpu_vm(config, "scp", tarball, f"{config.name}:{REMOTE_TARBALL}", "--worker=all")
  script = (f"rm -rf ~/{REMOTE_DIR} && mkdir -p ~/{REMOTE_DIR} && "
            f"tar -xzf ~/{REMOTE_TARBALL} -C ~/{REMOTE_DIR} && cd ~/{REMOTE_DIR} && "
            f"python3 -m pip install -q -e . {shlex.quote(config.jax_spec)} -f {LIBTPU_RELEASES}")
  return [copy, _ssh_all(config, script)]


def train_argv(config: LaunchConfig) -> list[str]:
  """The trainer's command line on each worker; the run dir is dynpt.main's RUN_DIR macro."""
  return (["python3", "-m", "dynpt.main", f"--gin_file={config.gin_file}"]
          + [f"--gin.{binding}" for binding in config.gin_bindings]
          + [f"--gin.RUN_DIR='{config.run_dir}'"])


def run_command(config: LaunchConfig) -> list[str]:
  """Stops this tool's previous run (pid file) and starts training on every worker."""
  stop_previous = (f"if [ -f ~/{REMOTE_PID} ]; then kill $(cat ~/{REMOTE_PID}) 2>/dev/null; "
                   f"sleep 5; fi")
  env = "DYNPT_CLOUD_TPU=1"
  if config.data_dir:
    env += f" DYNPT_DATA_DIR={shlex.quote(config.data_dir)}"
  start = (f"cd ~/{REMOTE_DIR} && {env} nohup {shlex.join(train_argv(config))} "
           f"> ~/{REMOTE_LOG} 2>&1 < /dev/null & echo $! > ~/{REMOTE_PID}")
  return _ssh_all(config, f"{stop_previous}; {start}")


def logs_command(config: LaunchConfig) -> list[str]:
  """Follows worker 0's log (process 0 does the logging)."""
  return _ssh_all(config, f"tail -n +1 -F ~/{REMOTE_LOG}", worker="0")


def plan_commands(config: LaunchConfig, state: str | None, tarball: str,
                  stream_logs: bool = True) -> list[list[str]]:
  """All commands after the state lookup, for a TPU in `state` (None: absent).

  Raises:
    RuntimeError: the TPU is in a state the launcher should not touch
      (CREATING, STOPPING, ...): wait, then run again.
  """
  commands = []
  if state is None:
    commands.append(create_command(config))
  elif state in RECREATE_STATES:
    commands += [delete_command(config), create_command(config)]
  elif state != "READY":
    raise RuntimeError(f"TPU {config.name} in {config.zone} is {state}; run again when it is "
                       "READY, or delete it")
  commands += install_commands(config, tarball)
  commands.append(run_command(config))
  if stream_logs:
    commands.append(logs_command(config))
  return commands


def tpu_state(config: LaunchConfig) -> str | None:
  """The TPU's state, or None when it does not exist."""
  result = subprocess.run(describe_command(config), capture_output=True, text=True, check=False)
  if result.returncode != 0:
    if "NOT_FOUND" in result.stderr or "not found" in result.stderr.lower():
      return None
    raise RuntimeError(f"gcloud describe of {config.name} failed:\n{result.stderr}")
  return result.stdout.strip() or None


def make_tarball(source_dir: str, path: str) -> str:
  """Packs the source tree (no virtualenv, git or caches) into a .tar.gz at `path`."""
  def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    path = os.path.normpath(info.name)
    base = os.path.basename(path)
    if base in _SKIP_IN_TARBALL or base.endswith(".egg-info") or path in _SKIP_AT_TOP:
      return None
    return info

  with tarfile.open(path, "w:gz") as tar:
    tar.add(source_dir, arcname=".", filter=keep)
  logging.info("Packed %s into %s (%.1f MB)", source_dir, path, os.path.getsize(path) / 1e6)
  return path


def define_flags() -> None:
  """Defines the command-line flags; only when run as a program, so that importing
  the builders (tests, other tools) leaves absl's global flags untouched."""
  flags.DEFINE_string("name", None, "TPU VM name (created if absent).", required=True)
  flags.DEFINE_string("zone", None, "GCP zone, e.g. us-central2-b.", required=True)
  flags.DEFINE_string("accelerator", "v4-32", "TPU type, e.g. v4-8, v4-32.")
  flags.DEFINE_string("runtime_version", "tpu-ubuntu2204-base",
                      "TPU VM software version (image).")
  flags.DEFINE_string("gin_file", None, "Gin file, relative to --source_dir, or a gs:// path.",
                      required=True)
  flags.DEFINE_multi_string("gin", [], "Gin binding KEY=VALUE; write --gin.KEY=VALUE.")
  flags.DEFINE_string("run_dir", None, "Run directory; must be gs://.", required=True)
  flags.DEFINE_bool("spot", False, "Create a spot TPU VM.")
  flags.DEFINE_bool("preemptible", False, "Create a (legacy) preemptible TPU VM.")
  flags.DEFINE_string("data_dir", None, "gs:// data dir, exported as DYNPT_DATA_DIR.")
  flags.DEFINE_string("project", None, "GCP project; default: gcloud's config.")
  flags.DEFINE_string("source_dir", os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "Source tree shipped to the workers.")
  flags.DEFINE_string("jax_spec", "jax[tpu]", "pip requirement for JAX on the TPU.")
  flags.DEFINE_bool("stream_logs", True, "Follow worker 0's log after the start.")
  flags.DEFINE_bool("dry_run", False, "Print the gcloud commands, one per line, only.")


def config_from_flags(flag_values: flags.FlagValues) -> LaunchConfig:
  """A validated config; the gin file must exist in the tree that is shipped."""
  gin_file, source_dir = flag_values.gin_file, flag_values.source_dir
  if not gin_file.startswith("gs://"):
    if os.path.isabs(gin_file):
      raise ValueError(f"--gin_file must be relative to --source_dir ({source_dir}) so it "
                       f"is shipped to the workers, got {gin_file!r}")
    if not os.path.isfile(os.path.join(source_dir, gin_file)):
      raise ValueError(f"--gin_file {gin_file!r} not found under --source_dir {source_dir}")
  return LaunchConfig(name=flag_values.name, zone=flag_values.zone,
                      accelerator=flag_values.accelerator,
                      runtime_version=flag_values.runtime_version, gin_file=gin_file,
                      gin_bindings=tuple(flag_values.gin), run_dir=flag_values.run_dir,
                      spot=flag_values.spot, preemptible=flag_values.preemptible,
                      project=flag_values.project, jax_spec=flag_values.jax_spec,
                      data_dir=flag_values.data_dir)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  flag_values = flags.FLAGS
  try:
    config = config_from_flags(flag_values)
  except ValueError as e:
    sys.exit(f"launch_tpu: {e}")
  stream_logs = flag_values.stream_logs
  tarball = os.path.join(tempfile.gettempdir(), f"dynpt-src-{config.name}.tar.gz")
  if flag_values.dry_run:
    # The TPU is assumed absent: the plan then shows every step.
    for cmd in [describe_command(config)] + plan_commands(config, None, tarball,
                                                          stream_logs):
      print(shlex.join(cmd))
    return
  state = tpu_state(config)
  logging.info("TPU %s in %s: %s", config.name, config.zone, state or "absent")
  commands = plan_commands(config, state, tarball, stream_logs)
  make_tarball(flag_values.source_dir, tarball)
  for cmd in commands:
    logging.info("Running: %s", shlex.join(cmd))
    try:
      subprocess.run(cmd, check=True)
    except KeyboardInterrupt:
      if cmd is commands[-1] and stream_logs:
        logging.info("Stopped following the log; training goes on on the TPU.")
        return
      raise


if __name__ == "__main__":
  define_flags()
  app.run(main, argv=rewrite_gin_args(sys.argv))
