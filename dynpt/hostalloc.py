"""glibc malloc and JAX dispatch settings for XLA:CPU, set once where the process starts.

Why this exists. XLA:CPU gives each execution of a compiled program one temporary
buffer (175 MB for the toy train step, 1.1 GB at the `small` size) and allocates it with
`malloc`. glibc serves any block above its mmap threshold (at most 32 MB) with a fresh
`mmap` and returns it with `munmap` when freed, so every step faults the whole buffer
in again, 4 KB at a time, and the kernel zeroes each page first: tens of thousands of
page faults per toy step and hundreds of thousands per small step. The same holds for
every large intermediate that outlives one step (gradients, optimizer updates).
docs/performance.md has the measurements.

The settings, made with glibc's `mallopt` in the running process (the same parameters
that its `MALLOC_*_` environment variables set when a process starts):

* `M_MMAP_MAX=0` and `M_TRIM_THRESHOLD=-1`: large blocks come from the heap and stay
  there after `free` (-1 turns trimming off; any positive threshold is an int, at most
  2 GB, and the `small` step frees more than that at the top of the heap), so the next
  step reuses pages that are already mapped.
* `M_ARENA_MAX=4`: a few heaps shared by XLA's threads. With a single heap the toy
  step was 10-20% slower (threads queue in `_int_malloc`); without a limit, most
  threads own an arena whose heaps hold at most 64 MB, and those serve larger blocks by
  `mmap` whatever `M_MMAP_MAX` says. The limit holds for arenas made after the call,
  which is why it must come before XLA creates its threads.

Transparent huge pages. glibc's own way to back its heap with them, the
`glibc.malloc.hugetlb=1` tunable, is read only at exec time (it meant re-executing every
entry point). In-process, `configure_process` does what it does for the heap: it grows
the main heap once by half the machine's memory (address space only: nothing is touched),
marks that range `MADV_HUGEPAGE` and frees it again; with trimming off the range stays
the heap's, so the step's buffers, allocated on the main thread, fault in 2 MB at a time
(and cover more memory per TLB entry) where the system's THP mode is `madvise`. Without
it the `small` step was several percent slower in the A/B of docs/performance.md.

Synchronous dispatch. With JAX's default asynchronous CPU dispatch, a program runs on a
worker thread; in about half the processes that thread owns a secondary arena, so every
second `small` step mapped its 1.1 GB buffer afresh. `configure_process` therefore also
turns `jax_cpu_enable_async_dispatch` off: the step runs on the calling thread, whose
arena is the main heap, which keeps any block in place. The call then returns only when
the step is done (it releases the GIL meanwhile). This must also happen before JAX
creates its CPU backend.

Only CPU runs get them: a host with a GPU or TPU (`/dev/nvidia*`, `/dev/accel*`,
`/dev/vfio/<n>`) or `JAX_PLATFORMS` naming another platform keeps glibc's defaults and
JAX's asynchronous dispatch, since there the step's buffers live on the device and the
host runs many input threads, which 4 arenas would serialize. Opt out with
`DYNPT_HOST_ALLOCATOR=system`. A setting the user made through glibc's environment
(`MALLOC_ARENA_MAX`, `GLIBC_TUNABLES=glibc.malloc.arena_max=...`, ...) is left as set.
Only entry points call `configure_process` (`python -m dynpt.main`, `tools/demo.py`,
`tools/generate_captions.py`, the benchmarks), first thing when they run: a library
import must not change its host process.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import sys
from typing import Mapping

from absl import logging

ENV_MODE = "DYNPT_HOST_ALLOCATOR"  # 'tuned' (default) or 'system'.
MODES = ("tuned", "system")
# <malloc.h> parameter numbers.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
NO_TRIM = -1  # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely."
# name -> (mallopt parameter, value, environment variable, glibc tunable) that set it.
MALLOPT_SETTINGS = {
    "M_MMAP_MAX": (M_MMAP_MAX, 0, "MALLOC_MMAP_MAX_", "glibc.malloc.mmap_max"),
    "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, NO_TRIM, "MALLOC_TRIM_THRESHOLD_",
                         "glibc.malloc.trim_threshold"),
    "M_ARENA_MAX": (M_ARENA_MAX, 4, "MALLOC_ARENA_MAX", "glibc.malloc.arena_max"),
}

MADV_HUGEPAGE = 14  # <sys/mman.h>
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
_THP_SIZE = "/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"

_configured: bool | None = None  # What `configure_process` decided, once it has run.


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


def default_platforms(environ=None, accelerator: bool | None = None) -> str | None:
  """On a host without a GPU or TPU, makes JAX use its CPU backend only.

  With `libtpu` installed (requirements-test.txt pins it for the TPU compiler of
  `tools/check_config.py --tpu`), JAX's default platform search also tries the TPU
  backend: on a CPU-only host every process then loads libtpu (about 200 MB more
  resident memory), spends a few tenths of a second failing to find a TPU, prints
  libtpu's start-up errors and holds `/tmp/libtpu_lockfile` for its whole life.
  Setting `JAX_PLATFORMS=cpu` where no accelerator device node exists
  (`accelerator_present`) skips all of that; the variable is inherited by the
  processes the entry point starts. A `JAX_PLATFORMS` the user set is kept, and
  hosts with a device node keep JAX's own search. Compiling for a TPU topology does
  not need the TPU backend (`dynpt.train.aot`).

  Returns:
    The value set, or None when nothing was changed.
  """
  environ = os.environ if environ is None else environ
  if accelerator is None:
    accelerator = accelerator_present()
  if accelerator or environ.get("JAX_PLATFORMS"):
    return None
  environ["JAX_PLATFORMS"] = "cpu"
  jax = sys.modules.get("jax")  # Already imported: its flag read the environment.
  if environ is os.environ and jax is not None and not jax.config.values.get("jax_platforms"):
    jax.config.update("jax_platforms", "cpu")
  return "cpu"


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


def mallopt_settings(environ: Mapping[str, str]) -> dict[str, tuple[int, int]]:
  """name -> (mallopt parameter, value) to set: those the user did not set (pure).

  A parameter set through glibc's environment variable or its `GLIBC_TUNABLES` entry
  is the user's choice and is left out.
  """
  tunables = environ.get("GLIBC_TUNABLES", "")
  return {name: (param, value)
          for name, (param, value, variable, tunable) in MALLOPT_SETTINGS.items()
          if variable not in environ and f"{tunable}=" not in tunables}


def _read(path: str) -> str:
  try:
    with open(path) as f:
      return f.read()
  except OSError:
    return ""


def thp_on_request() -> bool:
  """Whether the kernel backs memory with huge pages only where asked (THP `madvise`).

  False under strict overcommit accounting (`vm.overcommit_memory=2`), where the
  reserved heap range would count against the commit limit for good.
  """
  return ("[madvise]" in _read(_THP_SETTING)
          and _read("/proc/sys/vm/overcommit_memory").strip() != "2")


def huge_page_heap(libc: ctypes.CDLL, size: int) -> bool:
  """Grows the main heap by `size`, marks it `MADV_HUGEPAGE`, frees it (see module doc).

  Needs `M_MMAP_MAX=0` and no trimming in effect, so the block comes from the heap and
  the heap keeps it. Returns whether the range was marked.
  """
  huge = int(_read(_THP_SIZE) or 2 << 20)
  libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
  block = libc.malloc(size)
  if not block:
    return False
  start, end = -(-block // huge) * huge, (block + size) // huge * huge
  marked = end > start and libc.madvise(start, end - start, MADV_HUGEPAGE) == 0
  libc.free(block)
  return marked


def configure_process() -> bool:
  """Sets the malloc parameters and synchronous CPU dispatch, once per process.

  Call first thing where an entry point starts (`if __name__ == "__main__":`), before
  JAX creates its CPU backend or XLA its threads. First makes a host without a GPU or
  TPU use JAX's CPU backend only (`default_platforms`). The malloc settings are left
  alone on non-glibc systems, on hosts with a GPU or TPU, or with
  `DYNPT_HOST_ALLOCATOR=system`; later calls return the first call's answer.

  Returns:
    Whether the tuned settings are in effect.

  Raises:
    ValueError: `DYNPT_HOST_ALLOCATOR` is set to something other than tuned/system.
  """
  global _configured
  if _configured is not None:
    return _configured
  default_platforms()
  _configured = tuning_applies(os.environ, glibc_version(), accelerator_present())
  if not _configured:
    return False
  libc = ctypes.CDLL(None)  # The C library this process already runs on.
  settings = mallopt_settings(os.environ)
  for name, (param, value) in settings.items():
    if libc.mallopt(param, value) != 1:  # mallopt returns 1 on success.
      logging.warning("mallopt(%s, %d) failed; keeping glibc's default", name, value)
  huge = False
  if {"M_MMAP_MAX", "M_TRIM_THRESHOLD"} <= set(settings) and thp_on_request():
    huge = huge_page_heap(libc, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)
  import jax  # Only now: a plain import of this module must not load JAX.

  jax.config.update("jax_cpu_enable_async_dispatch", False)
  logging.info("XLA:CPU host settings: mallopt %s, huge-page heap %s, synchronous CPU "
               "dispatch (%s=system to opt out)", {k: v for k, (_, v) in settings.items()},
               huge, ENV_MODE)
  return True
