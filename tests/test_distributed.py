"""Tests of cluster detection and the jax.distributed start-up (no real initialisation)."""

import jax
import pytest

from dynpt.train import distributed
from dynpt.train.distributed import ClusterSpec
from dynpt.train.distributed import detect_cluster

_SRUN_ENV = {  # what srun sets for task 2 of 4, one task per node
    "SLURM_JOB_ID": "123456", "SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "0",
    "SLURM_STEP_NODELIST": "gpu[003-005,9]", "SLURM_JOB_NODELIST": "gpu[003-005,9]",
    "SLURM_STEP_NUM_NODES": "4",
}
_PORT = 123456 % 4096 + 61440  # JAX's rule: job id mod 4096 + 61440


def test_nothing_set_is_single_process():
  assert detect_cluster({}) is None
  assert detect_cluster({"HOME": "/root"}) is None


def test_dynpt_env_vars():
  env = {"DYNPT_COORDINATOR_ADDRESS": "10.0.0.1:1234", "DYNPT_NUM_PROCESSES": "4",
         "DYNPT_PROCESS_ID": "3"}
  assert detect_cluster(env) == ClusterSpec("env", "10.0.0.1:1234", 4, 3)
  # They win over SLURM, also when they say "one process".
  assert detect_cluster({**_SRUN_ENV, **env}).kind == "env"
  assert detect_cluster({**_SRUN_ENV, "DYNPT_NUM_PROCESSES": "1"}) is None


@pytest.mark.parametrize("env, message", [
    ({"DYNPT_NUM_PROCESSES": "4", "DYNPT_PROCESS_ID": "4",
      "DYNPT_COORDINATOR_ADDRESS": "h:1"}, "DYNPT_PROCESS_ID=4 must be < DYNPT_NUM_PROCESSES=4"),
    ({"DYNPT_NUM_PROCESSES": "four", "DYNPT_PROCESS_ID": "0",
      "DYNPT_COORDINATOR_ADDRESS": "h:1"}, "DYNPT_NUM_PROCESSES must be an integer"),
    ({"DYNPT_NUM_PROCESSES": "2", "DYNPT_PROCESS_ID": "0"}, "DYNPT_COORDINATOR_ADDRESS missing"),
    ({"DYNPT_NUM_PROCESSES": "2", "DYNPT_PROCESS_ID": "0",
      "DYNPT_COORDINATOR_ADDRESS": "nohostport"}, "DYNPT_COORDINATOR_ADDRESS must be 'host:port'"),
    ({"DYNPT_NUM_PROCESSES": "0"}, "DYNPT_NUM_PROCESSES must be >= 1"),
    ({"DYNPT_NUM_PROCESSES": "1", "DYNPT_PROCESS_ID": "1"}, "DYNPT_PROCESS_ID=1 must be < "),
    ({**_SRUN_ENV, "SLURM_PROCID": "4"}, "SLURM_PROCID=4 must be < SLURM_NTASKS=4"),
    ({**_SRUN_ENV, "SLURM_NTASKS": "x"}, "SLURM_NTASKS must be an integer"),
    ({"SLURM_NTASKS": "2", "SLURM_PROCID": "0"}, "SLURM_JOB_NODELIST"),
    ({"TPU_WORKER_HOSTNAMES": "a,b", "TPU_WORKER_ID": "2"}, "TPU_WORKER_ID=2 must be <"),
])
def test_inconsistent_settings_name_the_variable(env, message):
  with pytest.raises(ValueError, match=message):
    detect_cluster(env)


def test_slurm_one_task_per_node_passes_values_explicitly():
  # JAX's own detection would restrict each process to GPU SLURM_LOCALID (= 0).
  assert detect_cluster(_SRUN_ENV) == ClusterSpec("slurm", f"gpu003:{_PORT}", 4, 2,
                                                  jax_detects=False)


def test_slurm_one_task_per_gpu_lets_jax_detect():
  env = {**_SRUN_ENV, "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1"}
  assert detect_cluster(env) == ClusterSpec("slurm", f"gpu003:{_PORT}", 16, 9, jax_detects=True)


