"""Tests for tools/model_summary.py (parameter counts from jax.eval_shape)."""
import importlib.util
import math
import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TOOL = os.path.join(_ROOT, 'tools', 'model_summary.py')


@pytest.fixture(scope='module')
def tool():
  spec = importlib.util.spec_from_file_location('model_summary', _TOOL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_tiny_summary_with_paths(tool):
  lines = tool.summarize('tiny', paths=True).splitlines()
  shapes = tool.param_shapes('tiny')
  total = sum(math.prod(s) for s in shapes.values())
  assert lines[-1] == f'total_params={total}'
  assert 'visual_tokens_per_frame=4' in lines  # 32 px -> 2x2
  path_lines = lines[:len(shapes)]
  assert 'token_embedder/embedding [32128,32]' in path_lines
  assert 'decoder/logits_dense/kernel [32,32128]' in path_lines
  assert any(line.startswith('resnet/block1/unit1/conv1/kernel ') for line in path_lines)
  rows = {line.split()[0]: int(line.split()[-2].replace(',', ''))
          for line in lines[len(shapes):] if line.endswith('%')}
  assert sum(rows.values()) == total
  assert rows['token_embedder'] == 32128 * 32


def test_image_size_changes_visual_tokens(tool):
  assert 'visual_tokens_per_frame=16' in tool.summarize('tiny', image_size=64)


def test_command_line():
  result = subprocess.run([sys.executable, _TOOL, '--model=tiny'], capture_output=True,
                          text=True, check=True, cwd=_ROOT, timeout=120,
                          env={**os.environ, 'PYTHONPATH': _ROOT, 'JAX_PLATFORMS': 'cpu'})
  last = result.stdout.strip().splitlines()[-1]
  assert last.startswith('total_params=') and int(last.split('=')[1]) > 0
  bad = subprocess.run([sys.executable, _TOOL, '--model=huge'], capture_output=True, text=True,
                       cwd=_ROOT, timeout=120, env={**os.environ, 'PYTHONPATH': _ROOT})
  assert bad.returncode != 0 and 'huge' in bad.stderr
