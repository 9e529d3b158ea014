"""One trainer per run directory; unwritable run directories fail before training."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from dynpt.train import loop, model_setup, preflight, run_lock
from dynpt.train.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def held_by_another_process(tmp_path):
  """A child process holding tmp_path/run; yields (run_dir, child)."""
  run_dir = tmp_path / "run"
  code = textwrap.dedent(f"""
      import sys, time
      from dynpt.train import run_lock
      with run_lock.RunLock({str(run_dir)!r}):
        print("held", flush=True)
        time.sleep(600)
  """)
  child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=ROOT),
                           stdout=subprocess.PIPE, text=True)
  assert child.stdout.readline().strip() == "held"
  yield str(run_dir), child
  if child.poll() is None:
    child.kill()
  child.wait()


def test_a_second_trainer_is_refused_naming_the_holder(held_by_another_process):
  run_dir, child = held_by_another_process
  with pytest.raises(run_lock.RunDirInUseError) as err:
    run_lock.RunLock(run_dir).acquire()
  message = str(err.value)
  assert f"pid {child.pid}" in message and run_dir in message
  # The kernel drops the lock when the holder dies, even by kill -9.
  child.send_signal(signal.SIGKILL)
  child.wait()
  with run_lock.RunLock(run_dir):
    pass


def test_train_refuses_before_building_anything(held_by_another_process,
                                                monkeypatch):
  run_dir, child = held_by_another_process

  def must_not_build(*a, **k):
    raise AssertionError("built the model of a refused run")

  monkeypatch.setattr(model_setup, "build_model", must_not_build)
  monkeypatch.setattr(model_setup, "resolve_task_names", must_not_build)
  with pytest.raises(run_lock.RunDirInUseError, match=f"pid {child.pid}"):
    loop.train(TrainConfig(run_dir=run_dir, num_steps=2,
                           global_batch_size=4))
  assert sorted(os.listdir(run_dir)) == [run_lock.LOCK_FILE]


def test_main_refuses_a_second_trainer_and_keeps_its_config(
    held_by_another_process):
  run_dir, child = held_by_another_process
  proc = subprocess.run(
      [sys.executable, "-m", "dynpt.main", "--gin_file=pretrain/toy_cpu.gin",
       f"--gin.RUN_DIR='{run_dir}'", "--gin.SEED=1"],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
      text=True, timeout=240)
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: run directory") and f"pid {child.pid}" in last
  assert "Traceback" not in proc.stderr
  # The refused run wrote nothing: no config.gin of seed 1 beside the holder's run.
  assert not os.path.exists(os.path.join(run_dir, "config.gin"))


def _open_under(root) -> list[str]:
  """What this process's descriptors lead to under `root` (other tests' leftover
  threads in this worker open and close their own files meanwhile: only the
  test's own folder is compared)."""
  out = []
  for fd in os.listdir("/proc/self/fd"):
    try:
      target = os.readlink(os.path.join("/proc/self/fd", fd))
    except OSError:  # Closed between the listing and the read.
      continue
    if target.startswith(str(root)):
      out.append(target)
  return sorted(out)


def test_a_run_takes_the_lock_once_and_a_second_hold_is_refused(tmp_path):
  # Not re-entrant: a second hold of the same directory, from this process
  # too, is a second trainer.
  with run_lock.RunLock(str(tmp_path)):
    held = _open_under(tmp_path)
    assert held == [str(tmp_path / run_lock.LOCK_FILE)]  # The holder's own descriptor.
    with pytest.raises(run_lock.RunDirInUseError, match=f"pid {os.getpid()}"):
      run_lock.RunLock(str(tmp_path)).acquire()
    assert _open_under(tmp_path) == held  # The refused one kept no descriptor.
  assert _open_under(tmp_path) == []  # Released on exit.
  with run_lock.RunLock(str(tmp_path)):  # Released on exit: free again.
    pass


