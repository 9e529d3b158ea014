"""Shared pytest fixtures: the tiny toy world (built once per session) and its vocabulary."""

from __future__ import annotations

import os
import tempfile

import pytest

# One persistent XLA compilation cache for the whole session (all xdist
# workers and the subprocesses tests start): the tiny model's init and train
# step compile once instead of once per test. Set before JAX is imported.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "dynpt-test-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# With libtpu installed (requirements-test.txt), a host without an accelerator runs
# JAX on its CPU only: no libtpu probe in every worker and subprocess (see
# `dynpt.hostalloc.default_platforms`).
from dynpt import hostalloc  # noqa: E402

hostalloc.default_platforms()

# Registration is the entry point's job (library code never imports `tasks`);
# for the tests, this file is the entry point.
import tasks  # noqa: E402,F401


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory) -> str:
  """A data dir holding the tiny toy world (every dataset and split; 32 px).

  Built once per test session (a few seconds) by
  `dynpt.toyworld.build.build_toy_world(dir, seed=0, scale='tiny')`.
  Treat it as read-only: tests that need to write data use their own tmp dir.
  """
  from dynpt.toyworld.build import build_toy_world

  data_dir = str(tmp_path_factory.mktemp("toy_world"))
  build_toy_world(data_dir, seed=0, scale="tiny", progress=False)
  return data_dir


@pytest.fixture(scope="session")
def toy_vocab():
  """The shipped toy sentencepiece vocabulary, as a `seqio.SentencePieceVocabulary`."""
  from dynpt.data import vocab as vocab_lib

  return vocab_lib.get_vocabulary()


@pytest.fixture(autouse=True)
def _fresh_gin_config():
  """Every test starts and ends with an empty, unlocked gin config.

  A test that fails between `parse_gin` (which finalises and locks the config)
  and its own clean-up would otherwise fail every later gin test of its worker.
  """
  import gin

  gin.clear_config()
  yield
  gin.clear_config()
