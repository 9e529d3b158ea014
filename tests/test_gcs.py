"""Runs that live in a bucket, against a real GCS API server (tools/local_gcs.py).

One server and one run serve every check: a toy pretraining run with
RUN_DIR=gs://BUCKET/run (TensorBoard on, data on local disk) is stopped by
SIGTERM (exit 75), resumed from the bucket (bit for bit the run that never
stopped), then resumed once more after its newest checkpoint there was damaged;
it is exported to the bucket, and a finetuning run starts from that export.
Every command runs in an empty working directory that must stay empty. The
bucket is read back through `dynpt.fs` in a helper process that has the
server's environment (the test process keeps its own: epath picks its GCS
client once per process). tf.data's reads of a URL DATA_DIR are tested on
TensorFlow's `ram://` file system, since TensorFlow's GCS client cannot be
pointed at a local server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "dynpt-test"
RUN = f"gs://{BUCKET}/run"
TASKS = "cc3m_cap,vg_exists"
TOTAL_STEPS = 1000  # The schedule's length, the same in every run (the runs stop sooner).


def _env(gcs_env: dict | None) -> dict:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env.update(gcs_env or {})
  return env


def _pretrain_args(run_dir: str, data_dir: str, steps: int) -> list[str]:
  return ["-m", "dynpt.main", "--gin_file=pretrain/toy_cpu.gin",
          f"--gin.RUN_DIR='{run_dir}'", f"--gin.DATA_DIR='{data_dir}'",
          f"--gin.MIXTURE='{TASKS}'", f"--gin.NUM_STEPS={steps}", "--gin.BATCH_SIZE=8",
          "--gin.IMAGE_SIZE=32", "--gin.TARGET_LENGTH=16",
          f"--gin.optim.OptimizerConfig.total_steps={TOTAL_STEPS}",
          "--gin.config.TrainConfig.progress_bar=False",
          "--gin.config.TrainConfig.checkpoint_every=2",
          "--gin.config.TrainConfig.keep_checkpoints=5",
          "--gin.config.TrainConfig.log_every=1"]


def _start(args, env, cwd) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: int = 600) -> tuple[int, str]:
  try:
    out, _ = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  return proc.returncode, out


def _run(args, env, cwd, timeout: int = 600) -> str:
  code, out = _finish(_start(args, env, cwd), timeout)
  assert code == 0, out[-4000:]
  return out


def _objects(port: int, prefix: str) -> list[str]:
  """Object names under `prefix`, straight from the server's JSON API."""
  query = urllib.parse.urlencode({"prefix": prefix})
  url = f"http://127.0.0.1:{port}/storage/v1/b/{BUCKET}/o?{query}"
  with urllib.request.urlopen(url, timeout=10) as response:
    return [item["name"] for item in json.load(response).get("items", [])]


# Reads the bucket through dynpt.fs (in the server's environment); prints JSON.
_READ_BUCKET = textwrap.dedent("""
    import json, struct, sys
    from dynpt import fs
    root = sys.argv[1]
    out = {"files": fs.walk_files(root), "text": {}}
    for name in sys.argv[2:]:
      out["text"][name] = fs.read_text(fs.join(root, name))
    events = {}
    for name in out["files"]:
      if "tfevents" in name:
        data, records, at = fs.read_bytes(fs.join(root, name)), [], 0
        while at + 12 <= len(data):
          (length,) = struct.unpack("<Q", data[at:at + 8])
          records.append(data[at + 12:at + 12 + length].hex())
          at += 16 + length
        events[name] = records
    out["events"] = events
    print("BUCKET " + json.dumps(out))
""")


def _read_bucket(env, root: str, *names: str) -> dict:
  out = _run(["-c", _READ_BUCKET, root, *names], env, cwd=ROOT, timeout=120)
  line = [l for l in out.splitlines() if l.startswith("BUCKET ")][-1]
  return json.loads(line[len("BUCKET "):])


def _loss_steps(event_files: dict) -> list[int]:
  """The steps of every `train/loss` summary in hex-encoded event records."""
  from tensorboard.compat.proto import event_pb2

  steps = []
  for records in event_files.values():
    for record in records:
      event = event_pb2.Event.FromString(bytes.fromhex(record))
      if any(v.tag == "train/loss" for v in event.summary.value):
        steps.append(event.step)
  return sorted(steps)