def test_train_writes_config_once_it_holds_the_run_dir(held_by_another_process,
                                                      tmp_path, monkeypatch):
  run_dir, child = held_by_another_process
  claimed = []
  with pytest.raises(run_lock.RunDirInUseError):
    loop.train(TrainConfig(run_dir=run_dir, num_steps=2, global_batch_size=4),
               on_claimed=claimed.append)
  assert claimed == []

  def stop_after_claim(*a, **k):
    raise RuntimeError("built")

  monkeypatch.setattr(model_setup, "resolve_task_names", stop_after_claim)
  free = str(tmp_path / "free")
  with pytest.raises(RuntimeError, match="built"):
    loop.train(TrainConfig(run_dir=free, num_steps=2, global_batch_size=4),
               on_claimed=claimed.append)
  assert claimed == [free]


def test_object_store_run_dirs_are_not_locked_but_warned(caplog):
  with caplog.at_level("WARNING"):
    with run_lock.RunLock("gs://bucket/run"):
      pass
  assert "cannot be locked" in caplog.text


def test_a_file_where_checkpoints_go_fails_before_training(tmp_path,
                                                           monkeypatch):
  (tmp_path / "checkpoints").write_text("not a folder")

  def must_not_build(*a, **k):
    raise AssertionError("built the model of a run that cannot save")

  monkeypatch.setattr(model_setup, "build_model", must_not_build)
  monkeypatch.setattr(model_setup, "resolve_task_names", must_not_build)
  with pytest.raises(preflight.NotWritableError,
                     match=f"{tmp_path}/checkpoints is not a folder"):
    loop.train(TrainConfig(run_dir=str(tmp_path), num_steps=2,
                           global_batch_size=4))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only folders")
def test_a_read_only_checkpoints_folder_is_found_before_training(tmp_path):
  ckpt = tmp_path / "checkpoints"
  ckpt.mkdir()
  ckpt.chmod(0o555)
  try:
    with pytest.raises(preflight.NotWritableError, match="checkpoints"):
      preflight.check_writable(str(tmp_path))
  finally:
    ckpt.chmod(0o755)


def test_a_folder_where_a_run_file_goes_is_refused(tmp_path):
  (tmp_path / "mixture_history.jsonl").mkdir()
  with pytest.raises(preflight.NotWritableError, match="mixture_history.jsonl"):
    preflight.check_writable(str(tmp_path))
  assert not (tmp_path / "tensorboard").exists()  # Probing creates nothing.


# ------------------------------------------- a lock file that leads elsewhere

@pytest.mark.parametrize("kind", ["symlink", "dangling_symlink", "hard_link"])
def test_a_lock_file_that_leads_elsewhere_is_refused_and_left_alone(tmp_path, kind):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  target = tmp_path / "precious.txt"
  if kind != "dangling_symlink":
    target.write_text("keep me\n")
  lock = run_dir / run_lock.LOCK_FILE
  if kind == "hard_link":
    os.link(target, lock)
  else:
    os.symlink(target, lock)
  with pytest.raises(run_lock.UnsafeLockFileError) as err:
    run_lock.RunLock(str(run_dir)).acquire()
  assert str(lock) in str(err.value)
  assert "\n" not in str(err.value)
  assert _open_under(tmp_path) == []  # Nothing of the run or the target left open.
  if kind == "dangling_symlink":
    assert not target.exists()  # O_CREAT did not create the link's target.
  else:
    assert target.read_text() == "keep me\n"


def test_main_refuses_a_symlinked_lock_with_one_error_line(tmp_path):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  target = tmp_path / "precious.txt"
  target.write_text("keep me\n")
  os.symlink(target, run_dir / run_lock.LOCK_FILE)
  proc = subprocess.run(
      [sys.executable, "-m", "dynpt.main", "--gin_file=pretrain/toy_cpu.gin",
       f"--gin.RUN_DIR='{run_dir}'"],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
      text=True, timeout=240)
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {run_dir / run_lock.LOCK_FILE} is a symbolic link")
  assert "Traceback" not in proc.stderr
  assert target.read_text() == "keep me\n"
  assert not (run_dir / "config.gin").exists()