def test_slurm_without_step_vars_gives_explicit_values():
  env = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
         "SLURM_JOB_NODELIST": "node17,node18", "DYNPT_COORDINATOR_PORT": "29500"}
  assert detect_cluster(env) == ClusterSpec("slurm", "node17:29500", 2, 1, jax_detects=False)
  assert detect_cluster({**env, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None


@pytest.mark.parametrize("node_list, first", [
    ("node001", "node001"), ("node001,host2", "node001"), ("node[001-015],host2", "node001"),
    ("node[007,009-015]", "node007"), ("gpu-a[12]", "gpu-a12")])
def test_first_slurm_host(node_list, first):
  assert distributed._first_slurm_host(node_list) == first


def test_cloud_tpu():
  env = {"TPU_WORKER_HOSTNAMES": "t1v-0,t1v-1,t1v-2,t1v-3", "TPU_WORKER_ID": "1"}
  assert detect_cluster(env) == ClusterSpec("tpu", "t1v-0:8482", 4, 1, jax_detects=True)
  assert detect_cluster({"TPU_WORKER_HOSTNAMES": "t1v-0"}) is None  # one host
  assert detect_cluster({"DYNPT_CLOUD_TPU": "1"}) == ClusterSpec("tpu", None, None, None,
                                                                 jax_detects=True)


@pytest.fixture
def init_calls(monkeypatch):
  """Records jax.distributed.initialize calls instead of starting a runtime."""
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  for name in list(_SRUN_ENV) + [
      "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "DYNPT_COORDINATOR_ADDRESS", "DYNPT_NUM_PROCESSES",
      "DYNPT_PROCESS_ID", "DYNPT_CLOUD_TPU", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
      "DYNPT_COORDINATOR_PORT", "JAX_COORDINATOR_PORT"]:
    monkeypatch.delenv(name, raising=False)
  return calls


def test_initialize_single_process_does_nothing(init_calls):
  assert distributed.initialize_distributed() is False
  assert distributed.initialize_distributed(num_processes=1) is False
  assert init_calls == []


def test_initialize_with_explicit_args(init_calls):
  assert distributed.initialize_distributed("10.0.0.1:99", 2, 1, local_device_ids=[0])
  assert init_calls == [dict(coordinator_address="10.0.0.1:99", num_processes=2, process_id=1,
                             local_device_ids=[0], cluster_detection_method="deactivate")]
  with pytest.raises(ValueError, match="process_id=2 must be < num_processes=2"):
    distributed.initialize_distributed("10.0.0.1:99", 2, 2)
  with pytest.raises(ValueError, match="coordinator_address, process_id not given"):
    distributed.initialize_distributed(num_processes=2)


def test_initialize_from_env_vars(init_calls, monkeypatch):
  monkeypatch.setenv("DYNPT_COORDINATOR_ADDRESS", "h0:5000")
  monkeypatch.setenv("DYNPT_NUM_PROCESSES", "3")
  monkeypatch.setenv("DYNPT_PROCESS_ID", "0")
  assert distributed.initialize_distributed()
  assert init_calls == [dict(coordinator_address="h0:5000", num_processes=3, process_id=0,
                             local_device_ids=None, cluster_detection_method="deactivate")]


def test_initialize_under_srun(init_calls, monkeypatch):
  for name, value in _SRUN_ENV.items():
    monkeypatch.setenv(name, value)
  assert distributed.initialize_distributed()  # one task per node: explicit, all GPUs
  monkeypatch.setenv("SLURM_NTASKS", "8")  # two tasks per node: JAX detects
  assert distributed.initialize_distributed()
  assert init_calls == [
      dict(coordinator_address=f"gpu003:{_PORT}", num_processes=4, process_id=2,
           local_device_ids=None, cluster_detection_method="deactivate"),
      dict(local_device_ids=None)]


def test_initialize_twice_is_a_no_op(init_calls, monkeypatch):
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  assert distributed.initialize_distributed("h:1", 2, 0)
  assert init_calls == []
