"""Shared pieces of the benchmarks: the jitted step built as the loop builds it, timing,
hardware peaks, tables and JSON results.

The step is built exactly as `dynpt.train.loop.train` builds it (same state creation,
same in/out shardings, `donate_argnums=(0,)`), so a number measured here is the number
the trainer gets, minus the input pipeline (measured on its own in input_pipeline.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dynpt import flops as flops_lib
from dynpt.models import configs as model_configs
from dynpt.models import cpu_kernels
from dynpt.models import vl_model
from dynpt.train import model_setup, optim, partitioning
from dynpt.train import state as state_lib
from dynpt.train import step as step_lib
from dynpt.train.config import DataConfig

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
NUM_TASKS = 24  # The dynpt_24 mixture.
TOY_VOCAB_SIZE = 640  # The shipped toy SentencePiece vocabulary, padded to 128.


@dataclasses.dataclass(frozen=True)
class Size:
  """One benchmarked configuration: model size, image size, batch and lengths."""
  name: str  # Label in tables and JSON ('toy', 'small', 'base').
  model: str  # `dynpt.models.configs` size name.
  image_size: int
  batch_size: int
  vocab_size: int
  input_length: int = 32
  target_length: int = 32


# toy = gin_configs/pretrain/toy_cpu.gin (tiny model, 64 px, batch 96, toy vocabulary);
# small/base = the T5 v1.1 sizes at the paper's 224 px with T5's 32128-piece vocabulary,
# at the batch a 2-core CPU can step in seconds.
SIZES = {
    "toy": Size("toy", "tiny", 64, 96, TOY_VOCAB_SIZE),
    "small": Size("small", "small", 224, 8, model_configs.T5_VOCAB_SIZE),
    "base": Size("base", "base", 224, 4, model_configs.T5_VOCAB_SIZE),
}


def cpu_peak_flops() -> dict[str, Any]:
  """Theoretical fp32 peak of the CPUs this process may use, from /proc/cpuinfo.

  Assumes 2 FMA units per core (every AVX2/AVX-512 server core since Haswell/Zen 2):
  FLOP/cycle/core = 2 units x 2 (mul+add) x lanes (8 for AVX2, 16 for AVX-512), at the
  nominal clock /proc/cpuinfo reports (turbo would raise it; we do not count on it).
  """
  flags, mhz, model = set(), 0.0, platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
          flags = set(value.split())
        elif key == "cpu MHz" and not mhz:
          mhz = float(value)
        elif key == "model name":
          model = value.strip()
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0))
  lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
  per_cycle = 2 * 2 * lanes
  peak = cores * (mhz or 2000.0) * 1e6 * per_cycle
  return {"cpu": model, "cores": cores, "ghz": round(mhz / 1e3, 3),
          "simd": "avx512" if lanes == 16 else "avx2" if lanes == 8 else "sse",
          "flop_per_cycle_per_core": per_cycle, "peak_flops": peak}


# Dense peaks of accelerators we quote MFU against (vendor data sheets, no sparsity).
ACCELERATOR_PEAKS = {
    "H100 SXM bf16": 989e12, "H100 SXM tf32": 495e12, "H100 SXM fp32": 67e12,
    "TPU v4 bf16": 275e12,
}


def device_description() -> str:
  d = jax.devices()[0]
  info = cpu_peak_flops() if d.platform == "cpu" else {}
  extra = f" {info['cpu']} x{info['cores']} @{info['ghz']} GHz" if info else ""
  return f"{d.platform}:{d.device_kind}{extra} ({jax.device_count()} devices)"


def peak_flops() -> float:
  """The peak the MFU of this run is divided by (CPU fp32, or a known accelerator)."""
  d = jax.devices()[0]
  if d.platform == "cpu":
    return cpu_peak_flops()["peak_flops"] * 1.0
  kind = d.device_kind.lower()
  if "h100" in kind:
    return ACCELERATOR_PEAKS["H100 SXM bf16"] * jax.device_count()
  if "v4" in kind:
    return ACCELERATOR_PEAKS["TPU v4 bf16"] * jax.device_count()
  raise ValueError(f"no peak FLOP/s known for device kind {d.device_kind!r}")


def synthetic_batch(size: Size, num_tasks: int = NUM_TASKS, seed: int = 0
                    ) -> dict[str, np.ndarray]:
  """A task-ordered batch with the trainer's shapes and dtypes (random content)."""
  rng = np.random.default_rng(seed)
  b, lt = size.batch_size, size.target_length
  targets = rng.integers(2, size.vocab_size, (b, lt), dtype=np.int32)
  lengths = rng.integers(lt // 4, lt + 1, b)
  weights = (np.arange(lt)[None] < lengths[:, None]).astype(np.float32)
  targets = np.where(weights > 0, targets, 0).astype(np.int32)
  return {
      "image": rng.integers(0, 256, (b, size.image_size, size.image_size, 3), dtype=np.uint8),
      "encoder_input_tokens": rng.integers(2, size.vocab_size, (b, size.input_length),
                                           dtype=np.int32),
      "decoder_input_tokens": np.concatenate(
          [np.zeros((b, 1), np.int32), targets[:, :-1]], axis=1),
      "decoder_target_tokens": targets,
      "decoder_loss_weights": weights,
      "task_id": np.sort(rng.integers(0, num_tasks, b)).astype(np.int32),
  }


@dataclasses.dataclass
class StepBench:
  """A ready-to-run jitted train step and its inputs."""
  size: Size
  model_config: Any
  p_step: Any
  state: Any
  batch: dict[str, jax.Array]
  weights: jax.Array
  mesh: Any
  init_seconds: float

  def run(self) -> float:
    """One step; returns its loss (a host sync, as the loop's one-step-late read)."""
    with self.mesh:
      self.state, metrics = self.p_step(self.state, self.batch, self.weights)
    return float(metrics["loss"])

  def compile(self):
    """Lowers and compiles (without running); returns (compiled, seconds)."""
    t = time.perf_counter()
    with self.mesh:
      compiled = self.p_step.lower(self.state, self.batch, self.weights).compile()
    return compiled, time.perf_counter() - t

  def flops(self):
    return flops_lib.count_flops(self.model_config, self.size.input_length,
                                 self.size.target_length)


def build_step(size: Size, *, dtype: str | None = None, remat: bool | None = None,
               num_model_partitions: int = 1, seed: int = 0,
               cpu_kernels_mode: str = "auto") -> StepBench:
  """The train step for `size`, jitted exactly as `dynpt.train.loop.train` jits it.

  `cpu_kernels_mode` is `ModelConfig.cpu_kernels`, resolved for the mesh's devices as
  `dynpt.train.model_setup` resolves it.
  """
  t0 = time.perf_counter()
  mesh = partitioning.create_mesh(num_model_partitions)
  cfg = model_configs.get_config(
      size.model, vocab_size=size.vocab_size, image_size=size.image_size, dtype=dtype,
      remat=remat, cpu_kernels=cpu_kernels.resolve(cpu_kernels_mode, mesh.devices.flat))
  model = vl_model.VLModel(cfg)
  data_cfg = DataConfig(image_size=size.image_size, input_length=size.input_length,
                        target_length=size.target_length)
  opt_cfg = optim.OptimizerConfig(learning_rate=1e-4, warmup_steps=10, total_steps=1000)
  tx = optim.make_optimizer(opt_cfg)
  rules = partitioning.logical_axis_rules("data_parallel")
  state, shardings = state_lib.create_train_state(
      model_setup.init_params_fn(model, data_cfg), tx, mesh, rules, seed)
  batch_sharding = partitioning.batch_sharding(mesh)
  repl = partitioning.replicated(mesh)
  p_step = jax.jit(
      partitioning.traced_under_rules(functools.partial(
          step_lib.train_step, model=model, num_tasks=NUM_TASKS,
          label_smoothing=0.1, loss_normalization="tokens",
          learning_rate_fn=optim.learning_rate_schedule(opt_cfg)),
          mesh, "data_parallel"),
      in_shardings=(shardings, batch_sharding, repl),
      out_shardings=(shardings, repl), donate_argnums=(0,))
  batch = {k: jax.make_array_from_process_local_data(batch_sharding, v)
           for k, v in synthetic_batch(size, seed=seed).items()}
  weights = jax.device_put(jnp.ones((NUM_TASKS,), jnp.float32), repl)
  jax.block_until_ready(state)
  return StepBench(size, cfg, p_step, state, batch, weights, mesh,
                   time.perf_counter() - t0)


def ensure_toy_world(data_dir: str) -> float:
  """Builds the default-scale toy world if missing; returns the seconds it took."""
  from dynpt.toyworld import build

  t = time.perf_counter()
  build.build_toy_world(data_dir, seed=0, scale="default", progress=False)
  return time.perf_counter() - t


def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
  """Wall seconds of `repeats` calls of a synchronous `fn`."""
  out = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t)
  return out


