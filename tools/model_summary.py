r"""Prints parameter counts of a named model size without allocating it.

Usage:
  python tools/model_summary.py --model=base [--image_size=224] [--paths]

Output: with --paths, first one line per parameter (`<slash/separated/path> [d0,d1,...]`);
then a table of parameter counts per top-level subtree, the visual token count at the
configured image size, and as the last line `total_params=<N>`. Shapes come from
`jax.eval_shape`, so even `large` prints in seconds.
"""
import math
import sys

from absl import app
from absl import flags

from dynpt import console, hostalloc

console.setup(__name__)  # Before JAX loads: its start-up chatter goes.

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from dynpt.models import cpu_kernels  # noqa: E402
from dynpt.models.configs import MODEL_NAMES, get_config  # noqa: E402
from dynpt.models.vl_model import VLModel, num_visual_tokens  # noqa: E402

_MODEL = flags.DEFINE_enum('model', 'base', list(MODEL_NAMES), 'Named model size.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', None, 'Input image size (default: per size).')
_PATHS = flags.DEFINE_bool('paths', False, 'Also print every parameter path and shape.')

# Rows of the table: a label and the top-level param names it sums.
_GROUPS = (
    ('token_embedder', ('token_embedder',)),
    ('encoder (text)', ('encoder',)),
    ('decoder', ('decoder',)),
    ('resnet', ('resnet',)),
    ('visual (projection, position/temporal embeddings, norm)',
     ('visual_projection', 'visual_row_embedding', 'visual_col_embedding',
      'visual_temporal_embedding', 'visual_norm')),
)


def param_shapes(name: str, image_size: int | None = None) -> dict[str, tuple[int, ...]]:
  """Maps 'slash/separated/path' -> shape for every parameter of the named model."""
  # Params are the same with or without the CPU kernels; resolved as a run resolves it.
  config = get_config(name, image_size=image_size, cpu_kernels=cpu_kernels.resolve('auto'))
  size = config.image_size
  model = VLModel(config)
  variables = jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32),
      jnp.ones((1, 32), jnp.int32), jnp.zeros((1, 8), jnp.int32))
  params = nn.meta.unbox(variables['params'])
  return {jax.tree_util.keystr(path, simple=True, separator='/'): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def summarize(name: str, image_size: int | None = None, paths: bool = False) -> str:
  """Returns the report printed by the tool (see the module docstring)."""
  shapes = param_shapes(name, image_size)
  counts = {path: math.prod(shape) for path, shape in shapes.items()}
  total = sum(counts.values())
  lines = []
  if paths:
    lines += [f'{path} [{",".join(map(str, shape))}]' for path, shape in shapes.items()]
  config = get_config(name, image_size=image_size)
  lines.append(f'model={name} image_size={config.image_size} resnet_depth='
               f'{config.resnet.depth} t5_layers={config.t5.num_encoder_layers}+'
               f'{config.t5.num_decoder_layers} emb_dim={config.t5.emb_dim}')
  lines.append(f'{"subtree":<58}{"params":>14}{"share":>8}')
  grouped = 0
  for label, tops in _GROUPS:
    n = sum(c for path, c in counts.items() if path.split('/')[0] in tops)
    grouped += n
    lines.append(f'{label:<58}{n:>14,}{100 * n / total:>7.1f}%')
  if grouped != total:
    raise ValueError(f'{total - grouped} params of model {name!r} are in no table row')
  lines.append(f'visual_tokens_per_frame={num_visual_tokens(config)}')
  lines.append(f'total_params={total}')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  sys.stdout.write(summarize(_MODEL.value, _IMAGE_SIZE.value, _PATHS.value) + '\n')


if __name__ == '__main__':
  hostalloc.default_platforms()  # A CPU-only host: JAX's CPU backend, libtpu left alone.
  console.run_app(main)
