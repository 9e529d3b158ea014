"""The in-process malloc settings for XLA:CPU: what they set, what they leave alone, and
that a freed large block is reused instead of page-faulted in again."""
import os
import subprocess
import sys
import textwrap

import pytest

from dynpt import hostalloc

GLIBC = (2, 36)


def test_sets_every_parameter_by_default():
  settings = hostalloc.mallopt_settings({"PATH": "/bin"})
  assert settings == {"M_MMAP_MAX": (hostalloc.M_MMAP_MAX, 0),
                      "M_TRIM_THRESHOLD": (hostalloc.M_TRIM_THRESHOLD, -1),
                      "M_ARENA_MAX": (hostalloc.M_ARENA_MAX, 4)}


def test_keeps_what_the_user_set_through_glibc():
  settings = hostalloc.mallopt_settings({"MALLOC_ARENA_MAX": "2"})
  assert set(settings) == {"M_MMAP_MAX", "M_TRIM_THRESHOLD"}
  settings = hostalloc.mallopt_settings(
      {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=16:glibc.malloc.mmap_max=8"})
  assert set(settings) == {"M_TRIM_THRESHOLD", "M_ARENA_MAX"}


def test_tuning_applies_only_to_cpu_hosts_that_did_not_opt_out():
  assert hostalloc.tuning_applies({}, GLIBC)
  assert hostalloc.tuning_applies({"JAX_PLATFORMS": "cpu"}, GLIBC)
  assert not hostalloc.tuning_applies({hostalloc.ENV_MODE: "system"}, GLIBC)
  assert not hostalloc.tuning_applies({}, GLIBC, accelerator=True)
  assert not hostalloc.tuning_applies({"JAX_PLATFORMS": "tpu"}, GLIBC)
  assert not hostalloc.tuning_applies({"JAX_PLATFORMS": "cuda"}, GLIBC)
  assert not hostalloc.tuning_applies({}, None)  # Not glibc: nothing applies.


def test_cpu_only_hosts_default_jax_to_the_cpu():
  env = {}
  assert hostalloc.default_platforms(env, accelerator=False) == "cpu"
  assert env == {"JAX_PLATFORMS": "cpu"}
  env = {"JAX_PLATFORMS": "tpu,cpu"}  # The user's choice stays.
  assert hostalloc.default_platforms(env, accelerator=False) is None
  assert env == {"JAX_PLATFORMS": "tpu,cpu"}
  env = {}  # A host with a GPU or TPU keeps JAX's own search.
  assert hostalloc.default_platforms(env, accelerator=True) is None and env == {}


@pytest.mark.skipif(hostalloc.accelerator_present(), reason="a host with an accelerator")
def test_an_entry_point_on_a_cpu_host_does_not_load_libtpu():
  """With libtpu installed, JAX's default search would load it in every process
  (~200 MB resident, libtpu's start-up errors, /tmp/libtpu_lockfile held)."""
  script = textwrap.dedent("""
      from dynpt import hostalloc
      hostalloc.configure_process()
      import jax
      print(jax.devices()[0].platform)
      print(any("libtpu" in line for line in open("/proc/self/maps")))
  """)
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                        text=True, check=True, timeout=120)
  assert proc.stdout.split() == ["cpu", "False"], proc.stderr[-2000:]
  assert "libtpu" not in proc.stderr and "TPU" not in proc.stderr


def test_bad_mode_names_the_variable():
  with pytest.raises(ValueError, match=hostalloc.ENV_MODE):
    hostalloc.tuning_applies({hostalloc.ENV_MODE: "jemalloc"}, GLIBC)


@pytest.mark.skipif(hostalloc.glibc_version() is None or hostalloc.accelerator_present(),
                    reason="needs glibc on a CPU-only host")
@pytest.mark.parametrize("mode", ["tuned", "system"])
def test_configured_process_reuses_freed_blocks_and_dispatches_synchronously(
    tmp_path, mode):
  # A 64 MB block is above glibc's largest mmap threshold (32 MB): by default each
  # malloc maps it afresh and touching it faults every page in again; tuned, the second
  # malloc gets the heap pages the first one mapped, and where the kernel gives huge
  # pages on request, even the first faults in 2 MB at a time.
  script = tmp_path / "entry.py"
  script.write_text(textwrap.dedent("""
      import ctypes, resource
      from dynpt import hostalloc
      print("configured", hostalloc.configure_process(), hostalloc.configure_process())
      libc = ctypes.CDLL(None)
      libc.malloc.restype = ctypes.c_void_p
      libc.free.argtypes = [ctypes.c_void_p]
      size = 64 << 20
      for attempt in ("first", "faults"):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
        print(attempt, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
      import jax
      print("async", jax.config.values["jax_cpu_enable_async_dispatch"])
  """))
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "JAX_PLATFORMS")}
  env[hostalloc.ENV_MODE] = mode
  env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = dict(line.split(" ", 1) for line in subprocess.run(
      [sys.executable, str(script)], env=env, capture_output=True, text=True,
      check=True, timeout=120).stdout.splitlines())
  tuned = mode == "tuned"
  assert out["configured"] == f"{tuned} {tuned}"
  pages = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
  faults = int(out["faults"])
  assert faults < pages // 10 if tuned else faults >= pages // 2, faults
  if tuned and hostalloc.thp_on_request():  # The heap is backed by 2 MB pages.
    assert int(out["first"]) < pages // 10, out["first"]
  # The tuned process runs XLA:CPU programs on the calling thread (the main heap).
  assert out["async"] == str(not tuned)
