"""Train-step throughput, compile time, memory and MFU of dynpt, side by side with the
PyTorch peer (bench/peer_torch.py) in the same process.

For each size the dynpt step is built as the trainer builds it (bench/common.py), then
dynpt and the peer take turns in `--rounds` rounds of `--steps` steps each, so load
from other processes on the shared machine hits both alike; the reported step time is
the median over all timed steps (the first step of each side, which compiles or warms
up, is timed apart).

  python bench/train_step.py --sizes=toy,small,base --peer_sizes=toy,small
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from bench import common  # noqa: E402
from dynpt import hostalloc  # noqa: E402
from dynpt.train import state as state_lib  # noqa: E402

_SIZES = flags.DEFINE_list("sizes", ["toy", "small", "base"], "Sizes to measure.")
_PEER_SIZES = flags.DEFINE_list("peer_sizes", ["toy", "small"], "Sizes with the peer.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating dynpt/peer rounds.")
_STEPS = flags.DEFINE_integer("steps", 2, "Timed steps per side per round.")
_WARMUP = flags.DEFINE_integer(
    "warmup_steps", 3, "Untimed steps per side before the rounds: the first steps after "
    "compilation still map fresh memory (huge pages, docs/performance.md) and warm "
    "caches; a run's steady state is what the table reports.")
_SETTLE = flags.DEFINE_integer(
    "settle_steps", 2, "Untimed steps per side at the start of every round. The two "
    "sides share this process's heap, and after the other side's step the first steps "
    "map memory again (toy: 0.2-0.4 s against 0.15 s settled); no training run alternates "
    "with another framework, so each side is timed settled.")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", False,
                                   "Also time the peer under torch.compile.")
_DTYPE = flags.DEFINE_string("dtype", None, "Compute dtype override (bfloat16).")
_OUT = flags.DEFINE_string("out", "train_step", "Results file name (no .json).")


def _steps_for(size: str) -> int:
  return max(1, _STEPS.value * (3 if size == "toy" else 1))


def measure(size_name: str, with_peer: bool) -> dict:
  size = common.SIZES[size_name]
  sb = common.build_step(size, dtype=_DTYPE.value)
  compiled, compile_s = sb.compile()
  xla = common.xla_flops(compiled)
  memory = common.compiled_memory_mb(compiled)
  del compiled
  counted = sb.flops()
  first = common.time_calls(sb.run, 1)[0]  # Compiles again through the jit cache path.
  peer = peer_first = peer_compiled = None
  if with_peer:
    from bench import peer_torch
    peer = peer_torch.PeerStep(sb.model_config, common.synthetic_batch(size),
                               num_threads=len(os.sched_getaffinity(0)))
    peer_first = peer_torch.time_first_call(peer)
  common.time_calls(sb.run, _WARMUP.value)
  if peer is not None:
    common.time_calls(peer.run, _WARMUP.value)
  ours, theirs = [], []
  steps = _steps_for(size_name)
  for _ in range(_ROUNDS.value):
    common.time_calls(sb.run, _SETTLE.value)
    ours += common.time_calls(sb.run, steps)
    if peer is not None:
      common.time_calls(peer.run, _SETTLE.value)
      theirs += common.time_calls(peer.run, steps)
  rec = {
      "size": size_name, "model": size.model, "image_size": size.image_size,
      "batch_size": size.batch_size, "input_length": size.input_length,
      "target_length": size.target_length, "vocab_size": size.vocab_size,
      "dtype": _DTYPE.value or "float32",
      "params": state_lib.count_params(sb.state.params),
      "step_time_s": common.median(ours), "step_times_s": [round(t, 4) for t in ours],
      "init_s": round(sb.init_seconds, 2), "compile_s": round(compile_s, 2),
      "first_step_s": round(first, 2),
      "flops_per_example": counted.train, "flops_breakdown_forward": counted.as_dict(),
      "xla_flops_per_example": None if xla is None else xla / size.batch_size,
      "device_memory": memory, "host_peak_rss_mb": round(common.host_peak_rss_mb(), 1),
      "peak_flops_assumed": common.peak_flops(), "device": common.device_description(),
  }
  rec["examples_per_s"] = size.batch_size / rec["step_time_s"]
  rec["achieved_flops"] = rec["examples_per_s"] * counted.train
  rec["mfu"] = rec["achieved_flops"] / rec["peak_flops_assumed"]
  if xla is not None:
    rec["xla_vs_analytic"] = xla / (counted.train * size.batch_size)
  rec["peer_examples_per_s"] = None
  if peer is not None:
    from bench import peer_torch
    rec.update(peer_step_time_s=common.median(theirs),
               peer_step_times_s=[round(t, 4) for t in theirs],
               peer_first_step_s=round(peer_first, 2), peer_params=peer.num_params,
               peer_versions=peer_torch.versions())
    rec["peer_examples_per_s"] = size.batch_size / rec["peer_step_time_s"]
    rec["dynpt_over_peer"] = rec["examples_per_s"] / rec["peer_examples_per_s"]
    del peer
    if _TORCH_COMPILE.value:
      peer_compiled = peer_torch.PeerStep(sb.model_config, common.synthetic_batch(size),
                                          compile_model=True)
      rec["peer_compile_first_step_s"] = round(peer_torch.time_first_call(peer_compiled), 2)
      ours_c, theirs_c = [], []
      for _ in range(_ROUNDS.value):
        ours_c += common.time_calls(sb.run, steps)
        theirs_c += common.time_calls(peer_compiled.run, steps)
      rec["peer_compiled_examples_per_s"] = size.batch_size / common.median(theirs_c)
      rec["dynpt_over_peer_compiled"] = (common.median(theirs_c) / common.median(ours_c))
  return rec


def main(argv):
  del argv
  records = []
  for name in _SIZES.value:
    if name not in common.SIZES:
      raise ValueError(f"--sizes: unknown size {name!r}; known: {sorted(common.SIZES)}")
    records.append(measure(name, name in _PEER_SIZES.value))
    common.print_table(
        records, ["size", "batch_size", "step_time_s", "examples_per_s",
                  "peer_examples_per_s", "dynpt_over_peer", "flops_per_example",
                  "xla_vs_analytic", "mfu", "compile_s", "host_peak_rss_mb"],
        title="train step")
  path = common.write_results(_OUT.value, records)
  print(f"wrote {path}")


if __name__ == "__main__":
  hostalloc.configure_process()
  app.run(main)
