"""A damaged newest checkpoint falls back to the previous good one; NaN is never saved."""
import errno
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dynpt.train import checkpoints


def _state(value: float) -> dict:
  return {"params": {"w": jnp.full((64, 32), value, jnp.float32),
                     "b": jnp.arange(8, dtype=jnp.float32) + value},
          "opt_state": {"mu": jnp.full((64, 32), value / 2, jnp.float32)},
          "step": jnp.asarray(int(value), jnp.int32)}


def _abstract_and_shardings():
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.eval_shape(lambda: _state(0.0))
  return abstract, jax.tree.map(lambda _: device, abstract)


def _write_run(run_dir, steps=(1, 2, 3)) -> checkpoints.Checkpointer:
  ckpt = checkpoints.Checkpointer(str(run_dir), keep=5, save_every=1,
                                  async_save=False)
  for s in steps:
    ckpt.save(s, _state(float(s)), {"last_step": np.int64(s)},
              {"task": [s * 4]})
  ckpt.wait()
  return ckpt


def _largest_file(folder):
  files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
  return max(files, key=os.path.getsize)


def _truncate_data_files(state_dir):
  """Halves every tensorstore data file (in folders named `d`)."""
  for d, _, fs in os.walk(state_dir):
    if os.path.basename(d) == "d":
      for f in fs:
        _truncate(os.path.join(d, f))


def _truncate(path):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)


def _empty_folder(step_dir):
  for d, dirs, files in os.walk(step_dir, topdown=False):
    for f in files:
      os.remove(os.path.join(d, f))
    for sub in dirs:
      os.rmdir(os.path.join(d, sub))


CORRUPTIONS = {
    "truncated_state_metadata": lambda d: _truncate(
        os.path.join(d, "state", "_METADATA")),
    "truncated_state_array_metadata": lambda d: _truncate(_largest_file(
        os.path.join(d, "state", "array_metadatas"))),
    "truncated_state_data_files": lambda d: _truncate_data_files(
        os.path.join(d, "state")),
    "deleted_state_metadata": lambda d: os.remove(
        os.path.join(d, "state", "_METADATA")),
    "empty_step_folder": _empty_folder,
    "truncated_mixer_metadata": lambda d: _truncate(
        os.path.join(d, "mixer", "metadata")),
    "truncated_data_metadata": lambda d: _truncate(
        os.path.join(d, "data", "metadata")),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_latest_step_falls_back_and_is_moved_aside(
    tmp_path, corruption, caplog):
  ckpt = _write_run(tmp_path)
  ckpt.close()
  step3 = os.path.join(tmp_path, "checkpoints", "3")
  CORRUPTIONS[corruption](step3)

  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=5, async_save=False)
  with caplog.at_level("ERROR"):
    step, state, mixer, data = ckpt.restore_latest_good(
        *_abstract_and_shardings())
  assert step == 2
  np.testing.assert_array_equal(state["params"]["w"], np.full((64, 32), 2.0))
  np.testing.assert_array_equal(state["opt_state"]["mu"],
                                np.full((64, 32), 1.0))
  assert int(mixer["last_step"]) == 2 and data == {"task": [8]}
  assert "step 3" in caplog.text and step3 in caplog.text
  # Moved aside, never deleted; the manager no longer lists it.
  assert not os.path.exists(step3)
  assert os.path.isdir(tmp_path / checkpoints.CORRUPT_DIR / "3")
  assert ckpt.all_steps() == [1, 2]
  # The run continues: a new step 3 can be written where the bad one was.
  ckpt.save(3, _state(3.0), {"last_step": np.int64(3)}, {"task": [12]})
  ckpt.close()
  assert os.path.isdir(step3)


def test_no_good_checkpoint_fails_naming_every_step_and_moves_nothing(tmp_path):
  _write_run(tmp_path, steps=(1, 2)).close()
  for s in ("1", "2"):
    os.remove(os.path.join(tmp_path, "checkpoints", s, "state", "_METADATA"))
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=5, async_save=False)
  with pytest.raises(checkpoints.NoUsableCheckpointError) as err:
    ckpt.restore_latest_good(*_abstract_and_shardings())
  message = str(err.value)
  assert "step 2" in message and "step 1" in message and "_METADATA" in message
  assert ckpt.all_steps() == [1, 2]
  assert not os.path.exists(tmp_path / checkpoints.CORRUPT_DIR)
  ckpt.close()


def test_no_checkpoint_at_all_is_a_fresh_run(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False)
  assert ckpt.restore_latest_good(*_abstract_and_shardings()) is None
  ckpt.close()


