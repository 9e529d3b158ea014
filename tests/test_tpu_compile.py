"""`tools/check_config.py --tpu`: the train step compiled by the TPU compiler (libtpu)
on this CPU-only host, and the Cloud TPU type -> topology table (`dynpt.train.aot`)."""

import os
import re
import subprocess
import sys

import pytest

from dynpt.train import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name,topology,chips,hosts,host_bounds,wrap,hbm", [
    ("v4-8", "v4:2x2x1", 4, 1, (2, 2, 1), (False,) * 3, 32),
    ("v4-32", "v4:2x2x4", 16, 4, (2, 2, 1), (False,) * 3, 32),
    ("v4-128", "v4:4x4x4", 64, 16, (2, 2, 1), (True,) * 3, 32),
    ("v5p-128", "v5:4x4x4", 64, 16, (2, 2, 1), (True,) * 3, 95),
    ("v5p-8", "v5:2x2x1", 4, 1, (2, 2, 1), (False,) * 3, 95),
    ("v5litepod-1", "v5e:1x1", 1, 1, (1, 1, 1), (False,) * 3, 16),
    ("v5litepod-8", "v5e:2x4", 8, 1, (2, 4, 1), (False,) * 3, 16),
    ("v5litepod-256", "v5e:16x16", 256, 64, (2, 2, 1), (True, True, False), 16),
    ("v5e-16", "v5e:4x4", 16, 4, (2, 2, 1), (False,) * 3, 16),
    ("v6e-64", "v6e:8x8", 64, 16, (2, 2, 1), (False,) * 3, 32),
    ("v6e-128", "v6e:8x16", 128, 32, (2, 2, 1), (False, True, False), 32),
])
def test_tpu_types_map_to_topologies(name, topology, chips, hosts, host_bounds, wrap, hbm):
  tpu = aot.tpu_slice(name)
  assert (tpu.topology_name, tpu.chips, tpu.hosts, tpu.chips_per_host_bounds, tpu.wrap,
          tpu.hbm_gib) == (topology, chips, hosts, host_bounds, wrap, hbm)
  # v4 and v5p count TensorCores and run megacore (one device per chip).
  assert tpu.chip_config_name == ("megacore" if name[:3] in ("v4-", "v5p") else "default")


@pytest.mark.parametrize("name", ["v4-33", "v4-2", "v4-6", "v5litepod-2", "v5litepod-512",
                                  "v6e-3", "v3-8", "v9-8", "tpu", "v4", "h100-8", "v5p-7"])
def test_unknown_tpu_types_are_refused(name):
  with pytest.raises(ValueError, match="unknown TPU type"):
    aot.tpu_slice(name)


def test_collectives_are_counted_by_kind():
  hlo = "\n".join([
      "  %all-reduce.1 = f32[16,128]{1,0:T(8,128)} all-reduce(%fusion), channel_id=1",
      "  %ag = (bf16[4,256]{1,0:T(8,128)}, bf16[16,256]{1,0:T(8,128)}) "
      "all-gather-start(%p), dimensions={0}",
      "  %ag.done = bf16[16,256]{1,0:T(8,128)} all-gather-done(%ag)",
      "  %rs = f32[4,8]{1,0} reduce-scatter(f32[16,8]{1,0} %x), dimensions={0}",
      "  %cp = (f32[8]{0}, f32[8]{0}, u32[], u32[]) collective-permute-start(%y)",
      "  %cp.done = f32[8]{0} collective-permute-done(%cp)",
      "  %fusion.3 = f32[8]{0} fusion(%all-reduce.1), kind=kLoop",
  ])
  c = aot.collectives(hlo)
  assert c["all-reduce"] == aot.Collective(1, 16 * 128 * 4)
  assert c["all-gather"] == aot.Collective(1, 16 * 256 * 2)
  assert c["reduce-scatter"] == aot.Collective(1, 4 * 8 * 4)
  assert c["collective-permute"] == aot.Collective(1, 8 * 4)
  assert c["all-to-all"] == aot.Collective(0, 0)


def test_out_of_hbm_is_summarised_from_xla_s_message():
  e = aot.DoesNotFit("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of "
                     "memory in memory space hbm. Used 69.41G of 30.75G hbm. Exceeded hbm "
                     "capacity by 38.66G.\n\nTotal hbm usage >= 70.66G:\n", 12.0)
  assert e.summary == "Used 69.41G of 30.75G hbm. Exceeded hbm capacity by 38.66G."
  assert aot.DoesNotFit("RESOURCE_EXHAUSTED: other\ndetail", 1.0).summary == (
      "RESOURCE_EXHAUSTED: other")


