"""Multi-host start-up: finds the cluster and calls `jax.distributed.initialize` once.

Every host of a TPU pod slice or a GPU cluster runs the same program; before any
JAX computation they must agree on a coordinator, the number of processes and
their own rank. Where that comes from, first match wins:

1. explicit arguments of `initialize_distributed`;
2. ``DYNPT_COORDINATOR_ADDRESS`` (``host:port``), ``DYNPT_NUM_PROCESSES``,
   ``DYNPT_PROCESS_ID``: any launcher, e.g. a hand-written ``ssh`` loop;
3. SLURM (``SLURM_JOB_ID``, ``SLURM_NTASKS``, ``SLURM_PROCID`` and a node list),
   one task per host or per GPU, started with ``srun``; the coordinator is the first host of
   the node list, on ``DYNPT_COORDINATOR_PORT`` if set, else a port derived from
   the job id as JAX does;
4. Cloud TPU: ``TPU_WORKER_HOSTNAMES`` (GKE and some images) or
   ``DYNPT_CLOUD_TPU=1`` (set by ``tools/launch_tpu.py``; the TPU VM metadata
   server then tells JAX the rest).

On Cloud TPU, and under ``srun`` with several tasks per node (one per GPU), JAX
detects the cluster itself, so `jax.distributed.initialize()` is called without
arguments and the values found here serve logging and validation. Otherwise the
values are passed explicitly with JAX's own detection off, so that a process
sees all the devices of its host (one process per host), unless
``local_device_ids`` or ``JAX_LOCAL_DEVICE_IDS`` say otherwise. A single process
does nothing.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import jax
from absl import logging

ENV_COORDINATOR = "DYNPT_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "DYNPT_NUM_PROCESSES"
ENV_PROCESS_ID = "DYNPT_PROCESS_ID"
ENV_COORDINATOR_PORT = "DYNPT_COORDINATOR_PORT"
ENV_CLOUD_TPU = "DYNPT_CLOUD_TPU"
_TPU_COORDINATOR_PORT = 8482  # the port JAX's Cloud TPU detection uses
# What JAX's own SLURM detection needs (jax/_src/clusters/slurm_cluster.py).
_JAX_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                   "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """A multi-process job as found in the environment.

  Attributes:
    kind: ``"explicit"``, ``"env"``, ``"slurm"`` or ``"tpu"``.
    coordinator_address: ``host:port`` of process 0; None when JAX finds it.
    num_processes: number of processes; None when JAX finds it (Cloud TPU).
    process_id: rank of this process; None when JAX finds it (Cloud TPU).
    jax_detects: whether `jax.distributed.initialize()` is left to find the
      values by itself (called without arguments).
  """
  kind: str
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  jax_detects: bool = False


def _parse_int(value: str | int, name: str) -> int:
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _validate(kind: str, coordinator: str | None, num: int | None, pid: int | None,
              names: tuple[str, str, str]) -> None:
  coord_name, num_name, pid_name = names
  if num is not None and num < 1:
    raise ValueError(f"{num_name} must be >= 1, got {num} ({kind})")
  if pid is not None and pid < 0:
    raise ValueError(f"{pid_name} must be >= 0, got {pid} ({kind})")
  if num is not None and pid is not None and pid >= num:
    raise ValueError(f"{pid_name}={pid} must be < {num_name}={num} ({kind})")
  if coordinator is not None:
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit():
      raise ValueError(f"{coord_name} must be 'host:port', got {coordinator!r} ({kind})")


def _first_slurm_host(node_list: str) -> str:
  """First host of a SLURM node list: 'gpu[003-005,9],cpu1' -> 'gpu003'."""
  node_list = node_list.strip()
  cut = next((i for i, ch in enumerate(node_list) if ch in ",["), len(node_list))
  prefix = node_list[:cut]
  if cut == len(node_list) or node_list[cut] == ",":
    return prefix
  first_range = node_list[cut + 1:].split("]", 1)[0].split(",", 1)[0]
  return prefix + first_range.split("-", 1)[0]


def _from_dynpt_env(env: Mapping[str, str]) -> ClusterSpec | None:
  names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
  num = _parse_int(env[ENV_NUM_PROCESSES], ENV_NUM_PROCESSES) if env.get(
      ENV_NUM_PROCESSES) else None
  pid = _parse_int(env[ENV_PROCESS_ID], ENV_PROCESS_ID) if env.get(ENV_PROCESS_ID) else None
  coordinator = env.get(ENV_COORDINATOR) or None
  _validate("env", coordinator, num, pid, names)
  if num == 1:
    return None
  missing = [n for n, v in zip(names, (coordinator, num, pid)) if v is None]
  if missing:
    present = [n for n in names if n not in missing]
    raise ValueError(f"{', '.join(present)} set but {', '.join(missing)} missing: set all "
                     "three for a multi-process run (or DYNPT_NUM_PROCESSES=1 for one)")
  return ClusterSpec("env", coordinator, num, pid)


def _from_slurm(env: Mapping[str, str]) -> ClusterSpec | None:
  num = _parse_int(env["SLURM_NTASKS"], "SLURM_NTASKS")
  pid = _parse_int(env["SLURM_PROCID"], "SLURM_PROCID")
  _validate("slurm", None, num, pid, ("", "SLURM_NTASKS", "SLURM_PROCID"))
  if num == 1:
    return None
  node_list = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
  if not node_list:
    raise ValueError("SLURM_NTASKS > 1 but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST "
                     "is set: cannot find the coordinator host")
  port_var = next((v for v in (ENV_COORDINATOR_PORT, "JAX_COORDINATOR_PORT") if env.get(v)), None)
  if port_var:
    port = _parse_int(env[port_var], port_var)
  else:
    # Same rule as JAX: a port in the top 4096 of the range, derived from the job
    # id, so concurrent jobs sharing a node do not collide.
    job_id = _parse_int(env.get("SLURM_JOB_ID", "0"), "SLURM_JOB_ID")
    port = job_id % 2**12 + (65535 - 2**12 + 1)
  coordinator = f"{_first_slurm_host(node_list)}:{port}"
  # JAX's own SLURM detection gives each process only the device numbered by its
  # SLURM_LOCALID: right for one task per GPU, wrong for one task per host (it
  # would hide all but the first GPU). So JAX detects only with several tasks per
  # node; with one per node the values above are passed explicitly.
  nodes_var = next((v for v in ("SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NNODES")
                    if env.get(v)), None)
  one_per_node = nodes_var is not None and _parse_int(env[nodes_var], nodes_var) == num
  jax_detects = (all(v in env for v in _JAX_SLURM_VARS) and not env.get(ENV_COORDINATOR_PORT)
                 and not one_per_node)
  return ClusterSpec("slurm", coordinator, num, pid, jax_detects=jax_detects)


def _from_cloud_tpu(env: Mapping[str, str]) -> ClusterSpec | None:
  hostnames = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES")
  if hostnames:
    hosts = [h for h in hostnames.split(",") if h.strip()]
    if len(hosts) <= 1:
      return None
    pid = None
    if env.get("TPU_WORKER_ID"):
      pid = _parse_int(env["TPU_WORKER_ID"], "TPU_WORKER_ID")
      _validate("tpu", None, len(hosts), pid, ("", "TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID"))
    coordinator = f"{hosts[0].strip().rsplit(':', 1)[0]}:{_TPU_COORDINATOR_PORT}"
    return ClusterSpec("tpu", coordinator, len(hosts), pid, jax_detects=True)
  if env.get(ENV_CLOUD_TPU, "").lower() in ("1", "true", "yes"):
    return ClusterSpec("tpu", None, None, None, jax_detects=True)
  return None


def detect_cluster(env: Mapping[str, str]) -> ClusterSpec | None:
  """Finds a multi-process job in an environment mapping (pure, for tests and logs).

  Args:
    env: environment variables, usually `os.environ`.

  Returns:
    The job, or None for a single process (nothing set, or a count of 1).

  Raises:
    ValueError: a variable is not an integer, a rank is out of range, or only
      some of the ``DYNPT_*`` variables are set; the message names the variable.
  """
  # The first source that is present decides, even when it says "one process":
  # DYNPT_NUM_PROCESSES=1 inside a SLURM allocation runs alone.
  if any(env.get(n) for n in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)):
    return _from_dynpt_env(env)
  if "SLURM_NTASKS" in env and "SLURM_PROCID" in env:
    return _from_slurm(env)
  return _from_cloud_tpu(env)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           local_device_ids: int | Sequence[int] | None = None) -> bool:
  """Calls `jax.distributed.initialize` when this is one of several processes.

  Call it first thing in `main`, before any other JAX call. A second call (e.g.
  `main` run twice in one process) finds the runtime up and changes nothing.

  Args:
    coordinator_address: ``host:port`` of process 0; overrides the environment.
    num_processes: number of processes; overrides the environment.
    process_id: rank of this process; overrides the environment.
    local_device_ids: devices this process owns (e.g. one GPU per process);
      passed through to JAX.

  Returns:
    True when this is a multi-process run (the distributed runtime is up),
    False for a single process (nothing is done).

  Raises:
    ValueError: inconsistent or partial settings, naming the variable/argument.
  """
  if any(v is not None for v in (coordinator_address, num_processes, process_id)):
    spec = _explicit_spec(coordinator_address, num_processes, process_id)
  else:
    spec = detect_cluster(os.environ)
  if spec is None:
    logging.debug("Single process: jax.distributed is not initialised.")
    return False
  if jax.distributed.is_initialized():
    logging.info("jax.distributed already initialised; %s not applied again.", spec)
    return True
  logging.info("Initialising jax.distributed for %s", spec)
  if spec.jax_detects:
    jax.distributed.initialize(local_device_ids=local_device_ids)
  else:
    # "deactivate": JAX must not override what was found here, in particular not
    # restrict a one-process-per-host job to one GPU (see `_from_slurm`).
    jax.distributed.initialize(coordinator_address=spec.coordinator_address,
                               num_processes=spec.num_processes,
                               process_id=spec.process_id,
                               local_device_ids=local_device_ids,
                               cluster_detection_method="deactivate")
  logging.info("jax.distributed ready: process %d of %d", jax.process_index(),
               jax.process_count())
  return True


def _explicit_spec(coordinator_address: str | None, num_processes: int | None,
                   process_id: int | None) -> ClusterSpec | None:
  """Explicit arguments, completed from the environment where one is missing."""
  detected = detect_cluster(os.environ)
  num = num_processes if num_processes is not None else (
      detected.num_processes if detected else None)
  if num == 1:
    return None
  pid = process_id if process_id is not None else (detected.process_id if detected else None)
  coord = coordinator_address or (detected.coordinator_address if detected else None)
  missing = [name for name, v in (("coordinator_address", coord), ("num_processes", num),
                                  ("process_id", pid)) if v is None]
  if missing:
    raise ValueError(f"initialize_distributed: {', '.join(missing)} not given and not found "
                     "in the environment")
  _validate("explicit", coord, num, pid, ("coordinator_address", "num_processes", "process_id"))
  return ClusterSpec("explicit", coord, num, pid)