@pytest.fixture
def gcs(tmp_path):
  """(port, env) of a local GCS API server holding an empty bucket."""
  folder = tmp_path / "gcs"
  folder.mkdir()
  env_file = folder / "gcs.env"
  server = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "tools", "local_gcs.py"), "--port=0",
       f"--bucket={BUCKET}", f"--env_file={env_file}"],
      cwd=folder, env=_env(None), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)
  try:
    deadline = time.time() + 120
    while not env_file.exists():
      assert server.poll() is None and time.time() < deadline, server.communicate()[0]
      time.sleep(0.2)
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    port = int(env["STORAGE_EMULATOR_HOST"].rsplit(":", 1)[1])
    assert _objects(port, "") == []
    yield port, env
  finally:
    server.send_signal(signal.SIGTERM)
    try:
      server.communicate(timeout=30)
    except subprocess.TimeoutExpired:
      server.kill()
      server.communicate()


_SAME_PARAMS = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from dynpt.train import checkpoints
    a, step_a = checkpoints.restore_params(sys.argv[1], int(sys.argv[3]))
    b, step_b = checkpoints.restore_params(sys.argv[2], int(sys.argv[3]))
    same = jax.tree.all(jax.tree.map(
        lambda x, y: x.dtype == y.dtype and np.array_equal(x, y), a, b))
    print("SAME", step_a, step_b, same)