@pytest.mark.parametrize("temporaries_gib,verdict,tight", [
    (10.0, "fits", False), (29.6, "fits", True), (33.0, "does NOT fit", False)])
def test_report_says_whether_the_step_fits_and_when_it_is_tight(temporaries_gib, verdict,
                                                                 tight):
  gib = 2 ** 30
  step = aot.CompiledStep(
      arguments=gib, outputs=gib, aliased=gib, temporaries=int(temporaries_gib * gib),
      generated_code=0, flops=1e12, collectives=aot.collectives(""), compile_seconds=1.0,
      num_devices=16, mesh_shape=(16, 1), num_params=1)
  text = aot.report(step, aot.tpu_slice("v4-32"), estimate_total=8 * gib)
  assert f"\n{verdict} in 32 GiB per chip" in text
  assert ("tight:" in text) == tight
  assert aot.fits(step, aot.tpu_slice("v4-32")) == (verdict == "fits")
  if tight:
    assert "  tight: 1.40 GiB (4%) to spare" in text


def _check_config(*args, timeout=1200):
  env = {k: v for k, v in os.environ.items() if k != "ALLOW_MULTIPLE_LIBTPU_LOAD"}
  env.update(PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "tools/check_config.py", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


def test_check_config_refuses_an_unknown_tpu_type():
  proc = _check_config("--gin_file=pretrain/toy_cpu.gin", "--tpu=v4-33", timeout=300)
  assert proc.returncode == 1
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "unknown TPU type 'v4-33'" in errors[0], proc.stderr[-2000:]


def test_check_config_compiles_the_tiny_step_for_a_v5e_8(tmp_path):
  """The tiny model with the large preset (fsdp x model parallel, bf16, remat) on the
  8 chips of a v5litepod-8: XLA's memory figures, sharded activations, collectives."""
  proc = _check_config(
      "--gin_file=pretrain/toy_cpu.gin", "--gin_file=partitioning/large_fsdp_mp.gin",
      "--gin.BATCH_SIZE=16", "--gin.IMAGE_SIZE=32", "--tpu=v5litepod-8",
      f"--save_hlo={tmp_path}")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = proc.stdout
  assert "v5litepod-8 (v5e:2x4, 8 devices, 1 hosts), mesh (data=4, model=2)" in out
  gib = {m.group(1): float(m.group(2))
         for m in re.finditer(r"^  (\w+)\s+([\d.]+) GiB", out, re.MULTILINE)}
  assert gib["arguments"] > 0 and gib["temporaries"] > 0, out
  assert gib["total"] >= gib["arguments"] and "of 16 GiB HBM" in out
  assert re.search(r"estimate\s+[\d.]+ GiB analytic \(memory.estimate; [+-]\d+% vs XLA\)", out)
  flops = float(re.search(r"FLOPs/step\s+([\d.e+]+) per chip", out).group(1))
  assert flops > 1e6
  ops = {m.group(1): int(m.group(2))
         for m in re.finditer(r"^    ([a-z-]+)\s+(\d+) ops", out, re.MULTILINE)}
  assert set(ops) == set(aot.COLLECTIVE_KINDS)
  assert ops["all-reduce"] > 0 and ops["all-gather"] + ops["reduce-scatter"] > 0, out
  assert re.search(r"compile time  [\d.]+ s", out)
  assert "\nfits in 16 GiB per chip\n" in out and "does NOT fit" not in out
  # The HLO of the TPU program holds the model's activation constraints (the
  # `Sharding` custom calls of nn.with_logical_constraint), on both mesh axes ...
  lowered = (tmp_path / "lowered.hlo.txt").read_text()
  constraints = [line for line in lowered.splitlines()
                 if 'custom_call_target="Sharding"' in line]
  assert len(constraints) > 20
  assert any('\\"data\\"' in line for line in constraints)
  assert any('\\"model\\"' in line for line in constraints)
  # ... and the compiled program is one chip's: 16 images over 4 data shards.
  compiled = (tmp_path / "compiled.hlo.txt").read_text()
  assert compiled.startswith("HloModule") and "u8[4,32,32,3]" in compiled
  # The program is named for the function (a profile shows it), not `jit_wrapped`.
  assert compiled.startswith("HloModule jit_train_step,")
