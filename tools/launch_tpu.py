r"""Launches dynpt pretraining on a Cloud TPU VM or pod slice with gcloud.

  python tools/launch_tpu.py --name=dynpt-v4 --zone=us-central2-b --accelerator=v4-32 \
    --gin_file=gin_configs/pretrain/paper_base.gin --gin.NUM_STEPS=500000 \
    --run_dir=gs://my-bucket/dynpt/run1 --spot

What it does, in order (each step one gcloud command; ``--dry_run`` prints them):
1. looks the TPU up; creates it when absent, deletes and recreates it when it was
   preempted (state PREEMPTED or TERMINATED), reuses it when READY;
2. copies a tarball of the source tree to every worker (``scp --worker=all``);
3. on every worker (``ssh --worker=all``) unpacks it into a fresh release folder,
   ``~/dynpt/releases/<launch id>``, then stops the trainer a previous launch started:
   SIGTERM to its whole process group, a wait of up to ``--stop_timeout`` seconds
   for it to write its checkpoint and exit (75), SIGKILL only after that;
4. on every worker, only once no trainer runs, makes the release its own virtual
   environment, ``<release>/.venv``, on the Python dynpt is tested on
   (``--python_version``, 3.11; the TPU VM images ship an older ``python3``, which
   JAX no longer supports, so ``uv`` (pinned) fetches that Python when the image
   lacks it), and installs the tested pins into it: ``requirements.txt`` (what
   ``setup.py`` installs), ``jax[tpu]`` at the same jax version, and the release
   itself without dependencies;
5. on every worker, starts ``.venv/bin/python -m dynpt.main --gin_file=... --gin.KEY=VALUE ...
   --gin.RUN_DIR='gs://...'`` from the release, in a session of its own, logging to
   ``~/dynpt/logs/<launch id>.log``; ``~/dynpt/current`` then names that release and
   releases no process uses any more are removed. ``DYNPT_CLOUD_TPU=1`` makes
   `dynpt.train.distributed` let JAX find the other hosts, and ``--data_dir`` is
   exported as ``DYNPT_DATA_DIR``;
6. streams worker 0's log (Ctrl-C stops the streaming, not the training).

Steps 3 and 5 run `tools/tpu_worker.py` from the new release; it records the
trainer's process group and exit status in ``~/dynpt/trainer.json``.

Resume after preemption: run the same command again. The run directory is in a
bucket, so it outlives the TPU, and the trainer restores the latest checkpoint it
finds there. An object store has no locks: the run is kept to one trainer by this
launcher, which owns the slice and stops the old trainer before starting a new one.
Gin bindings are written ``--gin.KEY=VALUE`` (as for dynpt.main); absl flag names
cannot hold dots, so they are rewritten to ``--gin=KEY=VALUE`` before parsing, and
both spellings work.

Simulation: with ``DYNPT_LAUNCH_TPU_SIMULATION=1`` in the environment, ``--run_dir``
and ``--data_dir`` may be absolute local paths. Only the tests set it, together with
a stand-in ``gcloud`` that runs each worker's commands on this machine
(tests/test_launch_tpu_sim.py); on a real TPU a local run dir dies with the VM.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

REMOTE_ROOT = "dynpt"  # ~/dynpt on each worker: releases/, current, logs/, trainer.json
WORKER_TOOL = "tools/tpu_worker.py"  # relative to a release
REQUIREMENTS = "requirements.txt"  # setup.py's install_requires, as `make setup` installs it
LIBTPU_RELEASES = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
RECREATE_STATES = ("PREEMPTED", "TERMINATED")
DEFAULT_STOP_TIMEOUT_S = 300
# The workers' Python: the version dynpt is tested on (setup.py's python_requires,
# .ci/run), in a virtual environment inside each release, made by a pinned uv.
WORKER_PYTHON = "3.11"
UV_SPEC = "uv==0.13.9"
RELEASE_VENV = ".venv"  # relative to a release
VENV_PYTHON = f"{RELEASE_VENV}/bin/python"
SIMULATION_ENV = "DYNPT_LAUNCH_TPU_SIMULATION"
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SKIP_IN_TARBALL = frozenset({".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis",
                              ".ruff_cache", "build", "dist"})
_SKIP_AT_TOP = frozenset({"data", "runs"})  # local toy data and run dirs: the TPU reads gs://


def read_pins(requirements_path: str) -> dict[str, str]:
  """``name==version`` lines of a requirements file as {normalised name: version}.

  Raises:
    ValueError: a requirement is not pinned to one version (``==``): the workers must
      get what the tests ran with.
  """
  pins = {}
  with open(requirements_path) as f:
    for line in f:
      line = line.split("#", 1)[0].strip()
      if not line:
        continue
      match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([A-Za-z0-9_.+!\-]+)", line)
      if not match:
        raise ValueError(f"{requirements_path}: {line!r} is not pinned as NAME==VERSION")
      pins[_normalise(match.group(1))] = match.group(3)
  return pins


def _normalise(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def pinned_jax_spec(requirements_path: str = os.path.join(_REPO, REQUIREMENTS)) -> str:
  """``jax[tpu]==V`` for the jax version `requirements_path` pins."""
  pins = read_pins(requirements_path)
  if "jax" not in pins:
    raise ValueError(f"{requirements_path} pins no jax version")
  return f"jax[tpu]=={pins['jax']}"


def new_launch_id() -> str:
  """Sortable and unique: UTC time plus 4 random hex digits, e.g. 20250101-120000-3fa2."""
  return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def _is_local_abs(path: str) -> bool:
  return os.path.isabs(path) and "://" not in path


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
  """Everything a launch needs; validated on construction.

  `local_paths` (the simulated TPU VM of the tests only) lets the run and data
  dirs be absolute local paths instead of gs:// ones.
  """
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
  jax_spec: str = dataclasses.field(default_factory=pinned_jax_spec)
  data_dir: str | None = None
  launch_id: str = dataclasses.field(default_factory=new_launch_id)
  stop_timeout_s: int = DEFAULT_STOP_TIMEOUT_S
  local_paths: bool = False
  python_version: str = WORKER_PYTHON

  def __post_init__(self):
    local_ok = lambda path: self.local_paths and _is_local_abs(path)
    if not (self.run_dir.startswith("gs://") and len(self.run_dir) > len("gs://")
            or local_ok(self.run_dir)):
      raise ValueError(f"--run_dir must be a gs:// path (the TPU workers and a resumed run "
                       f"share it), got {self.run_dir!r}")
    if "'" in self.run_dir or any(b.split("=", 1)[0].strip() == "RUN_DIR"
                                  for b in self.gin_bindings):
      raise ValueError("RUN_DIR is set from --run_dir (without quotes in it); do not bind it "
                       "with --gin.RUN_DIR")
    if self.data_dir is not None and not (self.data_dir.startswith("gs://")
                                          or local_ok(self.data_dir)):
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
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.launch_id):
      raise ValueError(f"--launch_id must be letters, digits, '.', '_' and '-', "
                       f"got {self.launch_id!r}")
    if not re.fullmatch(r"3\.\d+(\.\d+)?", self.python_version):
      raise ValueError(f"--python_version must look like 3.11, got {self.python_version!r}")
    if tuple(int(x) for x in self.python_version.split(".")[:2]) < (3, 11):
      raise ValueError(f"--python_version {self.python_version} is below the 3.11 that "
                       "dynpt and its JAX need")
    if self.stop_timeout_s < 0:
      raise ValueError(f"--stop_timeout must be >= 0 seconds, got {self.stop_timeout_s}")


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


# Remote paths start with ~/ so that each worker's shell expands them; the launch id is
# validated to need no quoting.
def release_dir(config: LaunchConfig) -> str:
  """This launch's code on each worker: a fresh folder, never changed after unpacking."""
  return f"~/{REMOTE_ROOT}/releases/{config.launch_id}"


