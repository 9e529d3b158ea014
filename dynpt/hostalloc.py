"""glibc malloc settings that stop XLA:CPU from page-faulting its buffers in every step.

Why this exists. XLA:CPU gives each execution of a compiled program one temporary
buffer (175 MB for the toy train step, 1.1 GB at the `small` size) and allocates it with
`malloc`. glibc serves any block above its mmap threshold (at most 32 MB) with a fresh
`mmap` and returns it with `munmap` when freed, so every step faults the whole buffer
in again, 4 KB at a time, and the kernel zeroes each page first: 43k page faults per toy
step and 285k per small step on the development machine, at about 1.8 us each. The same
holds for every large intermediate that outlives one step (gradients, optimizer
updates). docs/performance.md has the measurements.

The settings are glibc's own documented tunables, which it reads once when the process
starts; that is why `reexec_with_tuned_allocator` re-executes the entry point with them
set rather than changing anything in a running process:

* `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc >= 2.35): malloc asks for transparent
  huge pages on its mappings, so a fault maps 2 MB instead of 4 KB (and the TLB covers
  more of the working set).
* `MALLOC_MMAP_MAX_=0` and `MALLOC_TRIM_THRESHOLD_=2**40`: large blocks come from the heap
  and stay there after `free`, so the next step reuses pages that are already mapped.
* `MALLOC_ARENA_MAX=4`: a few heaps shared by XLA's threads. With a single heap the toy
  step was 10-20% slower (threads queue in `_int_malloc`); without a limit, most
  threads own an arena whose heaps hold at most 64 MB, and those serve larger blocks by
  `mmap` whatever `MALLOC_MMAP_MAX_` says.

Effect on the train step measured alone (docs/performance.md): toy 0.166-0.171 ->
0.133-0.148 s; small 2.03-2.11 -> 1.79-1.84 s. The cost: the process keeps its peak heap
instead of returning it to the system, which is what a training process does anyway.

Synchronous dispatch. With JAX's default asynchronous CPU dispatch, a program runs on a
worker thread; in about half the processes that thread owns a secondary arena, so every
second `small` step mapped its 1.1 GB buffer afresh (+0.9 s per such step). The re-executed
process therefore also turns `jax_cpu_enable_async_dispatch` off: the step runs on the
calling thread, whose arena is the main heap, which keeps any block in place (no
faults, no bimodal steps; the toy step is also 3-5% faster). The call then returns only
when the step is done; it releases the GIL meanwhile, and the training loop starts
assembling the next batch before the call (`dynpt.train.loop`), so input work still
runs beside the step.

Only CPU runs get them: a host with a GPU or TPU (`/dev/nvidia*`, `/dev/accel*`,
`/dev/vfio/<n>`) or `JAX_PLATFORMS` naming another platform keeps glibc's defaults, since
there the step's buffers live on the device and the host runs many input threads, which
4 arenas would serialize. Opt out with `DYNPT_HOST_ALLOCATOR=system`. Any of the
variables that is already set in the environment is left as the user set it. Only entry
points call this (`python -m dynpt.main`, `tools/demo.py`, the benchmarks), as their
first statement: a library import must not re-execute its host process.
"""

from __future__ import annotations

import glob
import os
import platform
import sys
from typing import Mapping

from absl import logging

ENV_MODE = "DYNPT_HOST_ALLOCATOR"  # 'tuned' (default) or 'system'.
ENV_APPLIED = "DYNPT_HOST_ALLOCATOR_APPLIED"  # Set in the re-executed process.
MODES = ("tuned", "system")
HUGETLB_TUNABLE = "glibc.malloc.hugetlb"
MALLOC_ENVIRONMENT = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2 ** 40),
    "MALLOC_ARENA_MAX": "4",
}
# glibc learned the hugetlb tunable in 2.35; older versions ignore it silently.
_MIN_GLIBC_FOR_HUGETLB = (2, 35)


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the C library this process runs on, or None if it is not glibc."""
  if sys.platform != "linux":
    return None
  name, version = platform.libc_ver()
  if name != "glibc" or not version:
    return None
  try:
    major, minor = (int(p) for p in version.split(".")[:2])
  except ValueError:
    return None
  return major, minor


def accelerator_present() -> bool:
  """Whether this host has a GPU or TPU device node (so XLA will not run on its CPU)."""
  return any(glob.glob(p) for p in ("/dev/nvidia[0-9]*", "/dev/accel[0-9]*",
                                     "/dev/vfio/[0-9]*"))


def tuning_applies(environ: Mapping[str, str], glibc: tuple[int, int] | None,
                   accelerator: bool = False) -> bool:
  """Whether this is a glibc CPU host that has not opted out (pure).

  Raises:
    ValueError: `DYNPT_HOST_ALLOCATOR` is set to something other than tuned/system.
  """
  mode = environ.get(ENV_MODE, "tuned")
  if mode not in MODES:
    raise ValueError(f"{ENV_MODE}={mode!r}: expected one of {', '.join(MODES)}")
  platforms = environ.get("JAX_PLATFORMS", "")
  return not (mode == "system" or glibc is None or accelerator
              or (platforms and not platforms.startswith("cpu")))


def tuned_environment(environ: Mapping[str, str], glibc: tuple[int, int] | None,
                      accelerator: bool = False) -> dict[str, str] | None:
  """The environment to re-execute with, or None when there is nothing to change.

  Pure: decides from `environ`, the glibc version and whether the host has an
  accelerator. Variables the user has set are kept; `GLIBC_TUNABLES` gains the hugetlb
  tunable unless it already names it.

  Raises:
    ValueError: `DYNPT_HOST_ALLOCATOR` is set to something other than tuned/system.
  """
  if not tuning_applies(environ, glibc, accelerator) or environ.get(ENV_APPLIED):
    return None
  env = dict(environ)
  for key, value in MALLOC_ENVIRONMENT.items():
    env.setdefault(key, value)
  tunables = env.get("GLIBC_TUNABLES", "")
  if glibc >= _MIN_GLIBC_FOR_HUGETLB and HUGETLB_TUNABLE not in tunables:
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, f"{HUGETLB_TUNABLE}=1"]))
  if env == dict(environ):
    return None
  env[ENV_APPLIED] = "1"
  return env


def reexec_with_tuned_allocator() -> None:
  """Re-executes this entry point with the tuned malloc environment, once.

  Call as the first statement under `if __name__ == "__main__":`, before JAX, threads
  or open files exist: `os.execve` replaces the process, keeping its pid, arguments
  (`sys.orig_argv`, so `python -m pkg.mod` stays a module run) and the rest of the
  environment. Does nothing on non-glibc systems, on hosts with a GPU or TPU, or with
  `DYNPT_HOST_ALLOCATOR=system`. Once the settings are in place, turns JAX's
  asynchronous CPU dispatch off (see the module docstring); so this must run before
  JAX creates its CPU backend.
  """
  glibc, accelerator = glibc_version(), accelerator_present()
  env = tuned_environment(os.environ, glibc, accelerator)
  if env is None:
    if tuning_applies(os.environ, glibc, accelerator):
      import jax  # Only now: the re-exec above must happen before anything heavy.

      jax.config.update("jax_cpu_enable_async_dispatch", False)
    return
  added = {k: env[k] for k in sorted(env) if os.environ.get(k) != env[k] and k != ENV_APPLIED}
  logging.info("Re-executing with malloc settings for XLA:CPU %s (%s=system to opt out)",
               added, ENV_MODE)
  argv = [sys.executable, *getattr(sys, "orig_argv", [sys.executable, *sys.argv])[1:]]
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, env)