def test_non_finite_state_is_never_saved(tmp_path):
  ckpt = _write_run(tmp_path, steps=(1,))
  poisoned = _state(2.0)
  poisoned["opt_state"]["mu"] = poisoned["opt_state"]["mu"].at[3, 4].set(
      jnp.nan)
  with pytest.raises(checkpoints.NonFiniteStateError,
                     match=r"step 2.*opt_state.*mu.*not written"):
    ckpt.save(2, poisoned, {"last_step": np.int64(2)}, {"task": [8]})
  inf_params = _state(2.0)
  inf_params["params"]["b"] = inf_params["params"]["b"].at[0].set(jnp.inf)
  with pytest.raises(checkpoints.NonFiniteStateError, match="params"):
    ckpt.save(2, inf_params, {"last_step": np.int64(2)}, {"task": [8]})
  ckpt.close()
  assert checkpoints.Checkpointer(str(tmp_path)).all_steps() == [1]


def test_a_non_finite_checkpoint_from_an_older_version_is_not_resumed(tmp_path):
  ckpt = _write_run(tmp_path, steps=(1,))
  poisoned = _state(2.0)
  poisoned["params"]["w"] = poisoned["params"]["w"] * jnp.nan
  # Written past the guard, as a checkpoint of an older dynpt could be.
  ckpt._manager.save(2, args=checkpoints.ocp.args.Composite(
      state=checkpoints.ocp.args.StandardSave(poisoned),
      mixer=checkpoints.ocp.args.JsonSave({}),
      data=checkpoints.ocp.args.JsonSave({})), force=True)
  ckpt.close()
  ckpt = checkpoints.Checkpointer(str(tmp_path), async_save=False)
  step, *_ = ckpt.restore_latest_good(*_abstract_and_shardings())
  assert step == 1
  ckpt.close()


def test_export_restore_falls_back_without_moving(tmp_path):
  _write_run(tmp_path).close()
  step3 = os.path.join(tmp_path, "checkpoints", "3")
  _truncate_data_files(os.path.join(step3, "state"))
  params, step = checkpoints.restore_params(str(tmp_path))
  assert step == 2
  np.testing.assert_array_equal(params["w"], np.full((64, 32), 2.0))
  assert os.path.isdir(step3)  # A reader leaves the run dir as it is.
  with pytest.raises(checkpoints.NoUsableCheckpointError, match="step 3"):
    checkpoints.restore_params(str(tmp_path), step=3)
  with pytest.raises(FileNotFoundError, match="step 7"):
    checkpoints.restore_params(str(tmp_path), step=7)


# ------------------------------------------- only damage falls back (issue 28)

def _flip_a_byte(path):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0x10
    f.seek(0)
    f.write(bytes(data))


def _flip_state_data_files(state_dir):
  for d, _, fs in os.walk(state_dir):
    if os.path.basename(d) == "d" and os.path.dirname(d) == state_dir:
      for f in fs:
        _flip_a_byte(os.path.join(d, f))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_flipped_or_cut_data_file_is_damage(tmp_path, damage):
  """TensorStore's CRC-32C check (DATA_LOSS) and a short file (OUT_OF_RANGE)."""
  ckpt = _write_run(tmp_path)
  ckpt.close()
  step3 = os.path.join(tmp_path, "checkpoints", "3")
  if damage == "flip":
    _flip_state_data_files(os.path.join(step3, "state"))
  else:
    _truncate_data_files(os.path.join(step3, "state"))
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=5, async_save=False)
  step, *_ = ckpt.restore_latest_good(*_abstract_and_shardings())
  assert step == 2
  assert os.path.isdir(tmp_path / checkpoints.CORRUPT_DIR / "3")
  ckpt.close()


ENVIRONMENTAL = {
    "resource_exhausted": lambda: jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB"),
    "memory_error": MemoryError,
    "permission": lambda: PermissionError(13, "Permission denied", "x/_METADATA"),
    "io_error": lambda: OSError(errno.EIO, "Input/output error"),
    "store_unavailable": lambda: ValueError(
        "UNAVAILABLE: Error reading \"state/d/0\" in OCDBT database at gs://b/run"),
    "timeout": lambda: TimeoutError("read timed out"),
}