def _remote_tarball(config: LaunchConfig) -> str:
  return f"dynpt-src-{config.launch_id}.tar.gz"  # in the workers' home directory


def _worker_tool(config: LaunchConfig, *args: str) -> str:
  return " ".join([f"python3 {release_dir(config)}/{WORKER_TOOL}", *map(shlex.quote, args)])


def copy_command(config: LaunchConfig, tarball: str) -> list[str]:
  """Copies the source tarball to every worker's home directory."""
  return _tpu_vm(config, "scp", tarball, f"{config.name}:{_remote_tarball(config)}",
                 "--worker=all")


def stop_command(config: LaunchConfig) -> list[str]:
  """Unpacks the tarball into a fresh release folder (the running code is not
  touched), then stops the previous trainer's process group: SIGTERM, up to
  `stop_timeout_s` for its checkpoint, then SIGKILL."""
  release = release_dir(config)
  script = (f"mkdir -p ~/{REMOTE_ROOT}/releases && mkdir {release} && "
            f"tar -xzf ~/{_remote_tarball(config)} -C {release} && "
            f"rm ~/{_remote_tarball(config)} && "
            + _worker_tool(config, "stop", f"--timeout={config.stop_timeout_s}"))
  return _ssh_all(config, script)


def install_argvs(config: LaunchConfig) -> list[list[str]]:
  """The commands run in the release: its virtual environment, the tested pins in
  it, then dynpt without deps.

  The image's ``python3`` only installs the pinned ``uv`` for its user (Ubuntu
  24.04 images mark the system Python externally managed, hence the environment
  variable; older pips ignore it). ``uv venv`` makes ``.venv`` on
  `python_version`, downloading that Python when the image lacks it, with pip in
  it. `make setup` installs ``requirements.txt`` and then the package with
  ``--no-deps``; the venv gets the same, plus ``jax[tpu]`` at the pinned jax
  version (its extra adds the matching libtpu). A fresh venv per release means a
  relaunch never changes the packages under a process of an older release.
  """
  return [["env", "PIP_BREAK_SYSTEM_PACKAGES=1", "python3", "-m", "pip", "install", "-q",
           "--user", UV_SPEC],
          ["python3", "-m", "uv", "venv", "--seed", "--python", config.python_version,
           RELEASE_VENV],
          [VENV_PYTHON, "-m", "pip", "install", "-q", "-r", REQUIREMENTS, config.jax_spec,
           "-f", LIBTPU_RELEASES],
          [VENV_PYTHON, "-m", "pip", "install", "-q", "--no-deps", "-e", "."]]


