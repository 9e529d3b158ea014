"""The malloc re-exec for XLA:CPU: what it sets, what it leaves alone, and that it runs once."""
import os
import subprocess
import sys
import textwrap

import pytest

from dynpt import hostalloc

GLIBC = (2, 36)


def test_sets_every_variable_and_marks_the_process():
  env = hostalloc.tuned_environment({"PATH": "/bin"}, GLIBC)
  assert env["PATH"] == "/bin"
  for key, value in hostalloc.MALLOC_ENVIRONMENT.items():
    assert env[key] == value
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
  assert env[hostalloc.ENV_APPLIED] == "1"


def test_keeps_what_the_user_set():
  user = {"MALLOC_ARENA_MAX": "2", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=16"}
  env = hostalloc.tuned_environment(user, GLIBC)
  assert env["MALLOC_ARENA_MAX"] == "2"
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=16:glibc.malloc.hugetlb=1"
  # A user's own hugetlb choice wins, too.
  env = hostalloc.tuned_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC)
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0"


def test_nothing_to_do():
  done = dict(hostalloc.MALLOC_ENVIRONMENT, GLIBC_TUNABLES="glibc.malloc.hugetlb=1")
  assert hostalloc.tuned_environment(done, GLIBC) is None
  assert hostalloc.tuned_environment({hostalloc.ENV_APPLIED: "1"}, GLIBC) is None
  assert hostalloc.tuned_environment({hostalloc.ENV_MODE: "system"}, GLIBC) is None
  assert hostalloc.tuned_environment({}, None) is None  # Not glibc: nothing applies.


def test_accelerator_hosts_keep_glibc_defaults():
  assert hostalloc.tuned_environment({}, GLIBC, accelerator=True) is None
  assert hostalloc.tuned_environment({"JAX_PLATFORMS": "tpu"}, GLIBC) is None
  assert hostalloc.tuned_environment({"JAX_PLATFORMS": "cpu"}, GLIBC) is not None


def test_old_glibc_gets_no_hugetlb_tunable():
  env = hostalloc.tuned_environment({}, (2, 31))
  assert "GLIBC_TUNABLES" not in env
  assert env["MALLOC_MMAP_MAX_"] == "0"


def test_bad_mode_names_the_variable():
  with pytest.raises(ValueError, match=hostalloc.ENV_MODE):
    hostalloc.tuned_environment({hostalloc.ENV_MODE: "jemalloc"}, GLIBC)


@pytest.mark.skipif(hostalloc.glibc_version() is None or hostalloc.accelerator_present(),
                    reason="needs glibc on a CPU-only host")
@pytest.mark.parametrize("mode", ["tuned", "system"])
def test_reexec_runs_the_entry_point_once_with_its_arguments(tmp_path, mode):
  script = tmp_path / "entry.py"
  script.write_text(textwrap.dedent("""
      import os, sys
      print("start", flush=True)
      from dynpt import hostalloc
      hostalloc.reexec_with_tuned_allocator()
      print("args", sys.argv[1:])
      print("arena", os.environ.get("MALLOC_ARENA_MAX"))
      print("applied", os.environ.get("DYNPT_HOST_ALLOCATOR_APPLIED"))
      import jax
      print("async", jax.config.values["jax_cpu_enable_async_dispatch"])
  """))
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("MALLOC_")
         and k not in ("GLIBC_TUNABLES", "JAX_PLATFORMS", hostalloc.ENV_APPLIED)}
  env[hostalloc.ENV_MODE] = mode
  out = subprocess.run([sys.executable, str(script), "--flag=1", "x y"], env=env,
                       capture_output=True, text=True, check=True).stdout.splitlines()
  tuned = mode == "tuned"
  assert out.count("start") == (2 if tuned else 1)
  assert "args ['--flag=1', 'x y']" in out
  assert f"arena {'4' if tuned else None}" in out
  assert f"applied {'1' if tuned else None}" in out
  # The tuned process runs XLA:CPU programs on the calling thread (the main heap).
  assert f"async {not tuned}" in out


def test_tuning_applies_only_to_cpu_hosts_that_did_not_opt_out():
  assert hostalloc.tuning_applies({}, GLIBC)
  assert hostalloc.tuning_applies({hostalloc.ENV_APPLIED: "1"}, GLIBC)
  assert not hostalloc.tuning_applies({hostalloc.ENV_MODE: "system"}, GLIBC)
  assert not hostalloc.tuning_applies({}, GLIBC, accelerator=True)
  assert not hostalloc.tuning_applies({"JAX_PLATFORMS": "cuda"}, GLIBC)
  assert not hostalloc.tuning_applies({}, None)