""")

# Cuts a file in the bucket to its first 20 characters (a damaged checkpoint).
_DAMAGE = "import sys; from dynpt import fs; p = sys.argv[1]; fs.write_text(p, fs.read_text(p)[:20])"


def test_a_run_in_a_bucket(gcs, toy_data_dir, tmp_path):
  """A toy run with RUN_DIR=gs://...: preempted, resumed, damaged, exported, finetuned.

  One test (not one per stage) so that pytest-xdist never runs the stages' runs twice.
  """
  port, gcs_env = gcs
  env = _env(gcs_env)
  cwd = tmp_path / "cwd"  # Every command below runs here; it must stay empty.
  cwd.mkdir()

  # 1. SIGTERM once the first checkpoint's history reached the bucket: exit 75.
  proc = _start(_pretrain_args(RUN, toy_data_dir, TOTAL_STEPS), env, cwd)
  deadline = time.time() + 500
  while proc.poll() is None and time.time() < deadline:
    if _objects(port, "run/mixture_history.jsonl"):
      break
    time.sleep(0.5)
  assert proc.poll() is None, proc.communicate()[0][-4000:]
  proc.send_signal(signal.SIGTERM)
  code, out = _finish(proc, timeout=300)
  assert code == 75, out[-4000:]
  preempted = _read_bucket(env, RUN, "train_summary.json")
  summary = json.loads(preempted["text"]["train_summary.json"])
  stop = summary["end_step"]
  assert summary["preempted"] and stop >= 3, summary
  assert summary["checkpoints"] == f"{RUN}/checkpoints"
  for name in ("config.gin", "mixture_history.jsonl", f"checkpoints/{stop}/state/_METADATA",
               f"checkpoints/{stop}/commit_success.txt"):
    assert name in preempted["files"], (name, preempted["files"])
  assert any("tfevents" in f for f in preempted["files"])
  assert os.listdir(cwd) == []

  # 2. The rerun resumes from the bucket and ends where a run that never stopped
  # (on local disk, beside it) ends: same params, bit for bit, and the same history.
  end = stop + 2
  reference_dir = tmp_path / "reference"
  resume = _start(_pretrain_args(RUN, toy_data_dir, end), env, cwd)
  reference = _start(_pretrain_args(str(reference_dir), toy_data_dir, end), _env(None),
                     cwd=tmp_path)
  for p in (resume, reference):
    code, out = _finish(p)
    assert code == 0, out[-4000:]
  resumed = _read_bucket(env, RUN, "train_summary.json", "mixture_history.jsonl")
  summary = json.loads(resumed["text"]["train_summary.json"])
  assert (summary["start_step"], summary["end_step"]) == (stop, end)
  out = _run(["-c", _SAME_PARAMS, RUN, str(reference_dir), str(end)], env, cwd=ROOT,
             timeout=300)
  assert f"SAME {end} {end} True" in out, out[-3000:]
  history = [json.loads(line) for line in
             resumed["text"]["mixture_history.jsonl"].splitlines()]
  with open(reference_dir / "mixture_history.jsonl") as f:
    assert history == [json.loads(line) for line in f]

  # 3. The newest checkpoint in the bucket damaged: the next run falls back to an
  # older one, moves the damaged step aside in the bucket and continues.
  _run(["-c", _DAMAGE, f"{RUN}/checkpoints/{end}/state/_METADATA"], env, cwd=ROOT,
       timeout=120)
  _run(_pretrain_args(RUN, toy_data_dir, end + 1), env, cwd)
  # Whether step `end` is saved again depends on where the SIGTERM landed: the
  # fallback run passes it and saves it afresh when it is on the cadence.
  resaved = end % 2 == 0
  metadata = f"checkpoints/{end}/state/_METADATA"
  final = _read_bucket(env, RUN, "train_summary.json", "mixture_history.jsonl",
                       "config.gin", *([metadata] if resaved else []))
  summary = json.loads(final["text"]["train_summary.json"])
  assert summary["start_step"] < end and summary["end_step"] == end + 1, summary
  files = final["files"]
  assert f"corrupt_checkpoints/{end}/state/_METADATA" in files, files
  if resaved:  # A new, whole checkpoint, not the damaged one left in place.
    assert json.loads(final["text"][metadata]), final["text"][metadata]
    assert f"checkpoints/{end}/commit_success.txt" in files, files
  else:
    assert not any(f.startswith(f"checkpoints/{end}/") for f in files), files
  assert f"checkpoints/{end + 1}/commit_success.txt" in files, files
  # The history and TensorBoard have each step once across the three attempts.
  steps = [json.loads(line)["step"]
           for line in final["text"]["mixture_history.jsonl"].splitlines()]
  assert steps == list(range(end + 1))
  assert _loss_steps(final["events"]) == list(range(1, end + 2))
  assert f"RUN_DIR = '{RUN}'" in final["text"]["config.gin"]

  # 4. Exported to the bucket; a finetuning run in the bucket starts from there.
  export = f"gs://{BUCKET}/export"
  _run([os.path.join(ROOT, "tools", "export_checkpoint.py"), f"--run_dir={RUN}",
        f"--out_dir={export}"], env, cwd, timeout=300)
  exported = _read_bucket(env, export, "export_info.json")
  assert json.loads(exported["text"]["export_info.json"])["step"] == end + 1
  assert "config.gin" in exported["files"]
  assert any(f.startswith("params/") for f in exported["files"])
  assert any(f.startswith("t5x_text_tower/") for f in exported["files"])
  finetune = f"gs://{BUCKET}/finetune"
  _run(["-m", "dynpt.main", "--mode=finetune", "--gin_file=finetune/toy_vqav2.gin",
        f"--gin.RUN_DIR='{finetune}'", f"--gin.INIT_FROM='{export}'",
        f"--gin.DATA_DIR='{toy_data_dir}'", "--gin.NUM_STEPS=1", "--gin.BATCH_SIZE=4",
        "--gin.IMAGE_SIZE=32", "--gin.EVAL_EXAMPLES=2",
        "--gin.finetune.EvalConfig.batch_size=2",
        "--gin.config.TrainConfig.progress_bar=False"], env, cwd)
  tuned = _read_bucket(env, finetune, "train_summary.json", "best.json")
  assert json.loads(tuned["text"]["train_summary.json"])["end_step"] == 1
  assert json.loads(tuned["text"]["best.json"])["step"] == 1
  assert "eval/1/vqav2.json" in tuned["files"], tuned["files"]
  assert any(f.startswith("best/params/") for f in tuned["files"])
  assert any(f.startswith("checkpoints/1/") for f in tuned["files"])

  # Nothing of all this landed in the working directory.
  assert os.listdir(cwd) == []


def test_tf_data_reads_a_data_dir_on_a_tensorflow_file_system(toy_data_dir):
  """TensorFlow's GCS client cannot be pointed at a local server, so tf.data's
  reads of a URL DATA_DIR are checked on TensorFlow's in-memory `ram://` file
  system: the same tasks read from there give the same batch as from disk."""
  import tensorflow as tf

  from dynpt.data import pipeline

  ram = "ram://dynpt-test-data"
  for dataset in ("cc3m",):
    for folder, _, names in tf.io.gfile.walk(os.path.join(toy_data_dir, dataset)):
      rel = os.path.relpath(folder, toy_data_dir)
      tf.io.gfile.makedirs(f"{ram}/{rel}")
      for name in names:
        tf.io.gfile.copy(os.path.join(folder, name), f"{ram}/{rel}/{name}", overwrite=True)
  batches = []
  for data_dir in (toy_data_dir, ram):
    it = pipeline.TaskIterator("cc3m_cap", task_id=0,
                               sequence_length={"inputs": 32, "targets": 16},
                               image_size=32, seed=0, data_dir=data_dir)
    batches.append(it.take(4))
  for key in batches[0]:
    np.testing.assert_array_equal(batches[0][key], batches[1][key], err_msg=key)