def install_command(config: LaunchConfig) -> list[str]:
  """Installs the release's venv on every worker; runs only after `stop_command` succeeded."""
  script = " && ".join([f"cd {release_dir(config)}"] + [shlex.join(a)
                                                        for a in install_argvs(config)])
  return _ssh_all(config, script)


def train_argv(config: LaunchConfig) -> list[str]:
  """The trainer's command line on each worker; the run dir is dynpt.main's RUN_DIR macro."""
  return ([VENV_PYTHON, "-m", "dynpt.main", f"--gin_file={config.gin_file}"]
          + [f"--gin.{binding}" for binding in config.gin_bindings]
          + [f"--gin.RUN_DIR='{config.run_dir}'"])


def trainer_env(config: LaunchConfig) -> list[str]:
  env = ["DYNPT_CLOUD_TPU=1"]
  if config.data_dir:
    env.append(f"DYNPT_DATA_DIR={config.data_dir}")
  return env


def run_command(config: LaunchConfig) -> list[str]:
  """Starts the trainer from the release on every worker, in a session of its own."""
  args = ["start", f"--launch_id={config.launch_id}"]
  args += [f"--env={item}" for item in trainer_env(config)]
  return _ssh_all(config, _worker_tool(config, *args, "--", *train_argv(config)))


def log_path(config: LaunchConfig) -> str:
  return f"~/{REMOTE_ROOT}/logs/{config.launch_id}.log"


def logs_command(config: LaunchConfig) -> list[str]:
  """Follows worker 0's log (process 0 does the logging)."""
  return _ssh_all(config, f"tail -n +1 -F {log_path(config)}", worker="0")


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
  commands += [copy_command(config, tarball), stop_command(config), install_command(config),
               run_command(config)]
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
  flags.DEFINE_string("gin_file", None, "Gin file, relative to --source_dir or its "
                      "gin_configs/, or a gs:// path.", required=True)
  flags.DEFINE_multi_string("gin", [], "Gin binding KEY=VALUE; write --gin.KEY=VALUE.")
  flags.DEFINE_string("run_dir", None, "Run directory; must be gs://.", required=True)
  flags.DEFINE_bool("spot", False, "Create a spot TPU VM.")
  flags.DEFINE_bool("preemptible", False, "Create a (legacy) preemptible TPU VM.")
  flags.DEFINE_string("data_dir", None, "gs:// data dir, exported as DYNPT_DATA_DIR.")
  flags.DEFINE_string("project", None, "GCP project; default: gcloud's config.")
  flags.DEFINE_string("source_dir", _REPO, "Source tree shipped to the workers.")
  flags.DEFINE_string("jax_spec", None,
                      "pip requirement for JAX on the TPU; default jax[tpu] at the jax "
                      "version requirements.txt pins. Anything else runs untested pins.")
  flags.DEFINE_string("python_version", WORKER_PYTHON,
                      "Python of the workers' virtual environment (uv fetches it when "
                      "the image has none); the tested one by default.")
  flags.DEFINE_integer("stop_timeout", DEFAULT_STOP_TIMEOUT_S,
                       "Seconds the previous trainer gets after SIGTERM to write its "
                       "checkpoint and exit before SIGKILL.")
  flags.DEFINE_string("launch_id", None,
                      "Names this launch's release and log on the workers; default: UTC "
                      "time plus a random suffix.")
  flags.DEFINE_bool("stream_logs", True, "Follow worker 0's log after the start.")
  flags.DEFINE_bool("dry_run", False, "Print the gcloud commands, one per line, only.")