def median(xs: list[float]) -> float:
  return float(statistics.median(xs))


def host_peak_rss_mb() -> float:
  """Peak resident memory of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def compiled_memory_mb(compiled) -> dict[str, float]:
  """Device buffers XLA plans for the step: arguments, outputs, temporaries (MiB)."""
  mem = compiled.memory_analysis()
  if mem is None:
    return {}
  mib = 1024.0 ** 2
  args, outs = mem.argument_size_in_bytes, mem.output_size_in_bytes
  temp, alias = mem.temp_size_in_bytes, mem.alias_size_in_bytes
  return {"arguments_mb": round(args / mib, 1), "outputs_mb": round(outs / mib, 1),
          "temp_mb": round(temp / mib, 1), "aliased_mb": round(alias / mib, 1),
          "peak_mb": round((args + outs + temp - alias) / mib, 1)}


def xla_flops(compiled) -> float | None:
  """FLOPs of one call as XLA's cost analysis counts them (None if unavailable)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


def write_results(name: str, records: Any) -> str:
  """Writes bench/results/<name>.json with the device and time; returns its path."""
  os.makedirs(RESULTS_DIR, exist_ok=True)
  path = os.path.join(RESULTS_DIR, f"{name}.json")
  payload = {"device": device_description(), "cpu": cpu_peak_flops(),
             "jax": jax.__version__, "python": sys.version.split()[0],
             "load_average_at_end": list(os.getloadavg()),
             "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "records": records}
  with open(path, "w") as f:
    json.dump(payload, f, indent=1)
  return path


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str = "") -> None:
  """Prints rows as a fixed-width text table (floats with 4 significant digits)."""
  def fmt(v):
    if isinstance(v, float):
      return f"{v:.4g}"
    return "-" if v is None else str(v)
  cells = [[fmt(r.get(c)) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  if title:
    print(f"\n== {title} ==")
  print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
  for row in cells:
    print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
  sys.stdout.flush()