@pytest.mark.parametrize("kind", sorted(ENVIRONMENTAL))
def test_an_environmental_restore_error_fails_and_moves_nothing(tmp_path, kind,
                                                                monkeypatch):
  ckpt = _write_run(tmp_path)
  ckpt.close()

  def failing(self, step, *args):
    raise ENVIRONMENTAL[kind]()

  monkeypatch.setattr(checkpoints.Checkpointer, "restore", failing)
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=5, async_save=False)
  with pytest.raises(checkpoints.CheckpointRestoreError) as err:
    ckpt.restore_latest_good(*_abstract_and_shardings())
  message = str(err.value)
  assert "step 3" in message and "nothing was moved" in message
  assert "\n" not in message
  assert ckpt.all_steps() == [1, 2, 3]  # The good newest step stays.
  assert not os.path.exists(tmp_path / checkpoints.CORRUPT_DIR)
  monkeypatch.undo()
  step, state, *_ = ckpt.restore_latest_good(*_abstract_and_shardings())
  assert step == 3  # Once the cause is gone, the newest step restores.
  np.testing.assert_array_equal(state["params"]["w"], np.full((64, 32), 3.0))
  ckpt.close()


def test_an_error_not_known_as_damage_fails_and_says_how_to_set_it_aside(
    tmp_path, monkeypatch):
  ckpt = _write_run(tmp_path, steps=(1, 2))
  ckpt.close()

  def failing(self, step, *args):
    raise RuntimeError("something unexpected")

  monkeypatch.setattr(checkpoints.Checkpointer, "restore", failing)
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=5, async_save=False)
  with pytest.raises(checkpoints.CheckpointRestoreError,
                     match=r"not known as damage.*move .*/2 into .*"
                           r"corrupt_checkpoints"):
    ckpt.restore_latest_good(*_abstract_and_shardings())
  assert ckpt.all_steps() == [1, 2]
  ckpt.close()


def test_a_permission_error_on_a_metadata_file_is_not_damage(tmp_path,
                                                             monkeypatch):
  from dynpt.train import checkpoint_validation

  ckpt = _write_run(tmp_path)
  ckpt.close()
  read_text = checkpoint_validation.fs.read_text

  def unreadable(path):
    if path.endswith("_METADATA"):
      raise PermissionError(13, "Permission denied", path)
    return read_text(path)

  monkeypatch.setattr(checkpoint_validation.fs, "read_text", unreadable)
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=5, async_save=False)
  with pytest.raises(checkpoints.CheckpointRestoreError,
                     match="step 3.*Permission denied"):
    ckpt.restore_latest_good(*_abstract_and_shardings())
  assert ckpt.all_steps() == [1, 2, 3]
  assert not os.path.exists(tmp_path / checkpoints.CORRUPT_DIR)
  ckpt.close()


def test_export_restore_stops_on_an_environmental_error(tmp_path, monkeypatch):
  _write_run(tmp_path).close()
  restore = checkpoints.ocp.CheckpointManager.restore

  def out_of_memory(self, step, *args, **kwargs):
    if step == 3:
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: out of memory")
    return restore(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "restore", out_of_memory)
  with pytest.raises(checkpoints.CheckpointRestoreError, match="RESOURCE_EXHAUSTED"):
    checkpoints.restore_params(str(tmp_path))


def test_the_error_line_of_a_restore_stopped_by_the_environment(capsys):
  from dynpt import main as dynpt_main
  from dynpt.train import checkpoint_validation

  error = checkpoint_validation._not_damage_error(
      4, "/r/checkpoints/4", "JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory",
      jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory"))
  code = dynpt_main.exit_code_for(error)
  assert code == dynpt_main.EXIT_ERROR
  with pytest.raises(SystemExit) as exit_:
    dynpt_main._exit_with_error(error, code)
  assert exit_.value.code == 1
  (line,) = capsys.readouterr().err.strip().splitlines()
  assert line.startswith("error: restoring checkpoint step 4 (/r/checkpoints/4) "
                         "failed: JaxRuntimeError: RESOURCE_EXHAUSTED")


def test_an_environmental_error_on_another_host_stops_every_host(tmp_path, monkeypatch):
  """The worst verdict of any process wins: one host out of memory stops all."""
  from dynpt.train import checkpoint_validation

  ckpt = _write_run(tmp_path)
  ckpt.close()
  class TwoProcesses:  # jax as this module sees it, with a second process.
    def __getattr__(self, name):
      return getattr(jax, name)

    process_count = staticmethod(lambda: 2)

  monkeypatch.setattr(checkpoint_validation, "jax", TwoProcesses())
  monkeypatch.setattr(checkpoint_validation.multihost_utils, "process_allgather",
                      lambda x: np.asarray([int(x), checkpoint_validation._NOT_DAMAGE]))
  ckpt = checkpoints.Checkpointer(str(tmp_path), keep=5, async_save=False)
  with pytest.raises(checkpoints.CheckpointRestoreError,
                     match="step 3 .*on another process.*nothing was moved"):
    ckpt.restore_latest_good(*_abstract_and_shardings())
  assert ckpt.all_steps() == [1, 2, 3]
  ckpt.close()