def config_from_flags(flag_values: flags.FlagValues,
                      environ: dict[str, str] | None = None) -> LaunchConfig:
  """A validated config; the gin file and requirements.txt must be in the shipped tree."""
  environ = os.environ if environ is None else environ
  gin_file, source_dir = flag_values.gin_file, flag_values.source_dir
  if not gin_file.startswith("gs://"):
    if os.path.isabs(gin_file):
      raise ValueError(f"--gin_file must be relative to --source_dir ({source_dir}) so it "
                       f"is shipped to the workers, got {gin_file!r}")
    # dynpt.main finds a gin file from the release's root or its gin_configs/.
    if not any(os.path.isfile(os.path.join(source_dir, d, gin_file))
               for d in ("", "gin_configs")):
      raise ValueError(f"--gin_file {gin_file!r} not found under --source_dir {source_dir} "
                       "(nor under its gin_configs/)")
  requirements = os.path.join(source_dir, REQUIREMENTS)
  if not os.path.isfile(requirements):
    raise ValueError(f"{REQUIREMENTS} not found under --source_dir {source_dir}: the workers "
                     "install the pins from it")
  jax_spec = flag_values.jax_spec or pinned_jax_spec(requirements)
  if jax_spec != pinned_jax_spec(requirements):
    logging.warning("--jax_spec=%s departs from the tested pins (%s)", jax_spec,
                    pinned_jax_spec(requirements))
  simulated = environ.get(SIMULATION_ENV) == "1"
  if simulated:
    logging.warning("%s=1: a simulated TPU VM; local run and data dirs are accepted",
                    SIMULATION_ENV)
  return LaunchConfig(name=flag_values.name, zone=flag_values.zone,
                      accelerator=flag_values.accelerator,
                      runtime_version=flag_values.runtime_version, gin_file=gin_file,
                      gin_bindings=tuple(flag_values.gin), run_dir=flag_values.run_dir,
                      spot=flag_values.spot, preemptible=flag_values.preemptible,
                      project=flag_values.project, jax_spec=jax_spec,
                      data_dir=flag_values.data_dir,
                      launch_id=flag_values.launch_id or new_launch_id(),
                      stop_timeout_s=flag_values.stop_timeout, local_paths=simulated,
                      python_version=flag_values.python_version)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  flag_values = flags.FLAGS
  try:
    config = config_from_flags(flag_values)
  except ValueError as e:
    sys.exit(f"launch_tpu: {e}")
  stream_logs = flag_values.stream_logs
  tarball = os.path.join(tempfile.gettempdir(), f"dynpt-src-{config.launch_id}.tar.gz")
  if flag_values.dry_run:
    # The TPU is assumed absent: the plan then shows every step.
    for cmd in [describe_command(config)] + plan_commands(config, None, tarball,
                                                          stream_logs):
      print(shlex.join(cmd))
    return
  state = tpu_state(config)
  logging.info("TPU %s in %s: %s; launch %s", config.name, config.zone, state or "absent",
               config.launch_id)
  commands = plan_commands(config, state, tarball, stream_logs)
  make_tarball(flag_values.source_dir, tarball)
  try:
    for cmd in commands:
      logging.info("Running: %s", shlex.join(cmd))
      try:
        subprocess.run(cmd, check=True)
      except KeyboardInterrupt:
        if cmd is commands[-1] and stream_logs:
          logging.info("Stopped following the log; training goes on on the TPU.")
          return
        raise
      except subprocess.CalledProcessError as e:
        sys.exit(f"launch_tpu: exit status {e.returncode} from: {shlex.join(cmd)}\n"
                 "Nothing after it ran; fix the cause and run the same command again.")
  finally:
    os.remove(tarball)
  logging.info("Launch %s is running; its log on each worker: %s", config.launch_id,
               log_path(config))


if __name__ == "__main__":
  from dynpt import console

  console.setup(native=False)  # Loads no C++ library; gcloud keeps the terminal.
  define_flags()
  console.run_app(main, argv=rewrite_gin_args(sys.argv))
