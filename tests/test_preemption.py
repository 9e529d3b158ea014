"""Tests of `dynpt.train.preemption`: SIGTERM on one process stops every process.

The 2-process case runs the agreement alone (no model) in 2 JAX CPU processes
on 127.0.0.1 with gloo; the full trainer case is in tests/test_multihost.py.
"""

import os
import signal
import subprocess
import sys
import textwrap

import jax

from dynpt.train import preemption
from tests.test_multihost import ROOT, _free_port

# Each process calls should_stop() once per "step"; process 1 sends itself
# SIGTERM during step SIGNAL_AT; both print the step after which they stop.
_AGREEMENT_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid = int(sys.argv[2])
    jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=pid)
    from dynpt.train import preemption
    SIGNAL_AT = 3
    with preemption.Preemption() as p:
      for step in range(50):
        if pid == 1 and step == SIGNAL_AT:
          os.kill(os.getpid(), signal.SIGTERM)
        if p.should_stop():
          break
    print(f"STOPPED {step} requested={p.requested} agreed={p.agreed}", flush=True)
""")


def test_single_process_stops_on_its_own_signal_without_a_collective():
  assert jax.process_count() == 1
  with preemption.Preemption() as p:
    assert not p.should_stop()
    os.kill(os.getpid(), signal.SIGTERM)  # The handler turns it into a request.
    assert p.requested and p.should_stop() and p.agreed
  assert p._reduce is None  # pylint: disable=protected-access
  # Outside the block SIGTERM has its previous handler again.
  assert signal.getsignal(signal.SIGTERM) is not p._handle  # pylint: disable=protected-access


def test_signal_on_one_process_stops_both_after_the_same_step():
  coordinator = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = [subprocess.Popen(
      [sys.executable, "-c", _AGREEMENT_SCRIPT, coordinator, str(i)], cwd=ROOT,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  try:
    outs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  lines = [[line for line in out.splitlines() if line.startswith("STOPPED")][0]
           for out in outs]
  # Signalled during step 3: its flag is reduced at step 3 and read at step 4.
  assert lines == ["STOPPED 4 requested=False agreed=True",
                   "STOPPED 4 requested=True agreed=True"], outs
